import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Eager PRF kernels (bit-exact with the compiled ones, which tests/test_kernels.py and test_prf.py check
# by turning WMKIT_COMPILE on): each torch.compile graph costs one to several minutes on a fresh
# 2-core machine, and the wm subprocesses the tests start inherit this.
os.environ.setdefault("WMKIT_COMPILE", "0")

import torch  # noqa: E402

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from wmkit.keys import SecretKey  # noqa: E402

TEST_KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.from_hex(TEST_KEY_HEX)


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (built into the wmkit cache on first use)."""
    from wmkit.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def default_lm():
    from wmkit.models import load_default_lm

    return load_default_lm()

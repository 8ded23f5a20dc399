import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Eager PRF kernels (bit-exact with the compiled ones, which tests/test_kernels.py and test_prf.py check
# by turning WMKIT_COMPILE on): each torch.compile graph costs one to several minutes on a fresh
# 2-core machine, and the wm subprocesses the tests start inherit this.
os.environ.setdefault("WMKIT_COMPILE", "0")
# Under pytest-xdist (make test runs two workers, one a core): one compute thread per worker, and the
# wm subprocesses it starts inherit it, so two workers do not fight over the two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


# The slowest files first (make test's durations): two xdist workers then share the rest, instead of one
# worker starting the longest file last. The other tests keep their order.
SLOW_FILES_FIRST = ("test_fingerprint_real.py", "test_synthid_real.py", "test_real_model.py", "test_docs.py", "test_probe.py",
                    "test_fingerprint_text.py",
                    "test_engine.py", "test_new_schemes_real.py", "test_semantic.py", "test_prf.py", "test_kernels.py",
                    "test_eaas_server.py", "test_robustness_real.py", "test_scan.py", "test_models.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES_FIRST)))

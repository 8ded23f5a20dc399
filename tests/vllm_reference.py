"""vLLM's own watermarking code (``vllm==0.30.0``), loaded from the wheel by file path: the truth the
vLLM-native schemes are tested against.

``make install`` downloads the wheel (``pip download --no-deps vllm==0.30.0 -d .cache/wheels``);
``$WMKIT_VLLM_WHEEL`` may name another copy. Only ``vllm/config/watermarking.py`` and
``vllm/v1/watermarking/`` are executed; the imports they make of the rest of vLLM (its logger,
its config decorator, the CUDA sampler) are replaced by small stand-ins, none of which the CPU
code paths used here call. :func:`sampler` loads vLLM's sampling filters and penalty kernels the
same way.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys
import types
import zipfile
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    "vllm/config/watermarking.py",
    "vllm/v1/watermarking/prfs/base.py",
    "vllm/v1/watermarking/prfs/philox.py",
    "vllm/v1/watermarking/prfs/__init__.py",
    "vllm/v1/watermarking/detector.py",
    "vllm/v1/watermarking/watermarker.py",
    "vllm/v1/watermarking/gumbel.py",
]


def wheel_path() -> Path | None:
    """The vLLM wheel, if this checkout has one."""
    env = os.environ.get("WMKIT_VLLM_WHEEL")
    if env:
        return Path(env)
    found = sorted(glob.glob(str(ROOT / ".cache" / "wheels" / "vllm-0.30.0-*.whl")))
    return Path(found[-1]) if found else None


def required(loader: Callable[[], T]) -> T:
    """``loader()``; a missing wheel fails the test (it is part of ``make install``), never skips it."""
    import pytest

    try:
        return loader()
    except FileNotFoundError as e:
        pytest.fail(str(e))


def _package(name: str) -> types.ModuleType:
    if name not in sys.modules:
        mod = types.ModuleType(name)
        mod.__path__ = []  # a namespace that only holds what we load into it
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(_package(parent), child, mod)
    return sys.modules[name]


def _run(files: list[str], stubs: dict[str, object]) -> dict[str, types.ModuleType]:
    """Execute ``files`` of the wheel as their modules (in order), with ``stubs`` standing in for the
    rest of vLLM; ``sys.modules`` is restored afterwards."""
    path = wheel_path()
    if path is None or not path.exists():
        raise FileNotFoundError("the vllm==0.30.0 wheel is missing (make install downloads it to .cache/wheels)")
    saved = {k: v for k, v in sys.modules.items() if k == "vllm" or k.startswith("vllm.")}
    for k in saved:
        del sys.modules[k]
    try:
        for name, stub in stubs.items():
            _package(name.rpartition(".")[0])
            sys.modules[name] = stub  # type: ignore[assignment]
        mods = {}
        with zipfile.ZipFile(path) as zf:
            for f in files:
                name = f[:-3].replace("/", ".").removesuffix(".__init__")
                spec = importlib.util.spec_from_loader(name, loader=None, origin=f)
                mod = importlib.util.module_from_spec(spec)
                if f.endswith("__init__.py"):
                    mod.__path__ = []
                parent, _, child = name.rpartition(".")
                _package(parent)
                sys.modules[name] = mod
                exec(compile(zf.read(f), f"{path.name}/{f}", "exec"), mod.__dict__)
                setattr(_package(parent), child, mod)
                mods[name] = mod
        return mods
    finally:
        for k in [k for k in sys.modules if k == "vllm" or k.startswith("vllm.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _logger() -> types.SimpleNamespace:
    logger = logging.getLogger("vllm-reference")
    logger.warning_once = lambda *a, **k: None  # type: ignore[attr-defined]
    logger.info_once = lambda *a, **k: None  # type: ignore[attr-defined]
    return types.SimpleNamespace(init_logger=lambda name: logger)


def load() -> types.SimpleNamespace:
    """vLLM's watermarking modules, as ``ns.gumbel``, ``ns.philox``, ``ns.config``, ``ns.detector``."""

    def no_gpu_sampler(*a, **k):
        raise RuntimeError("vLLM's CUDA sampler is not part of the reference")

    mods = _run(FILES, {"vllm.logger": _logger(), "vllm.config.utils": types.SimpleNamespace(config=lambda cls: cls),
                        "vllm.v1.worker.gpu.sample.gumbel": types.SimpleNamespace(gumbel_sample=no_gpu_sampler)})
    return types.SimpleNamespace(
        config=mods["vllm.config.watermarking"], philox=mods["vllm.v1.watermarking.prfs.philox"],
        detector=mods["vllm.v1.watermarking.detector"], gumbel=mods["vllm.v1.watermarking.gumbel"])


def sampler() -> types.SimpleNamespace:
    """vLLM's sampler filters and penalties (Model Runner V2): ``ns.apply_top_k_top_p`` (the PyTorch
    path of ``vllm/v1/sample/ops/topk_topp_sampler.py``), and the Triton kernels ``ns.apply_min_p``,
    ``ns.apply_penalties`` and ``ns.bincount`` of ``vllm/v1/worker/gpu/sample/`` (run by Triton's
    interpreter on the CPU: tests set ``TRITON_INTERPRET=1``)."""
    import triton
    import triton.language as tl

    platform = types.SimpleNamespace(is_cpu=lambda: True, simple_compile_backend="eager", is_rocm=lambda: False,
                                     is_cuda=lambda: False)
    stubs = {
        "vllm.envs": types.SimpleNamespace(),
        "vllm._aiter_ops": types.SimpleNamespace(rocm_aiter_ops=None),
        "vllm.config.model": types.SimpleNamespace(PROCESSED_LOGPROBS_MODES=(), LogprobsMode=str),
        "vllm.logger": _logger(),
        "vllm.platforms": types.SimpleNamespace(CpuArchEnum=None, current_platform=platform),
        "vllm.triton_utils": types.SimpleNamespace(HAS_TRITON=False, tl=tl, triton=triton),
        "vllm.sampling_params": types.SimpleNamespace(SamplingParams=object),
        "vllm.utils.math_utils": types.SimpleNamespace(cdiv=lambda a, b: -(-a // b)),
        "vllm.utils.torch_utils": types.SimpleNamespace(async_tensor_h2d=None),
        "vllm.v1.worker.gpu.buffer_utils": types.SimpleNamespace(UvaBackedTensor=None),
        "vllm.v1.worker.gpu.states": types.SimpleNamespace(RequestState=None),
    }
    mods = _run(["vllm/v1/sample/ops/topk_topp_sampler.py", "vllm/v1/worker/gpu/sample/min_p.py",
                 "vllm/v1/worker/gpu/sample/penalties.py"], stubs)
    topk = mods["vllm.v1.sample.ops.topk_topp_sampler"]
    pen = mods["vllm.v1.worker.gpu.sample.penalties"]
    return types.SimpleNamespace(apply_top_k_top_p=lambda logits, k, p: topk.apply_top_k_top_p_pytorch(logits, k, p),
                                 apply_min_p=mods["vllm.v1.worker.gpu.sample.min_p"].apply_min_p,
                                 apply_penalties=pen.apply_penalties, bincount=pen.bincount)

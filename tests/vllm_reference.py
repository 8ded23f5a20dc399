"""vLLM's own watermarking code (``vllm==0.30.0``), loaded from the wheel by file path: the truth the
vLLM-native schemes are tested against.

``make install`` downloads the wheel (``pip download --no-deps vllm==0.30.0 -d .cache/wheels``);
``$WMKIT_VLLM_WHEEL`` may name another copy. Only ``vllm/config/watermarking.py`` and
``vllm/v1/watermarking/`` are executed; the imports they make of the rest of vLLM (its logger,
its config decorator, the CUDA sampler) are replaced by small stand-ins, none of which the CPU
code paths used here call.
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


def _package(name: str) -> types.ModuleType:
    if name not in sys.modules:
        mod = types.ModuleType(name)
        mod.__path__ = []  # a namespace that only holds what we load into it
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(_package(parent), child, mod)
    return sys.modules[name]


def load() -> types.SimpleNamespace:
    """vLLM's watermarking modules, as ``ns.gumbel``, ``ns.philox``, ``ns.config``."""
    path = wheel_path()
    if path is None or not path.exists():
        raise FileNotFoundError("the vllm==0.30.0 wheel is missing (make install downloads it to .cache/wheels)")
    saved = {k: v for k, v in sys.modules.items() if k == "vllm" or k.startswith("vllm.")}
    for k in saved:
        del sys.modules[k]
    try:
        for pkg in ("vllm.config", "vllm.v1.watermarking.prfs", "vllm.v1.worker.gpu.sample"):
            _package(pkg)
        logger = logging.getLogger("vllm-reference")
        logger.warning_once = lambda *a, **k: None  # type: ignore[attr-defined]
        sys.modules["vllm.logger"] = types.SimpleNamespace(init_logger=lambda name: logger)  # type: ignore[assignment]
        sys.modules["vllm.config.utils"] = types.SimpleNamespace(config=lambda cls: cls)  # type: ignore[assignment]

        def no_gpu_sampler(*a, **k):
            raise RuntimeError("vLLM's CUDA sampler is not part of the reference")

        sys.modules["vllm.v1.worker.gpu.sample.gumbel"] = types.SimpleNamespace(gumbel_sample=no_gpu_sampler)  # type: ignore[assignment]
        mods = {}
        with zipfile.ZipFile(path) as zf:
            for f in FILES:
                name = f[:-3].replace("/", ".").removesuffix(".__init__")
                spec = importlib.util.spec_from_loader(name, loader=None, origin=f)
                mod = importlib.util.module_from_spec(spec)
                if f.endswith("__init__.py"):
                    mod.__path__ = []
                sys.modules[name] = mod
                exec(compile(zf.read(f), f"{path.name}/{f}", "exec"), mod.__dict__)
                parent, _, child = name.rpartition(".")
                setattr(_package(parent), child, mod)
                mods[name] = mod
        return types.SimpleNamespace(
            config=mods["vllm.config.watermarking"], philox=mods["vllm.v1.watermarking.prfs.philox"],
            detector=mods["vllm.v1.watermarking.detector"], gumbel=mods["vllm.v1.watermarking.gumbel"])
    finally:
        for k in [k for k in sys.modules if k == "vllm" or k.startswith("vllm.")]:
            del sys.modules[k]
        sys.modules.update(saved)

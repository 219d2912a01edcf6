# Two commands matter: `make demo` and `make test`. Both set up .venv on a fresh machine first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup bench bench-llamacpp tiny tiny-mpo tiny-prm tiny-flash eval-tiny lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU build; letting pip resolve it pulls gigabytes of CUDA
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m internvl demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# side-by-side benchmarks against transformers (minutes; writes benchmarks/results/*.json);
# BENCH_ARGS=--emulate-avx2 also measures inference as an AVX2-only CPU (results/inference_avx2.json)
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

# the outside anchor (optional, not needed by make test): llama.cpp's batch-1 decode against ours on the same
# random weights (benchmarks/bench_llamacpp.py). Builds llama-cpp-python from source once: 6 minutes on 2 Zen 4
# cores (15 reported elsewhere).
LLAMACPP := scratch/llamacpp
LLAMACPP_VERSION := 0.3.36
$(LLAMACPP)/.installed: $(STAMP)
	mkdir -p $(LLAMACPP)
	$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMACPP_VERSION) -d $(LLAMACPP)
	# the Qwen2 vocabulary llama.cpp ships for its tokenizer tests: a GGUF file needs one to load
	tar xzf $(LLAMACPP)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP) --strip-components=4 \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q $(LLAMACPP)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz "gguf>=0.17"
	touch $@

bench-llamacpp: $(LLAMACPP)/.installed
	$(BIN)/python -m benchmarks.bench_llamacpp

# train the shipped tiny InternVL from scratch (about 2 hours on 2 CPU cores: stage 0, stage 2) into src/internvl/tiny/model
tiny: $(STAMP)
	$(BIN)/python -m internvl.tiny.recipe --work scratch/tiny-recipe

# the shipped tiny model on its world as VLMEvalKit files: export-shapes, then eval run (results in scratch/eval-tiny)
EVAL_TINY := scratch/eval-tiny
eval-tiny: $(STAMP)
	$(BIN)/python -m internvl eval export-shapes --out $(EVAL_TINY)/bench --n 100
	$(BIN)/python -m internvl eval run --out $(EVAL_TINY)/tiny --data $(EVAL_TINY)/bench/ShapesMCQ_circular.tsv \
		--data $(EVAL_TINY)/bench/ShapesYN.tsv --data $(EVAL_TINY)/bench/ShapesVQA.tsv

# preference pairs from a tiny SFT model, MPO on them, and the before/after report (scratch/tiny-mpo/report.md);
# TINY_MPO_MODEL=DIR runs it on another checkpoint (then also TINY_MPO_WORK=another/dir)
TINY_MPO_MODEL ?= src/internvl/tiny/model
TINY_MPO_WORK ?= scratch/tiny-mpo
tiny-mpo: $(STAMP)
	$(BIN)/python -m internvl.tiny.mpo_recipe --model $(TINY_MPO_MODEL) --work $(TINY_MPO_WORK)

# train the tiny process reward model for a tiny policy and ship it to src/internvl/tiny/prm (about an hour on 2
# cores): step-wise fine-tuning of the policy, Monte Carlo PRM data, PRM training, Best-of-N evaluation.
# A policy that already answers step by step: make tiny-prm POLICY=DIR PRM_ARGS="--policy-steps 0"
POLICY ?= src/internvl/tiny/model
PRM_ARGS ?=
tiny-prm: $(STAMP)
	$(BIN)/python -m internvl.tiny.prm_recipe --policy $(POLICY) --work scratch/tiny-prm $(PRM_ARGS)

# a tiny InternVL3.5-Flash by ViCO (consistency, then router) and its report (scratch/tiny-flash/report.md):
# visual tokens, accuracy and time per question with --vir auto / off against the starting model.
# TINY_FLASH_MODEL=DIR runs it on another checkpoint (then also TINY_FLASH_WORK=another/dir);
# TINY_FLASH_ARGS="--consistency-steps 2 --router-steps 2 --data-n 64 --eval-n 20" is a smoke run
TINY_FLASH_MODEL ?= src/internvl/tiny/model
TINY_FLASH_WORK ?= scratch/tiny-flash
TINY_FLASH_ARGS ?=
tiny-flash: $(STAMP)
	$(BIN)/python -m internvl.tiny.flash_recipe --model $(TINY_FLASH_MODEL) --work $(TINY_FLASH_WORK) $(TINY_FLASH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info

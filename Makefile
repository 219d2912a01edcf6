# Two commands matter: `make demo` and `make test`. Both set up .venv on a fresh machine first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup bench tiny eval-tiny lint clean

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

# side-by-side benchmarks against transformers (minutes; writes benchmarks/results/*.json)
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# train the shipped tiny InternVL from scratch (about 80 minutes on 2 CPU cores) into src/internvl/tiny/model
tiny: $(STAMP)
	$(BIN)/python -m internvl.tiny.recipe --work scratch/tiny-recipe

# the shipped tiny model on its world as VLMEvalKit files: export-shapes, then eval run (results in scratch/eval-tiny)
EVAL_TINY := scratch/eval-tiny
eval-tiny: $(STAMP)
	$(BIN)/python -m internvl eval export-shapes --out $(EVAL_TINY)/bench --n 100
	$(BIN)/python -m internvl eval run --out $(EVAL_TINY)/tiny --data $(EVAL_TINY)/bench/ShapesMCQ_circular.tsv \
		--data $(EVAL_TINY)/bench/ShapesYN.tsv --data $(EVAL_TINY)/bench/ShapesVQA.tsv

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info

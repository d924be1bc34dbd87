# Two commands do all the set-up on a fresh machine (see README):
#   make demo   -> create/reuse .venv from constraints.txt, run the pipeline end to end
#   make test   -> create/reuse .venv from constraints.txt, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint lock bench clean

venv: $(STAMP)

# Reinstalls only when the lock or the project metadata changed.
$(STAMP): constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/labse demo

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

# Re-resolve the dependency set from requirements/*.in into constraints.txt.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip setuptools wheel
	.venv-lock/bin/python -m pip install -q -r requirements/base.in -r requirements/dev.in
	.venv-lock/bin/python -m pip check
	( echo "# Resolved from requirements/*.in by 'make lock' (Python 3.11, CPU torch)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' ) > constraints.txt
	rm -rf .venv-lock

# Benchmarks: each prints ours vs the peer measured in the same run (results in bench/results/).
# prepare_bench builds OpusFilter in its own venv (.venv-opusfilter) on first use.
bench: venv
	$(BIN)/python -m bench.prepare_bench
	$(BIN)/python -m bench.pretrain_bench
	$(BIN)/python -m bench.finetune_bench

clean:
	rm -rf $(VENV) labse_home

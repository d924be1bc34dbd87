# Two commands do all the set-up on a fresh machine (see README):
#   make demo   -> create/reuse .venv from constraints.txt, run the pipeline end to end
#   make test   -> create/reuse .venv from constraints.txt, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint lock bench bench-quick clean

venv: $(STAMP)

# Reinstalls only when the lock or the project metadata changed.
$(STAMP): constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/labse demo

# Two workers (pytest-xdist), one thread each (tests/conftest.py), files kept together so that a
# module's fixtures are built once: most of the suite is single-threaded Python (Beam, parsing).
PYTEST_WORKERS ?= 2
test: venv
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

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

# Benchmarks: each runs ours and the peer in separate processes, interleaved, and writes
# bench/results/<name>.json (bench/common.py). `make bench QUICK=1` (or `make bench-quick`) runs every one
# with --quick: 4 min 43 s in all on 2 cores (2026-11-30; docs/benchmarks.md). prepare_bench builds OpusFilter in its own venv
# (.venv-opusfilter) on first use. Run nothing else on the machine meanwhile: the results flag runs
# during which other processes used the CPU.
BENCH_FLAGS := $(if $(QUICK),--quick,)
bench: venv
	$(BIN)/python -m bench.prepare_bench $(BENCH_FLAGS)
	$(BIN)/python -m bench.pretrain_bench $(BENCH_FLAGS)
	$(BIN)/python -m bench.finetune_bench $(BENCH_FLAGS)
	$(if $(QUICK),,$(BIN)/python -m bench.finetune_bench --model base --steps 6 --warmup 2 --repeats 2 --encode-sentences 500)
	$(BIN)/python -m bench.encode_bench $(BENCH_FLAGS)
	$(BIN)/python -m bench.mine_bench $(BENCH_FLAGS)

bench-quick:
	$(MAKE) bench QUICK=1

clean:
	rm -rf $(VENV) labse_home

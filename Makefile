# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first
# (again whenever pyproject.toml changes, or if the venv is broken).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= runs
PORT   ?= 6006

LOCK   ?= requirements/ci.lock
ONEDNN := build/onednn/libresexp_onednn.so
LINTED := resexp scripts tests

.PHONY: install demo test lint fmt docs lock check-wheel tutorial bench bench-torch tensorboard clean slurm-up slurm-down

# The lock (exact versions + sha256, what CI tested) first, then resexp itself; `make install LOCK=`
# skips the lock (another platform), `pip install .` alone keeps pyproject's ranges.
$(STAMP): pyproject.toml $(LOCK)
	@$(BIN)/python -c 'import sys' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(LOCK),$(BIN)/python -m pip install -q --require-hashes -r $(LOCK))
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) $(ONEDNN)  ## set up .venv with resexp and the test tools (versions from requirements/ci.lock)

# CPU convolutions through oneDNN (resexp/core/onednn_conv.py). Where it cannot build (no g++, not Linux
# x86_64, no network) resexp runs XLA's convolutions instead, and says so once when it starts.
$(ONEDNN): csrc/onednn_conv.cc requirements/onednn.txt scripts/build_onednn.sh | $(STAMP)
	@bash scripts/build_onednn.sh || echo "note: the oneDNN extension did not build; resexp will use XLA's convolutions" >&2

lint: $(STAMP)  ## ruff check, ruff format --check, mypy on resexp/ scripts/ tests/, and lint-imports (resexp's layers; all four run; any finding fails)
	@rc=0; \
	  $(BIN)/ruff check $(LINTED) || rc=1; \
	  $(BIN)/ruff format --check $(LINTED) || rc=1; \
	  $(BIN)/mypy $(LINTED) || rc=1; \
	  $(BIN)/lint-imports || rc=1; \
	  exit $$rc

fmt: $(STAMP)  ## apply ruff's safe fixes and its formatter; then `make lint` lists what is left to fix by hand
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

docs: $(STAMP)  ## the documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link, anchor or nav entry fails
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lock: $(STAMP)  ## rewrite requirements/ci.lock from .venv (after the tests pass in it)
	$(BIN)/python scripts/lock.py $(LOCK)
	@touch $(STAMP)  # the venv is what the new lock describes: nothing to reinstall

tutorial: $(STAMP) $(ONEDNN)  ## docs/tutorial.ipynb run top to bottom in a real Jupyter kernel (what .ci/run checks); a failing cell fails
	$(BIN)/python scripts/run_tutorial.py

demo: $(STAMP) $(ONEDNN)  ## the embedded depth sweep: plain vs residual, depth 8..56, on 2 CPU cores
	$(BIN)/resexp sweep configs/demo.yaml --out $(OUT) --jobs 2

test: $(STAMP) $(ONEDNN)  ## the whole test suite on 2 workers, a test file each (pytest exit 5, 'no tests collected', is a failure)
	@$(BIN)/python -m pytest -q -n 2 --dist loadfile; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

check-wheel: $(STAMP)  ## build the sdist and wheel, install the wheel in a fresh venv outside the clone, run the demo by name there
	PYTHON=$(PYTHON) LOCK=$(LOCK) bash scripts/check_wheel.sh

bench: $(STAMP) $(ONEDNN)  ## compile time and images/s for ResNet-20/56/110 on this machine (JSON)
	$(BIN)/python scripts/bench.py --depths 20,56,110 --json

bench-torch: $(STAMP) $(ONEDNN)  ## the same, side by side with PyTorch eager (torch goes into .venv-bench, never .venv)
	@.venv-bench/bin/python -c 'import torch' 2>/dev/null || { $(PYTHON) -m venv .venv-bench && .venv-bench/bin/python -m pip install -q torch==2.13.0 numpy; }
	$(BIN)/python scripts/bench.py --depths 20,56,110 --steps 5 --repeats 3 --compare-torch --json

tensorboard: $(STAMP)  ## TensorBoard on every sweep under runs/, opened at the answer (OUT=runs/<name>: one sweep; PORT=6006)
	$(BIN)/resexp tensorboard $(OUT) --port $(PORT)

slurm-up:  ## a real single-node SLURM on this machine (root, Debian/Ubuntu; installs its packages): tests/test_slurm.py
	bash scripts/slurm_local.sh up

slurm-down:  ## stop it (cancels every job first)
	bash scripts/slurm_local.sh down

clean:
	rm -rf $(VENV) .pytest_cache site

# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first
# (again whenever pyproject.toml changes, or if the venv is broken).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= runs

.PHONY: install demo test bench bench-torch tensorboard clean slurm-up slurm-down

$(STAMP): pyproject.toml
	@$(BIN)/python -c 'import sys' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## set up .venv with resexp and the test tools

demo: $(STAMP)  ## the embedded depth sweep: plain vs residual, depth 8..56, on 2 CPU cores
	$(BIN)/resexp sweep configs/demo.yaml --out $(OUT) --jobs 2
	@echo "Figure: $(OUT)/demo/loss_vs_depth.png   Dashboards: make tensorboard"

test: $(STAMP)  ## the whole test suite (pytest exit 5, 'no tests collected', is a failure)
	@$(BIN)/python -m pytest -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

bench: $(STAMP)  ## compile time and images/s for ResNet-20/56/110 on this machine (JSON)
	$(BIN)/python scripts/bench.py --depths 20,56,110 --json

bench-torch: $(STAMP)  ## the same, side by side with PyTorch eager (torch goes into .venv-bench, never .venv)
	@.venv-bench/bin/python -c 'import torch' 2>/dev/null || { $(PYTHON) -m venv .venv-bench && .venv-bench/bin/python -m pip install -q torch numpy; }
	$(BIN)/python scripts/bench.py --depths 20,56,110 --steps 5 --repeats 3 --compare-torch --json

tensorboard: $(STAMP)  ## dashboards for everything under runs/
	$(BIN)/tensorboard --logdir $(OUT) --host 127.0.0.1

slurm-up:  ## a real single-node SLURM on this machine (root, Debian/Ubuntu; installs its packages): tests/test_slurm.py
	bash scripts/slurm_local.sh up

slurm-down:  ## stop it (cancels every job first)
	bash scripts/slurm_local.sh down

clean:
	rm -rf $(VENV) .pytest_cache

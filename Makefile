# Two entry points: `make demo` and `make test`.  Both create/refresh .venv from nothing but Python.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean train-default

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch 2.13.0 CPU build: pinned so pip never pulls a multi-GB CUDA build on a CPU machine.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dgtr demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

# Train (or resume) the bundled default model on data/pybullet and export it to dgtr/checkpoints/default.pt, with the
# AB-TTA settings measured on its validation split (benchmarks/tune_tta.py --checkpoint, benchmarks/tta_val_sim.yaml;
# dgtr/tta.py docstring).
DEFAULT_TTA := tta.tau=0.04 tta.iterations=150 tta.alpha_pen=80 tta.beta_t=0.1
train-default: $(STAMP)
	$(BIN)/dgtr train --config configs/bundled.yaml --data data/pybullet --out runs/default \
		$(if $(wildcard runs/default/checkpoint.pt),--resume,)
	$(BIN)/dgtr export runs/default/checkpoint.pt dgtr/checkpoints/default.pt $(DEFAULT_TTA)

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info

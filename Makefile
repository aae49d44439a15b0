# glimpse: two commands on a fresh machine.
#   make run   - create the environment, generate the shapes world and evaluate it
#   make test  - create the environment (all extras) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build of PyTorch; a GPU machine installs its CUDA build before `make`.
TORCH_SPEC ?= torch==2.13.0
DATA ?= data/shapes

.PHONY: run test lint data env env-dev clean

$(VENV)/.dev-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[serve,train,eval,dev]"
	touch $@

env-dev: $(VENV)/.dev-installed

data: env-dev
	$(VENV)/bin/glimpse data shapes --out $(DATA) --num-train 5000 --num-val 500 \
		--num-test 1000 --num-novel 1000 --size 64 --seed 0

run: data

test: env-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: env-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) data runs .pytest_cache .ruff_cache

# glimpse: two commands on a fresh machine.
#   make run   - create .venv-serve (serve extra only, no torch) and start the service
#                on the committed model repository; the log prints the /docs URL
#   make test  - create .venv (every extra), install Debian's chromium (the web page's
#                browser tests) and a Java runtime (the METEOR test) when missing, and
#                run ruff and the test suite; make test-fast leaves out the slow tests
PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build of PyTorch; on a GPU machine install the CUDA build that suits the
# driver first, or run `make test TORCH_SPEC=torch==2.13.0` with your index.
TORCH_SPEC ?= torch==2.13.0
DATA ?= data/shapes
HOST ?= 127.0.0.1
PORT ?= 8000
REPOSITORY ?= model_repository

CHROMIUM ?= /usr/bin/chromium

.PHONY: run serve test test-fast lint data models env-dev env-serve browser java clean

$(VENV)/.dev-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[serve,train,eval,dev]"
	touch $@

$(SERVE_VENV)/.serve-installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet -e ".[serve]"
	touch $@

env-dev: $(VENV)/.dev-installed
env-serve: $(SERVE_VENV)/.serve-installed

# The main job: the service on the committed default repository.
run serve: env-serve
	@echo "glimpse: API manual at http://$(HOST):$(PORT)/docs once the models are loaded"
	$(SERVE_VENV)/bin/glimpse serve --host $(HOST) --port $(PORT) --repository $(REPOSITORY)

# The browser the web page is tested in: Debian's chromium, driven by Playwright's Python
# package (which downloads no browser of its own).
browser:
	@test -x $(CHROMIUM) || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

# METEOR (pycocoevalcap's METEOR 1.5) is a Java program.
java:
	@command -v java >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q default-jre-headless; }

test: env-dev browser java
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-fast: env-dev browser java
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

lint: env-dev
	$(VENV)/bin/ruff check .

# The shapes world the default models are evaluated on.
data: env-dev
	$(VENV)/bin/glimpse data shapes --out $(DATA) --num-train 5000 --num-val 500 \
		--num-test 1000 --num-novel 1000 --size 64 --seed 0

# The default training recipe (encoder, NIC, SAT; export and evaluate into the repository).
models: env-dev
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/train_recipe.sh

clean:
	rm -rf $(VENV) $(SERVE_VENV) data runs .pytest_cache .ruff_cache

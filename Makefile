# binome: two-command setup.  `make demo` runs a local cluster; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup deps venv image demo test test-unit test-integration test-lab lint clean

setup: deps venv image

deps:
	@bash tools/setup-debian.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

image: venv
	$(PY) -m binome.lab.image

demo: setup
	$(PY) -m binome.lab.demo

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy   # what and how strictly: [tool.mypy] in pyproject.toml

test: setup lint
	$(PY) -m pytest -p no:cacheprovider

test-unit: venv
	$(PY) -m pytest -p no:cacheprovider -m unit

test-integration: setup
	$(PY) -m pytest -p no:cacheprovider -m integration

test-lab: setup
	$(PY) -m pytest -p no:cacheprovider -m lab

clean:
	rm -rf $(VENV) .cache build *.egg-info

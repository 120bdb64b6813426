# visionstack: the two commands are `make demo` and `make test`; both create the environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MALLOC_MMAP_THRESHOLD_ ?= 16777216
export MALLOC_TRIM_THRESHOLD_ ?= 1073741824

.PHONY: venv demo test test-fast zoo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,export,cam]'
	touch $(STAMP)

demo: venv
	$(BIN)/python -m visionstack.demo

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not zoo and not slow" tests

zoo: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m zoo tests

bench: venv
	$(BIN)/python benchmarks/backbone_overhead.py
	$(BIN)/python benchmarks/train_throughput.py

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info

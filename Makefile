# make test / make demo each set up .venv when it is missing, so a fresh clone needs nothing
# else. torch is pinned through constraints.txt (the CPU build on disk), never a CUDA download.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint typecheck bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt plugins/prunekit-example/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' -e plugins/prunekit-example
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests plugins examples benchmarks docs
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/masks.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info

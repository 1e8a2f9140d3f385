# make test / make demo each set up .venv when it is missing, so a fresh clone needs nothing
# else. torch is pinned through constraints.txt (the CPU build on disk), never a CUDA download.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint typecheck bench bench-scale bench-overhead bench-slim bench-venv \
	llmc-venv bench-llmc clean

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
	$(BIN)/lint-imports

# Benchmarks, never timed tests: `make bench ARGS=--markdown` prints the tables of
# docs/performance.md. INC's contenders run where the `bench` extra is installed (in a venv of
# its own, `make bench-venv`; then BENCH_PYTHON=.venv-bench/bin/python make bench).
BENCH_PYTHON ?= $(BIN)/python
bench: $(STAMP)
	$(BENCH_PYTHON) benchmarks/masks.py $(ARGS)

bench-scale: $(STAMP)
	$(BENCH_PYTHON) benchmarks/masks.py --scale $(ARGS)

bench-overhead: $(STAMP)
	$(BENCH_PYTHON) benchmarks/masks.py --overhead $(ARGS)

# Dense vs masked vs slimmed latency (docs/performance.md); Torch-Pruning where installed.
bench-slim: $(STAMP)
	$(BENCH_PYTHON) benchmarks/slim.py $(ARGS)

bench-venv:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet -c constraints.txt -e '.[bench]'

# prunekit's Wanda and SparseGPT against llm-compressor's on the same tiny LLaMA
# (benchmarks/llm_compressor.py; `make bench-llmc ARGS=--quick` for a smoke check). Its venv
# has its own pins (benchmarks/llmc-requirements.txt): constraints.txt less its transformers
# pin, which llm-compressor 0.14.0.1 cannot take (it needs transformers<=5.17); torch stays
# pinned to the CPU build.
llmc-venv:
	test -x .venv-llmc/bin/python || $(PYTHON) -m venv .venv-llmc
	grep -v '^transformers==' constraints.txt > .venv-llmc/constraints.txt
	.venv-llmc/bin/python -m pip install --quiet -c .venv-llmc/constraints.txt \
		-r benchmarks/llmc-requirements.txt -e .

bench-llmc:
	test -x .venv-llmc/bin/python || $(MAKE) llmc-venv
	.venv-llmc/bin/python benchmarks/llm_compressor.py $(ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info

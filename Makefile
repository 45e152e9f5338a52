# Two commands on a fresh machine:
#   make demo   set up .venv and run the embedded default (python -m recipe.copd.main)
#   make test   set up .venv and run the test suite (what CI runs)
#   make rehearse  every preset of configs/ shrunk (tiny Qwen3-VL, fixtures) through the real trainer on CPU;
#                  report in outputs/rehearsal/report.md (python -m recipe.copd.rehearse --help)
#   make compare   the paper's comparison in miniature, 3 seeds (python -m recipe.copd.compare --help)
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU torch goes in first so that nothing pulls a CUDA build on a machine without a GPU.
# Where pip would pick a CUDA wheel for this spec, point PIP_TORCH_ARGS at PyTorch's CPU wheel index.
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := dev

.PHONY: setup demo test rehearse compare lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(if $(HAS_GPU),,$(PY) -m pip install -q $(PIP_TORCH_ARGS) "$(TORCH_SPEC)")
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	OMP_NUM_THREADS=1 $(PY) -m recipe.copd.main

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

rehearse: setup
	OMP_NUM_THREADS=1 $(PY) -m recipe.copd.rehearse --out outputs/rehearsal

compare: setup
	OMP_NUM_THREADS=1 $(PY) -m recipe.copd.compare --seeds 3 --out outputs/compare

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/merge_bench.py

clean:
	rm -rf outputs .pytest_cache

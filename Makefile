# Two entry points: `make run` (set up, meta-train + evaluate the default job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real data: ../shared/data beside the checkout when it exists (CI), else $FASTADAPT_DATA or the user cache.
SHARED_DATA := $(wildcard ../shared/data)
ifneq ($(SHARED_DATA),)
export FASTADAPT_DATA ?= $(abspath $(SHARED_DATA))
endif

.PHONY: setup run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel, pinned: a looser spec pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/fastadapt train protonet-omniglot-quick

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/maml_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache

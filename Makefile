# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, runs the main job
#   make test   creates .venv if missing, installs, runs the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LEROBOT_VERSION := 0.4.4
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# The install is about 7 GB (torch's CUDA build); a pip cache would add the downloads again.
export PIP_NO_CACHE_DIR := 1

.PHONY: install demo test test-all lint bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install whenever pyproject.toml or this Makefile changes.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,lerobot,ros2]'
	# lerobot declares torch<2.11; install it without its pins (its working set is the lerobot extra).
	$(BIN)/pip install -q --no-deps lerobot==$(LEROBOT_VERSION)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m robo.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not hardware" --timeout 600

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --timeout 1800

lint: $(STAMP)
	$(BIN)/ruff check robo models sim hardware calibration tests bench
	$(BIN)/ruff format --check robo models sim hardware calibration tests bench

bench: $(STAMP)
	$(BIN)/python bench/sim_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache

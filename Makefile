# depthforge — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision versions known to install together (checked on CPU here); override on clusters: make install TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-slow gpu-check lint format smoke train minidg clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

# imagecorruptions-imaug (Cityscapes-C, src/data/corruptions.py) goes in with --no-deps: its metadata asks for
# opencv-python, which would overwrite opencv-python-headless; its other needs are in pyproject.toml
install: ## create .venv, install torch/torchvision, then this package (editable) with the dev extra
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "imagecorruptions-imaug==1.1.5"

test: ## run the default (CPU) test suite
	$(PY) -m pytest -q

test-slow: ## run the slow tests (real-size models on CPU)
	$(PY) -m pytest -q -m slow

gpu-check: ## GPU tests + the ViT-L benchmark table into docs/benchmarks.md (needs CUDA, < 8 min on an H100)
	bash scripts/gpu_check.sh

lint: ## ruff over src, scripts, tests
	$(PY) -m ruff check src scripts tests
	$(PY) -m ruff format --check src scripts tests

format: ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix src scripts tests
	$(PY) -m ruff format src scripts tests

smoke: ## train+validate the no-download smoke experiment on CPU
	$(PY) -m src.train experiment=smoke $(ARGS)

train: ## train: make train ARGS="experiment=gta2citys"
	$(PY) -m src.train $(ARGS)

minidg: ## the MiniDG benchmark on CPU (DepthForge vs REIN over 5 seeds, frozen over 2, the table and the paired test)
	$(PY) scripts/minidg_sweep.py $(ARGS)

clean: ## remove caches and run outputs
	rm -rf .pytest_cache .ruff_cache logs outputs multirun
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Each target sets up .venv on first use (scripts/setup_env.sh), then runs.
RECIPE ?= recipes/tiny-llama/pretrain.yaml
PIPELINE ?= recipes/tiny-llama/pipeline.yaml
FINETUNE ?= recipes/minilm/finetune-sentiment.yaml
ARGS ?=

LINTED = src scripts tests benchmarks

.PHONY: setup pipeline pretrain finetune test lint

setup:
	@bash scripts/setup_env.sh

pipeline: setup
	.venv/bin/python scripts/pipeline.py $(PIPELINE) $(ARGS)

pretrain: setup
	.venv/bin/python scripts/pretrain.py $(RECIPE) $(ARGS)

finetune: setup
	.venv/bin/python scripts/finetune.py $(FINETUNE) $(ARGS)

lint: setup
	.venv/bin/ruff check $(LINTED)

test: lint
	.venv/bin/python -m pytest $(ARGS)

# Each target sets up .venv on first use (scripts/setup_env.sh), then runs.
RECIPE ?= recipes/tiny-llama/pretrain.yaml
PIPELINE ?= recipes/tiny-llama/pipeline.yaml
ARGS ?=

.PHONY: setup pipeline pretrain test

setup:
	@bash scripts/setup_env.sh

pipeline: setup
	.venv/bin/python scripts/pipeline.py $(PIPELINE) $(ARGS)

pretrain: setup
	.venv/bin/python scripts/pretrain.py $(RECIPE) $(ARGS)

test: setup
	.venv/bin/python -m pytest $(ARGS)

# Each target sets up .venv on first use (scripts/setup_env.sh), then runs.
RECIPE ?= recipes/tiny-llama/pretrain.yaml
ARGS ?=

.PHONY: setup pretrain test

setup:
	@bash scripts/setup_env.sh

pretrain: setup
	.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		scripts/pretrain.py $(RECIPE) $(ARGS)

test: setup
	.venv/bin/python -m pytest $(ARGS)

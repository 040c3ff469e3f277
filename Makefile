# Convenience targets; each one sets up .venv first (scripts/setup.sh), like the README's two commands.
.PHONY: setup train test test-fast bench optimizers tensorboard

setup:
	bash scripts/setup.sh

train:
	bash scripts/train.sh

test:
	bash scripts/test.sh

test-fast:  # everything except the convergence runs
	bash scripts/test.sh -m "not slow"

bench: setup
	.venv/bin/python benchmarks/step_speed.py
	.venv/bin/python benchmarks/state_memory.py

optimizers: setup
	.venv/bin/lightning-opt optimizers

tensorboard: setup
	.venv/bin/tensorboard --logdir logs

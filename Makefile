# Quick start: `make chat` (talk to the sample character, offline) and `make test` (the whole suite).
.PHONY: chat test setup setup-dev bench

chat: setup
	.venv/bin/charbot chat

test: setup-dev
	.venv/bin/python -m pytest

setup:
	@bash scripts/setup.sh serve

setup-dev:
	@bash scripts/setup.sh dev

bench: setup-dev
	@for b in benchmarks/bench_*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done

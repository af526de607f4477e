# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: setup test lint demo bench

setup:
	@bash scripts/setup.sh

lint: setup
	.venv/bin/ruff check winexec tests benchmarks
	.venv/bin/ruff format --check winexec tests benchmarks
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -q $(PYTEST_ARGS)

demo: setup
	.venv/bin/python -m winexec.demo $(DEMO_ARGS)

bench: setup
	.venv/bin/python -m benchmarks $(BENCH_ARGS)

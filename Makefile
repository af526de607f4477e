# Shorthands for the scripts the README names; `make` is optional.
.PHONY: setup test demo bench

setup:
	@bash scripts/setup.sh

test:
	@bash scripts/test.sh $(PYTEST_ARGS)

demo:
	@bash scripts/demo.sh $(DEMO_ARGS)

bench: setup
	.venv/bin/python -m benchmarks $(BENCH_ARGS)

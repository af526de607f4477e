#!/usr/bin/env bash
# The README's test command: set up if needed, then lint, type checks and the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k tickets`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check winexec tests benchmarks
.venv/bin/ruff format --check winexec tests benchmarks
.venv/bin/mypy
# Two test modules at a time (each keeps its own KDC, hosts and Airflow): much of the suite waits
# on timeouts and heartbeats, so two workers on two cores finish in about two thirds of the time.
# The 15 slowest tests are listed at the end.
exec .venv/bin/pytest -q -n 2 --dist loadfile --durations=15 "$@"

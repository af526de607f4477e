#!/usr/bin/env bash
# The README's test command: set up if needed, then lint, type checks and the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k tickets`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check winexec tests benchmarks
.venv/bin/ruff format --check winexec tests benchmarks
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"

#!/usr/bin/env bash
# The benchmark suite: results in docs/benchmarks/*.json (+ PNG), summary in docs/benchmarks.md.
# Extra arguments go to the suite (`--only NAME`, `--quick`, `--report-only`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m benchmarks "$@"

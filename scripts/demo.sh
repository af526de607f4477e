#!/usr/bin/env bash
# The README's first command: set up if needed, then run the demo on the built-in Windows stand-in.
# Extra arguments go to the demo (`--help`, `--keep-running`, `--dags-folder DIR`, `--json`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m winexec.demo "$@"

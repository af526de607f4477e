"""winexec's benchmark suite: ``bash scripts/bench.sh`` (``python -m benchmarks [--only NAME] [--quick]``).

Each benchmark is a module of this package with

- ``TITLE``: one line for the report;
- ``run(ctx) -> dict``: does the measurement and returns ``params``, ``results``, ``targets``
  and ``notes`` (the harness adds the machine, the date and the load);
- ``plot(data, path)``: draws ``data`` (the JSON written) to a PNG;
- ``markdown(data) -> str``: its section of ``docs/benchmarks.md``.

Results land in ``docs/benchmarks/<name>.json`` and ``<name>.png``; ``docs/benchmarks.md`` is
regenerated from every JSON file there, so a partial run keeps the other benchmarks' figures.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: In report order. ``--only`` takes these names.
BENCHMARKS: tuple[str, ...] = ("tickets", "launch_latency", "throughput", "scale", "scheduler_cost")


def load(name: str) -> ModuleType:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"benchmarks.{name}")

"""A scheduler to kill: ``python -m tests.fault_scheduler SPEC EVENTS``.

Runs the executor of ``SPEC`` (a pickle: settings, keytabs, workloads) as the scheduler loop does
and appends every event it reports to ``EVENTS`` (one JSON line each, flushed), until killed.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

from tests.fault_kit import make_executor


def main(spec_path: str, events_path: str) -> None:
    spec = pickle.loads(Path(spec_path).read_bytes())
    ex = make_executor(spec["settings"], spec["keytabs"])
    for w in spec["workloads"]:
        ex.queued_tasks[w.ti.key] = w
    with open(events_path, "a", encoding="utf-8") as out:
        while True:
            ex.heartbeat()
            for key, (state, info) in ex.get_event_buffer().items():
                out.write(json.dumps({"task_id": key.task_id, "state": str(state), "info": info}) + "\n")
            out.flush()
            time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

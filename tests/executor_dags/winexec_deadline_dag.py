"""A DAG run that misses its deadline while its task runs: the DeadlineAlert's SyncCallback runs
on a Windows host (winexec is the default executor), once, and the run still ends normally."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Any

from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback, dag, task


def record_missed_deadline(context: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """One ledger line per call, in the hosts' shared log folder: where, as whom, for which run."""
    run = (context or {}).get("dag_run") or {}
    run_id = run.get("run_id") if isinstance(run, dict) else getattr(run, "run_id", None)
    line = {
        "run_id": run_id,
        "computer": os.environ.get("COMPUTERNAME"),
        "user": os.environ.get("USERNAME"),
        "pid": os.getpid(),
    }
    folder = os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]
    with open(os.path.join(folder, "deadline-ledger.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


@dag(
    schedule=None,
    catchup=False,
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(seconds=2),
        callback=SyncCallback(record_missed_deadline),
    ),
)
def winexec_deadline() -> None:
    @task(retries=0)
    def slow() -> str:
        time.sleep(12)
        return "finished after its deadline"

    slow()


winexec_deadline()

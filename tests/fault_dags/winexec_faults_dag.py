"""DAG for the fault suite (``tests/test_faults.py``): one task per run, its every start on record.

``work`` appends one JSON line to ``$WINEXEC_FAULTS_LEDGER`` (the "hosts'" shared ledger) before it
does anything else, so the suite counts how many times each try of each task instance really
started on any host; then it sleeps ``dag_run.conf["sleep"]`` seconds and returns the run's conf.
"""

from __future__ import annotations

import json
import os
import time

from airflow.sdk import dag, get_current_context, task


@dag(schedule=None, catchup=False, max_active_tasks=64)
def winexec_faults() -> None:
    @task(retries=0)
    def work() -> dict[str, object]:
        ctx = get_current_context()
        ti = ctx["ti"]
        conf = dict(ctx["dag_run"].conf or {})
        entry = {
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "try": ti.try_number,
            "host": os.environ.get("COMPUTERNAME", "?"),
            "pid": os.getpid(),
        }
        with open(os.environ["WINEXEC_FAULTS_LEDGER"], "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=True) + "\n")
        time.sleep(float(conf.get("sleep", 0)))
        return {"conf": conf, "host": entry["host"]}

    work()


winexec_faults()

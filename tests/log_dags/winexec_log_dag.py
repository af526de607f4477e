"""A task whose log is bigger than one page and that keeps running for a while (task-log tests)."""

from __future__ import annotations

import time

from airflow.sdk import dag, get_current_context, task


@dag(schedule=None, catchup=False)
def winexec_logs() -> None:
    @task(retries=0)
    def chatty() -> None:
        conf = get_current_context()["dag_run"].conf or {}
        for i in range(int(conf.get("lines", 3000))):
            print(f"line-{i:05d} " + "x" * 200)
        print("winexec-log-test: halfway")
        time.sleep(float(conf.get("sleep", 1)))
        print("winexec-log-test: done")

    chatty()


winexec_logs()

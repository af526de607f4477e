"""One long task, for the scheduler-restart (adoption) test."""

from __future__ import annotations

import time

from airflow.sdk import dag, get_current_context, task


@dag(schedule=None, catchup=False)
def winexec_adopt() -> None:
    @task(retries=0)
    def long_sleep() -> str:
        time.sleep(float((get_current_context()["dag_run"].conf or {}).get("sleep", 1)))
        return "slept through a scheduler restart"

    long_sleep()


winexec_adopt()

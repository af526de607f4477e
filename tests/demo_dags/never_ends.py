"""A user's DAG that does not finish in the demo's time: its one task sleeps for ten minutes."""

from __future__ import annotations

import time

from airflow.sdk import dag, task


@dag(schedule=None, catchup=False)
def never_ends() -> None:
    @task(retries=0)
    def sleeps() -> None:
        print("sleeping", flush=True)
        time.sleep(600)

    sleeps()


never_ends()

"""A user's own DAG for ``python -m winexec.demo --dags-folder``: one task, nothing special."""

from __future__ import annotations

import os

from airflow.sdk import dag, task


@dag(schedule=None, catchup=False)
def hello_windows() -> None:
    @task
    def hello() -> str:
        return f"hello from {os.environ.get('COMPUTERNAME', '?')}"

    hello()


hello_windows()

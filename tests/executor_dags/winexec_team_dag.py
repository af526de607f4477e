"""A team's DAG: tests/test_teams_e2e.py puts a copy in each team's bundle as ``winexec_<team>.py``
(the DAG's id is its file's name), so each team has a DAG of its own."""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import dag, task


@dag(dag_id=Path(__file__).stem, schedule=None, catchup=False)
def team_dag() -> None:
    @task
    def whoami() -> dict[str, str]:
        return {"user": os.environ.get("USERNAME", "?"), "host": os.environ.get("COMPUTERNAME", "?")}

    whoami()


team_dag()

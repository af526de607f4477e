"""A DAG on a schedule: the scheduler makes its run, with a run id such as
``scheduled__2026-01-01T00:00:00+00:00`` whose ``:`` NTFS refuses in a file name."""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, get_current_context, task


# paused until the test unpauses it: a run made before the api-server listens would fail its task
@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=True,
)
def winexec_scheduled() -> None:
    @task(retries=0)
    def on_schedule() -> str:
        run_id = str(get_current_context()["run_id"])
        print(f"scheduled task of {run_id}")
        return run_id

    on_schedule()


winexec_scheduled()

"""Many short tasks and a few long ones, for two schedulers sharing one host pool. Their bodies
never run: the hosts' agent there is winexec.testing.lite_agent, which reports each try to the
Execution API as the Task SDK would."""

from __future__ import annotations

from airflow.sdk import dag, task


@task(retries=0)
def work(i: int) -> None:
    pass


@dag(schedule=None, catchup=False, max_active_tasks=64)
def winexec_many() -> None:
    work.expand(i=list(range(200)))


@dag(schedule=None, catchup=False, max_active_tasks=64)
def winexec_hold() -> None:
    work.expand(i=list(range(30)))


winexec_many()
winexec_hold()

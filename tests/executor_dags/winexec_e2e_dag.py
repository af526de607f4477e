"""DAG for the executor's launcher and end-to-end tests (runs on the stand-in's hosts)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from airflow.sdk import Variable, dag, get_current_context, task

#: the second principal's tasks prove the double hop by getting a ticket for this service
SECOND_HOP = os.environ.get("WINEXEC_E2E_SECOND_HOP", "HTTP@win02.winexec.test")


@dag(schedule=None, catchup=False, max_active_tasks=16)
def winexec_e2e() -> None:
    @task
    def hello() -> dict[str, object]:
        return {
            "user": os.environ.get("USERNAME", "?"),
            "host": os.environ.get("COMPUTERNAME", "?"),
            "fork": hasattr(os, "fork"),
        }

    @task
    def read_variable(greeting: dict[str, object]) -> str:
        assert greeting["user"], greeting
        return f"{Variable.get('winexec_e2e_var')}/{greeting['user']}"

    @task
    def parallel(i: int) -> int:
        time.sleep(1)
        return i * i

    @task
    def mapped(x: int) -> int:
        return x + 100

    @task(retries=1, retry_delay=timedelta(seconds=1))
    def flaky() -> str:
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("first try fails on purpose")
        return "second try"

    @task(retries=0, execution_timeout=timedelta(seconds=5))
    def too_slow() -> None:
        time.sleep(300)

    @task(executor_config={"winexec": {"principal": "alice@WINEXEC.TEST"}})
    def double_hop() -> dict[str, str]:
        """Run as alice; use her delegated TGT to get a service ticket for another service."""
        import gssapi

        creds = gssapi.Credentials(usage="initiate")
        target = gssapi.Name(SECOND_HOP, gssapi.NameType.hostbased_service)
        ctx = gssapi.SecurityContext(name=target, usage="initiate", creds=creds)
        token = ctx.step()
        assert token, "no AP-REQ"
        return {"client": str(creds.name), "service": SECOND_HOP, "user": os.environ.get("USERNAME", "?")}

    @task
    def sleeper() -> None:
        """Sleeps for ``dag_run.conf["sleep"]`` seconds (0 unless a test asks)."""
        time.sleep(float((get_current_context()["dag_run"].conf or {}).get("sleep", 0)))

    @task(retries=0, executor_config={"winexec": {"principal": "nobody@WINEXEC.TEST"}})
    def unknown_principal() -> None:
        """Never runs: there is no keytab for nobody, so the executor fails it and says why."""

    read_variable(hello())
    unknown_principal()
    sleeper()
    for i in range(10):
        parallel.override(task_id=f"parallel_{i}")(i)
    mapped.expand(x=[1, 2, 3])
    flaky()
    too_slow()
    double_hop()


winexec_e2e()

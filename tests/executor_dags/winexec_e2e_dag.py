"""DAG for the executor's launcher and end-to-end tests (runs on the stand-in's hosts)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import PokeReturnValue, Variable, dag, get_current_context, task

#: the second principal's tasks prove the double hop by getting a ticket for this service
SECOND_HOP = os.environ.get("WINEXEC_E2E_SECOND_HOP", "HTTP@win02.winexec.test")


#: ``reschedule_sensor`` is done on this poke; every poke is a new task process (maybe another host)
POKES = 3


def _third_poke(ti: object, task_reschedule_count: int = 0) -> PokeReturnValue:
    """Airflow counts the reschedules of this try; no state of our own between pokes."""
    poke = task_reschedule_count + 1
    done = poke >= POKES
    return PokeReturnValue(done, {"pokes": poke, "try_number": getattr(ti, "try_number", None)})


@dag(schedule=None, catchup=False, max_active_tasks=16)
def winexec_e2e() -> None:
    @task
    def hello() -> dict[str, object]:
        return {
            "user": os.environ.get("USERNAME", "?"),
            "host": os.environ.get("COMPUTERNAME", "?"),
            "fork": hasattr(os, "fork"),
            "unbuffered": os.environ.get("PYTHONUNBUFFERED"),  # the stand-in sets none (facts §2.3)
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
        """Never runs: no [winexec] grants rule gives nobody this DAG, so the executor fails it
        before any launch and says why."""

    read_variable(hello())
    unknown_principal()
    sleeper()
    for i in range(10):
        parallel.override(task_id=f"parallel_{i}")(i)
    mapped.expand(x=[1, 2, 3])
    flaky()
    too_slow()
    double_hop()
    # the same try comes back to the executor: each poke, and the resume after the trigger fired
    PythonSensor(
        task_id="reschedule_sensor",
        mode="reschedule",
        poke_interval=3,
        timeout=300,
        python_callable=_third_poke,
    )
    DateTimeSensorAsync(  # the trigger waits in the triggerer; the resume runs on a host again
        task_id="deferrable_sensor",
        target_time="{{ (ti.start_date + macros.timedelta(seconds=5)).isoformat() }}",
    )


winexec_e2e()

"""A small Windows ETL, as a Windows data shop would write it; every task runs on a Windows host.

Tasks run as the pool's default principal, except ``publish_to_share``, whose ``run_as_user``
maps it to ``alice``: winexec opens her shell with her delegated ticket, and the task uses that
ticket to authenticate to a second machine (the double hop a file share or SQL Server with
Windows authentication needs). ``transform`` fails once and succeeds on its retry;
``nightly_ssis_package`` hangs and is stopped at its ``execution_timeout``; ``report`` runs
whatever happened upstream, so the run itself succeeds. Two sensors wait without holding a slot:
``wait_for_export_file`` (reschedule mode: every poke is a short task run on a host, done on the
second) and ``wait_for_batch_window`` (deferrable: the wait itself runs in Airflow's triggerer,
then the task resumes on a host).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import Variable, dag, get_current_context, task

#: The file server ``publish_to_share`` authenticates to (Windows maps cifs/ to host/).
SHARE = os.environ.get("WINEXEC_DEMO_SHARE", "host@win01.winexec.test")


def _where() -> dict[str, str]:
    return {
        "host": os.environ.get("COMPUTERNAME", "?"),
        "user": f"{os.environ.get('USERDOMAIN', '?')}\\{os.environ.get('USERNAME', '?')}",
    }


def _export_file_landed(task_reschedule_count: int = 0) -> bool:
    """Stands in for ``os.path.exists(r"\\\\filer\\exports\\today.csv")``: there on the second poke.

    Each poke is a new process, possibly on another host: Airflow's count of this try's
    reschedules is the state, nothing kept on a host.
    """
    return task_reschedule_count >= 1


@dag(schedule=None, catchup=False, tags=["winexec", "demo"])
def winexec_demo() -> None:
    @task
    def regions() -> list[str]:
        return str(Variable.get("winexec_demo_regions", default="emea,amer,apac")).split(",")

    @task
    def extract(region: str) -> dict[str, object]:
        time.sleep(2)  # stands in for an SSIS package or a bcp export
        return {"region": region, "rows": 1000 * len(region), **_where()}

    @task(retries=1, retry_delay=timedelta(seconds=2))
    def transform(batches: list[dict[str, object]]) -> int:
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("the staging share was busy (fails on purpose once; the retry succeeds)")
        return sum(int(str(b["rows"])) for b in batches)

    @task(run_as_user="alice")
    def publish_to_share(rows: int) -> dict[str, object]:
        """As alice, with her delegated TGT: get a service ticket for the share's machine."""
        import gssapi

        creds = gssapi.Credentials(usage="initiate")  # the delegated ticket in this logon's cache
        ctx = gssapi.SecurityContext(
            name=gssapi.Name(SHARE, gssapi.NameType.hostbased_service), usage="initiate", creds=creds
        )
        assert ctx.step(), "no AP-REQ for the share"
        return {"rows": rows, "authenticated_as": str(creds.name), "to": SHARE, **_where()}

    @task(execution_timeout=timedelta(seconds=5), retries=0)
    def nightly_ssis_package() -> None:
        time.sleep(600)  # hangs; winexec stops it (and everything it started) after 5 s

    @task(trigger_rule="all_done")
    def report() -> str:
        return f"report written on {_where()['host']}"

    export_file = PythonSensor(
        task_id="wait_for_export_file",
        mode="reschedule",  # frees the host's slot between pokes
        poke_interval=3,
        timeout=300,
        python_callable=_export_file_landed,
    )
    batch_window = DateTimeSensorAsync(
        task_id="wait_for_batch_window",
        target_time="{{ (ti.start_date + macros.timedelta(seconds=5)).isoformat() }}",
    )

    published = publish_to_share(transform(extract.expand(region=regions())))  # type: ignore[arg-type]
    [published, nightly_ssis_package(), export_file, batch_window] >> report()


winexec_demo()

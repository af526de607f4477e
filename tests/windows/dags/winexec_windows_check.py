"""The real-host suite's DAG: copy it into the host's DAGs folder too (docs/windows-host-setup.md).

One task, run on the Windows host as the suite's principal with its TGT forwarded: it reads a file
on another server's share (the second hop, which only a delegated ticket reaches) and reports who
it ran as and what the host's klist shows.
"""

from __future__ import annotations

import datetime

from airflow.sdk import dag, task


@dag(
    dag_id="winexec_windows_check",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    params={"second_hop": ""},
)
def winexec_windows_check() -> None:
    @task
    def second_hop(params: dict | None = None) -> dict:
        import getpass
        import os
        import subprocess
        import sys

        path = (params or {})["second_hop"]
        with open(path, "rb") as f:  # SMB to another server: Kerberos with the forwarded TGT
            data = f.read(4096)
        klist = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "klist.exe")
        tickets = subprocess.run([klist], capture_output=True, text=True, timeout=30).stdout
        return {
            "user": getpass.getuser(),
            "python": sys.version.split()[0],
            "platform": sys.platform,
            "bytes_read": len(data),
            "forwarded": "forwarded" in tickets,
        }

    second_hop()


winexec_windows_check()

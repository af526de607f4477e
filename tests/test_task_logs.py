"""Task logs in the Airflow API while the task runs and after, with the hosts' log folder NOT shared.

The hosts write task logs to their own folder; the api-server's folder stays empty of them. While
the task runs, Airflow's log view calls ``get_task_log`` in the api-server, which reads the file
from the host over WinRM as the task's principal, page by page; once the task is done, the
scheduler has copied the log into its own folder, which the api-server reads.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from winexec.testing.world import World, windows_world

DAGS = Path(__file__).resolve().parent / "log_dags"
DAG_ID = "winexec_logs"
LINES = 3000  # ~620 kB: more than one 512 KiB page


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("logs")
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "winexec_log_dag.py", dags)
    host_logs = tmp / "host-logs"
    with windows_world(
        tmp,
        dags,
        hosts=1,
        slots=2,
        principals=("airflow",),
        host_env={"AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(host_logs)},
        winexec={"heartbeat_interval": "1", "operation_timeout": "5", "read_timeout": "15"},
    ) as w:
        yield w


def _log(world: World, run_id: str) -> list[str]:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/chatty/logs/1"
    content = world.stack.api("GET", path)["content"]
    return [str(m.get("event", "")) if isinstance(m, dict) else str(m) for m in content]


def _wait_log(world: World, run_id: str, text: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    events: list[str] = []
    while time.monotonic() < deadline:
        events = _log(world, run_id)
        if any(text in e for e in events):
            return events
        time.sleep(1)
    raise AssertionError(f"{text!r} not in the log after {timeout:g} s: {events[-20:]}")


def test_log_of_a_running_and_a_finished_task(world: World) -> None:
    stack = world.stack
    run_id = stack.trigger(DAG_ID, conf={"lines": LINES, "sleep": 25})
    stack.wait_for_ti(DAG_ID, run_id, "chatty", {"running"}, timeout=180)
    events = _wait_log(world, run_id, "winexec-log-test: halfway", timeout=60)
    assert stack.task_instance(DAG_ID, run_id, "chatty")["state"] == "running"
    # read from the host, not from a file the api-server can see
    assert not list(stack.log_folder.rglob("*attempt=1*")), list(stack.log_folder.rglob("*"))
    assert any(e.startswith("winexec: win01.") for e in events), events[:10]
    numbered = [m.group(1) for e in events if (m := re.match(r"line-(\d{5}) x{200}$", e))]
    assert numbered == [f"{i:05d}" for i in range(LINES)]  # every line whole, across pages
    assert not any("winexec-log-test: done" in e for e in events)

    assert stack.wait_for_run(DAG_ID, run_id, timeout=120) == "success"
    events = _wait_log(world, run_id, "winexec-log-test: done", timeout=30)
    numbered = [m.group(1) for e in events if (m := re.match(r"line-(\d{5}) x{200}$", e))]
    assert len(numbered) == LINES
    assert list(stack.log_folder.rglob("*attempt=1*"))  # copied next to the api-server after the end

"""The demo (the README's first command) end to end, as a user runs it: ``python -m winexec.demo``.

One run with ``--dags-folder`` holding the example DAG and a user's own DAG, so both the
example's promises (spread over hosts, two principals, a double hop, a retry, a timeout stopped)
and "run any DAGs" are checked; ``--json`` is what the assertions read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from winexec import demo

HERE = Path(__file__).resolve().parent


def test_demo_runs_the_example_and_a_users_dag(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(demo.EXAMPLE, dags)
    shutil.copy(HERE / "demo_dags" / "hello_windows.py", dags)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "winexec.demo",
            "--json",
            "--dags-folder",
            str(dags),
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {r["dag_id"]: r["state"] for r in out["runs"]} == {
        "hello_windows": "success",
        "winexec_demo": "success",
    }
    tasks = {(t["dag_id"], t["task_id"], t["map_index"]): t for t in out["tasks"]}
    for t in tasks.values():
        assert set(t) >= {"dag_id", "task_id", "map_index", "try_number", "state", "host", "principal"}
        assert t["host"].startswith("WIN0"), t  # every task ran on a stand-in host, per its own log
    demo_tasks = {k[1:]: t for k, t in tasks.items() if k[0] == "winexec_demo"}
    assert {k[1] for k in demo_tasks if k[0] == "extract"} == {0, 1, 2}
    assert len({t["host"] for t in demo_tasks.values()}) >= 2  # spread over the pool
    assert demo_tasks[("transform", -1)]["try_number"] == 2  # failed once, succeeded on retry
    assert demo_tasks[("transform", -1)]["state"] == "success"
    assert demo_tasks[("nightly_ssis_package", -1)]["state"] == "failed"  # stopped at its timeout
    assert "as the DAG intends" in demo_tasks[("nightly_ssis_package", -1)]["note"]  # not winexec failing
    assert demo_tasks[("report", -1)]["state"] == "success"
    assert demo_tasks[("publish_to_share", -1)]["principal"] == "alice@WINEXEC.TEST"
    assert demo_tasks[("regions", -1)]["principal"] == "airflow@WINEXEC.TEST"
    assert tasks[("hello_windows", "hello", -1)]["state"] == "success"


def test_demo_without_a_folder_uses_the_example(tmp_path: Path) -> None:
    dags = demo._dags(tmp_path, None)
    assert [p.name for p in dags.iterdir()] == ["winexec_demo.py"]
    assert demo._dags(tmp_path, HERE / "demo_dags") == (HERE / "demo_dags").resolve()


def test_table_lists_every_row() -> None:
    rows = [
        {
            "dag_id": "d",
            "task_id": "t",
            "map_index": 2,
            "try_number": 1,
            "state": "success",
            "host": "WIN01",
            "principal": "alice@R",
            "seconds": 1.25,
            "note": "stopped at its 5 s execution_timeout",
        }
    ]
    text = demo.table(rows)
    assert "t[2]" in text and "WIN01" in text and "alice@R" in text and "1.2" in text
    assert text.splitlines()[0].split()[-1] == "note" and text.endswith(
        "stopped at its 5 s execution_timeout"
    )


def test_a_note_says_why_a_row_looks_as_it_does() -> None:
    def ti(task_id: str, state: str | None, try_number: int = 1) -> dict[str, object]:
        return {"task_id": task_id, "state": state, "try_number": try_number}

    timed_out = ["winexec: running on WIN01 as X\\y", "Task timed out after 5 s", "done"]
    assert demo.note(demo.DAG_ID, ti("nightly_ssis_package", "failed"), []).endswith("as the DAG intends")
    assert demo.note("mine", ti("nightly_ssis_package", "failed"), timed_out) == "Task timed out after 5 s"
    assert demo.note("mine", ti("t", "success", 2), []) == "succeeded on try 2"
    assert demo.note("mine", ti("t", "success"), []) == ""
    assert demo.note("mine", ti("t", "running"), []) == "running when the demo stopped waiting"
    assert demo.note("mine", ti("t", None, 0), []) == "not started when the demo stopped waiting"


def _demo(dags: Path, workdir: Path, *extra: str) -> subprocess.Popen[str]:
    """The demo as a user starts it, its lines as they come; its stderr in ``<workdir>.err``."""
    argv = [sys.executable, "-m", "winexec.demo", "--dags-folder", str(dags), "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(f"{workdir}.err", "w") as err:  # the child has its own copy of the file
        return subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=err, text=True, env=env)


def _never_ends(tmp_path: Path) -> Path:
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(HERE / "demo_dags" / "never_ends.py", dags)
    return dags


def _left_behind(workdir: Path) -> list[str]:
    """Processes (not this one) that belong to the demo in ``workdir``: its command line or its
    environment names the folder (Airflow's processes, the KDC, the hosts' agents)."""
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid == os.getpid():
                continue
            text = " ".join(p.info["cmdline"] or []) + " " + " ".join(p.environ().values())
        except psutil.Error:
            continue
        if str(workdir) in text:
            left.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:200]}")
    return left


def test_a_run_that_does_not_finish_is_reported_with_what_it_has(tmp_path: Path) -> None:
    proc = _demo(_never_ends(tmp_path), tmp_path / "w", "--timeout", "20")
    out, _ = proc.communicate(timeout=600)
    err = (tmp_path / "w.err").read_text()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert "DAG run never_ends: not finished after 20 s; its logs: " in out, out
    row = next(ln for ln in out.splitlines() if ln.startswith("never_ends "))
    assert row.split()[1:3] == ["sleeps", "running"], row
    assert not _left_behind(tmp_path / "w")


def test_sigterm_stops_everything_the_demo_started(tmp_path: Path) -> None:
    proc = _demo(_never_ends(tmp_path), tmp_path / "w")
    assert proc.stdout is not None
    for line in proc.stdout:  # Airflow, the KDC and the hosts are up and the run is triggered
        if "triggered never_ends" in line:
            break
    time.sleep(5)  # its task on its way to a host
    assert len(_left_behind(tmp_path / "w")) >= 3  # api-server, scheduler, dag-processor at least
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while (left := _left_behind(tmp_path / "w")) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, left

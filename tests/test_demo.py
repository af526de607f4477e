"""The demo (the README's first command) end to end, as a user runs it: ``python -m winexec.demo``.

One run with ``--dags-folder`` holding the example DAG and a user's own DAG, so both the
example's promises (spread over hosts, two principals, a double hop, a retry, a timeout stopped)
and "run any DAGs" are checked; ``--json`` is what the assertions read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
        }
    ]
    text = demo.table(rows)
    assert "t[2]" in text and "WIN01" in text and "alice@R" in text and "1.2" in text

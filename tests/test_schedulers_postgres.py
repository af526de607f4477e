"""Two schedulers with winexec on one host pool, on PostgreSQL (Airflow's answer to outgrowing one
scheduler; SQLite allows only one).

The api-server, dag-processor and both schedulers are real Airflow, the database is Debian's
PostgreSQL on loopback, the five hosts are the stand-in under its strict Connect rules. The
task bodies are :mod:`winexec.testing.lite_agent`'s few lines, as in the soak: 90 Task SDK
runs (two interpreters importing ``airflow.sdk`` each) do not fit on two cores. The agent still
tells the Execution API that each try started and how it ended, as the Task SDK would, so the
schedulers see real task instances run. Every start of every try is counted on the hosts.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from winexec.sim.accounts import share
from winexec.testing.airflow_stack import AirflowStack
from winexec.testing.postgres import running_postgres
from winexec.testing.world import World, peak, windows_world

from .fault_kit import host_python, ledger_starts

DAGS = Path(__file__).parent / "executor_dags"
HOSTS, SLOTS = 5, 6
#: winexec_many's tasks (its DAG file says the same): about three minutes on two cores
MANY = 200


@dataclass
class HA:
    world: World
    ledger: Path  # one line per start of a try, written by the task on its host
    release: Path  # winexec_hold's tasks end once this exists

    @property
    def stack(self) -> AirflowStack:
        return self.world.stack

    def peaks(self, ids: set[str]) -> dict[str, int]:
        """Most of these tasks ever running at once on each host, from the tasks' own ledger lines
        (each runs inside its admitted slot, so more than slots at once is over-admission)."""
        runs: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        for line in self.ledger.read_text().splitlines():
            e = json.loads(line)
            if e["ti"] in ids:
                runs[e["host"]].append((e["time"], e["time"] + e["seconds"]))
        return {host: peak(intervals) for host, intervals in runs.items()}

    def starts(self, ids: set[str]) -> dict[str, int]:
        """How often each of these task instances started (any try), counted on the hosts."""
        counts: collections.Counter[str] = collections.Counter()
        for (ti, _), n in ledger_starts(self.ledger, "ti").items():
            if ti in ids:
                counts[ti] += n
        return dict(counts)


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HA]:
    tmp = tmp_path_factory.mktemp("ha")
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "winexec_many_dag.py", dags)
    share(tmp, writable=True)
    ledger = tmp / "ledger.jsonl"
    host_home = tmp / "lite-home"
    host_home.mkdir()
    lite = host_python(
        tmp / "lite-python",
        {
            "AIRFLOW_HOME": str(host_home),
            "WINEXEC_FAULTS_LEDGER": str(ledger),
            "WINEXEC_LITE_API": "1",
            "WINEXEC_LITE_SECONDS": "0.2-1.0",
            "WINEXEC_LITE_SECONDS__winexec_hold": "600",  # until the test releases them
            "WINEXEC_LITE_RELEASE": str(tmp / "release-hold"),
        },
        lite=True,
    )
    with (
        running_postgres() as url,
        windows_world(
            tmp,
            dags,
            hosts=HOSTS,
            slots=SLOTS,
            principals=("airflow",),
            winexec={
                "python": str(lite),
                "heartbeat_interval": "1",
                "missed_heartbeats": "20",
                "io_workers": "16",
                "connect_timeout": "5",
                "operation_timeout": "5",
                "read_timeout": "15",
            },
            config={
                # every running task asks the api-server: more connections than the default 5 + 10
                "database": {
                    "sql_alchemy_conn": url,
                    "sql_alchemy_pool_size": "20",
                    "sql_alchemy_max_overflow": "30",
                },
                "core": {"parallelism": "32", "max_active_tasks_per_dag": "64"},
                "scheduler": {
                    # a dead scheduler's tasks are looked at within a minute, not five; its
                    # health threshold stays Airflow's 30 s: a busy scheduler on two shared cores
                    # can miss 10 s of heartbeats and be declared dead while alive
                    "orphaned_tasks_check_interval": "5",
                    "max_tis_per_query": "8",  # each loop queues a few: both schedulers get tasks
                    "task_queued_timeout": "600",
                },
            },
        ) as w,
    ):
        w.stack._spawn("scheduler2", "scheduler")
        _wait_started(w.stack, "scheduler2")
        yield HA(w, ledger, tmp / "release-hold")


def _wait_started(stack: AirflowStack, name: str, timeout: float = 120) -> None:
    """Until the scheduler ``name``'s executor has started (it logs its hosts)."""
    deadline = time.monotonic() + timeout
    while "winexec: 5 host(s)" not in stack.log_tail(name, 10_000_000):
        assert stack.procs[name].poll() is None and time.monotonic() < deadline, stack.log_tail(name)
        time.sleep(0.5)


def _task_instances(stack: AirflowStack, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = stack.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100, "offset": len(out)}
        )["task_instances"]
        out += page
        if len(page) < 100:
            return out


def _launches(stack: AirflowStack, name: str, dag_id: str) -> int:
    """Launches of ``dag_id``'s tasks the scheduler ``name`` made (its log says each once)."""
    lines = stack.log_tail(name, 50_000_000).splitlines()
    return sum(1 for line in lines if f"dag_id='{dag_id}'" in line and " launched on " in line)


@pytest.mark.timeout(900)
def test_many_tasks_through_two_schedulers_each_run_once_and_no_host_over_filled(ha: HA) -> None:
    stack, dag_id = ha.stack, "winexec_many"
    run_id = stack.trigger(dag_id)
    assert stack.wait_for_run(dag_id, run_id, timeout=800) == "success", stack.log_tail("scheduler", 5000)
    tis = _task_instances(stack, dag_id, run_id)
    assert len(tis) == MANY and {t["state"] for t in tis} == {"success"}
    ids = {t["id"] for t in tis}
    assert ha.starts(ids) == {ti: 1 for ti in ids}  # each once, none lost
    assert max(ha.peaks(ids).values()) <= SLOTS, ha.peaks(ids)  # no host ran more at once than its slots
    by = {name: _launches(stack, name, dag_id) for name in ("scheduler", "scheduler2")}
    assert sum(by.values()) >= MANY and all(by.values()), by  # both schedulers placed tasks


@pytest.mark.timeout(600)
def test_a_scheduler_killed_under_30_running_tasks_is_adopted_by_the_other(ha: HA) -> None:
    """``kill -9`` the scheduler running all 30: the other adopts each (Airflow's
    ``adopt_or_reset_orphaned_tasks`` -> ``try_adopt_task_instances``) and each finishes once."""
    stack, dag_id = ha.stack, "winexec_hold"
    second = stack.procs["scheduler2"]
    os.killpg(second.pid, signal.SIGTERM)  # for now one scheduler runs them all
    second.wait(90)
    run_id = stack.trigger(dag_id)
    deadline = time.monotonic() + 240
    while True:
        tis = _task_instances(stack, dag_id, run_id)
        ids = {t["id"] for t in tis}
        started = ha.starts(ids)
        if len(ids) == 30 and len(started) == 30 and {t["state"] for t in tis} == {"running"}:
            break
        assert time.monotonic() < deadline, (collections.Counter(t["state"] for t in tis), len(started))
        time.sleep(1)
    stack._spawn("scheduler2", "scheduler")
    _wait_started(stack, "scheduler2")
    first = stack.procs["scheduler"]
    os.killpg(first.pid, signal.SIGKILL)  # no end(), no detach: its shells stay connected to it
    first.wait(30)
    deadline = time.monotonic() + 300  # Airflow's health threshold, then its orphan check
    while sum(adopted := _adopted(stack)) < 30:
        assert time.monotonic() < deadline, adopted or stack.log_tail("scheduler2", 5000)
        time.sleep(2)
    assert sum(adopted) == 30, adopted  # each once, none reset
    ha.release.touch()  # the tasks may end now: each was adopted while it ran
    assert stack.wait_for_run(dag_id, run_id, timeout=300) == "success", stack.log_tail("scheduler2", 5000)
    assert ha.starts(ids) == {ti: 1 for ti in ids}  # adopted, not reset and started again


def _adopted(stack: AirflowStack) -> list[int]:
    """How many orphaned tasks the second scheduler said it adopted, each time it adopted any."""
    log = stack.log_tail("scheduler2", 50_000_000)
    return [int(n) for n in re.findall(r"winexec: adopted (\d+) of \d+ orphaned", log)]

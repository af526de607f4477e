"""The fault suite at scale: a scheduler killed under 50 running tasks, and 500 tasks through 5
hosts under random faults.

The executor, pypsrp, the KDC and the stand-in hosts are the real ones, and so is the agent the
executor talks to; only the task inside it is :mod:`winexec.testing.lite_agent`'s few lines of
Python rather than a Task SDK run (two interpreters importing ``airflow.sdk``, several CPU-seconds
each: 500 of them do not fit in a test on two cores). The task writes one ledger line per start,
so each test counts how many times every try really started on any host.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from winexec.config import HostSpec, Settings
from winexec.sim import SimCluster
from winexec.sim.accounts import share
from winexec.sim.kdc import Realm
from winexec.sim.testing import running_cluster
from winexec.testing.lite_agent import make_workload

from .fault_kit import (
    agents_running,
    drive,
    finished,
    host_python,
    ledger_starts,
    make_executor,
    nothing_left_behind,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
HOSTS = 5
SLOTS = 4


@dataclass
class Scale:
    realm: Realm
    cluster: SimCluster
    ledger: Path
    settings: Settings
    long_python: Path  # its tasks run 25-30 s

    @property
    def keytabs(self) -> dict[str, Path]:
        p = self.realm.principal("airflow")
        return {p: self.realm.keytab_path(p)}

    def starts(self) -> collections.Counter[tuple[str, int]]:
        """How often each (task instance, try) really started, from the tasks' own ledger."""
        return ledger_starts(self.ledger, "ti")

    def agents_running(self) -> list[dict[str, Any]]:
        return agents_running(self.cluster)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    tmp = tmp_path_factory.mktemp("scale")
    share(tmp, writable=True)  # the hosts' ledger: a folder all principals use
    with running_cluster(tmp / "realm", HOSTS, ("airflow",), windows_like=True) as (realm, cluster):
        ledger = tmp / "ledger.jsonl"
        env = {"WINEXEC_FAULTS_LEDGER": str(ledger)}
        short = host_python(tmp / "python", {**env, "WINEXEC_LITE_SECONDS": "0.3-1.5"}, lite=True)
        long = host_python(tmp / "python-long", {**env, "WINEXEC_LITE_SECONDS": "25-30"}, lite=True)
        settings = Settings(
            hosts=tuple(HostSpec(h.name, "http", h.http_port, SLOTS, h.address) for h in cluster.hosts),
            default_principal=realm.principal("airflow"),
            python=str(short),
            connect_timeout=3,
            operation_timeout=2,
            read_timeout=6,
            poll_timeout=1,
            io_workers=8,
            heartbeat_interval=1.0,
            # 20 s without a heartbeat is a hung task. Every task here is polled on its own, by 8
            # I/O workers; while faults keep connections failing (each up to read_timeout), a
            # poll can wait its turn long enough that 12 s cost tasks on hosts that were only
            # blipping (seen in CI under load: no fault had been destructive).
            missed_heartbeats=20,
            start_timeout=120.0,
            keepalive_timeout=60.0,
            execution_timeout_grace=2.0,
            launch_attempts=8,
            launch_backoff=0.3,
            launch_backoff_max=2.0,
            host_failure_threshold=2,
            host_cooldown=3.0,
            host_refresh_interval=3600.0,
        )
        yield Scale(realm, cluster, ledger, settings, long)


@pytest.fixture
def s(scale: Scale, caplog: pytest.LogCaptureFixture) -> Iterator[Scale]:
    """Afterwards: nothing runs on the hosts, the executor's threads and objects are back."""
    with nothing_left_behind(scale.cluster, caplog):
        yield scale


def _host_of(info: Any) -> str:
    return str(info).partition("|")[0]


def _orm_ti(w: Any, external_executor_id: str) -> SimpleNamespace:
    """What the scheduler hands ``try_adopt_task_instances`` for a workload's task instance."""
    return SimpleNamespace(
        key=w.ti.key,
        external_executor_id=external_executor_id,
        queue="default",
        pool="default_pool",
        executor_config=None,
    )


def _run_scheduler_until_killed(
    s: Scale, tmp_path: Path, settings: Settings, wls: list[Any], until: Callable[[Path], bool]
) -> None:
    """Run a scheduler (``tests.fault_scheduler``) in its own process on ``wls`` until
    ``until(events_file)``, then SIGKILL it: no ``end()``, no disconnect."""
    spec, events_file = tmp_path / "spec.pickle", tmp_path / "events.jsonl"
    spec.write_bytes(pickle.dumps({"settings": settings, "keytabs": s.keytabs, "workloads": wls}))
    log_file = tmp_path / "scheduler.log"
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_scheduler", str(spec), str(events_file)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            assert proc.poll() is None, log_file.read_text()[-3000:]
            return until(events_file)

        try:
            wait_for(ready, 180, lambda: f"started: {s.starts()}")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


# -- scheduler killed ------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_scheduler_killed_during_50_running_tasks_and_restarted(s: Scale, tmp_path: Path) -> None:
    """SIGKILL (no ``end()``, no disconnect) with 50 tasks running; the next scheduler adopts all."""
    hosts = tuple(replace(h, slots=10) for h in s.settings.hosts)  # room for all 50 at once
    settings = replace(s.settings, python=str(s.long_python), hosts=hosts)
    wls = [make_workload("winexec_restart", f"t{i:02d}") for i in range(50)]
    ids = {str(w.ti.id) for w in wls}
    running: dict[str, str] = {}

    def all_running(events_file: Path) -> bool:
        if events_file.exists():
            for line in events_file.read_text().splitlines():
                e = json.loads(line)
                if e["state"] == "running":
                    running[e["task_id"]] = e["info"]
        started = sum(1 for (ti, _), n in s.starts().items() if ti in ids)
        return len(running) == 50 and started == 50

    _run_scheduler_until_killed(s, tmp_path, settings, wls, all_running)
    assert len(s.agents_running()) >= 50  # the kill took the scheduler only

    ex = make_executor(settings, s.keytabs)
    try:
        tis = [_orm_ti(w, running[w.ti.task_id]) for w in wls]
        # a task whose agent is gone: handed back for the scheduler to reset
        gone_wl = make_workload("winexec_restart", "gone")
        gone = _orm_ti(gone_wl, f"{s.cluster.hosts[0].name}|{uuid.uuid4().hex}")
        assert ex.try_adopt_task_instances([*tis, gone]) == [gone]  # all 50 adopted, only it back
        keys = [w.ti.key for w in wls]
        events = drive(ex, finished(keys), timeout=180)
        assert {k: events[k][0] for k in keys} == {k: "success" for k in keys}
        for k in keys:  # finished where it started
            assert _host_of(events[k][1]) == _host_of(running[k.task_id])
        starts = s.starts()
        assert [starts[(str(w.ti.id), 1)] for w in wls] == [1] * 50  # none started twice
        assert not ex.records and not ex.running
    finally:
        ex.terminate()


@pytest.mark.timeout(600)
def test_scheduler_killed_before_it_saved_where_its_runs_went_starts_none_twice(
    s: Scale, tmp_path: Path
) -> None:
    """SIGKILL after the launches but before the scheduler saved ``<host>|<run_id>``: the TIs
    keep only the id Airflow pre-assigned at queuing (``pre_assigns_external_executor_id``), and
    the next scheduler finds each run by it on whichever host it went to, so none starts again."""
    settings = replace(s.settings, python=str(s.long_python))
    wls = [make_workload("winexec_preassigned", f"t{i:02d}") for i in range(12)]
    for w in wls:
        w.ti.external_executor_id = uuid.uuid4().hex  # what the scheduler saved with QUEUED
    ids = {str(w.ti.id) for w in wls}

    def all_started(_: Path) -> bool:
        return sum(1 for (ti, _), n in s.starts().items() if ti in ids) == len(wls)

    _run_scheduler_until_killed(s, tmp_path, settings, wls, all_started)

    ex = make_executor(settings, s.keytabs)
    try:
        tis = [_orm_ti(w, str(w.ti.external_executor_id)) for w in wls]
        never = make_workload("winexec_preassigned", "never")  # queued, never launched anywhere
        lost = _orm_ti(never, uuid.uuid4().hex)
        assert ex.try_adopt_task_instances([*tis, lost]) == [lost]
        keys = [w.ti.key for w in wls]
        events = drive(ex, finished(keys), timeout=180)
        assert {k: events[k][0] for k in keys} == {k: "success" for k in keys}
        starts = s.starts()
        assert [starts[(str(w.ti.id), 1)] for w in wls] == [1] * len(wls)  # none started twice
        assert not ex.records and not ex.running
    finally:
        ex.terminate()


# -- the soak --------------------------------------------------------------------------------------
class FaultInjector:
    """Random faults on random hosts (and the KDC), each undone after its time; seeded.

    Transient faults (refused connections, slow network, a dropped Receive, a full WinRM quota,
    a skewed clock, the KDC away) must cost no task. Destructive ones (a reboot, processes frozen
    beyond the heartbeat timeout) may fail the tasks then running on that host, with the reason.

    A host gets its next fault only once the last has been undone and it has had time to
    recover: stacked back to back, transient faults make a host unreachable for longer than the
    heartbeat timeout, which is an outage, and failing its tasks is then what the executor must do.
    """

    DURATION = {"refuse": 2.0, "stall": 3.0, "drop": 2.0, "quota": 3.0, "skew": 3.0, "kdc": 2.0}
    RECOVERY = 2.0

    TRANSIENT = ("refuse", "stall", "drop", "quota", "skew", "kdc")
    DESTRUCTIVE = {"reboot": 2, "freeze": 1}  # at most this many of each

    def __init__(self, s: Scale, seed: int, hung_after: float) -> None:
        self.s, self.rnd, self.hung_after = s, random.Random(seed), hung_after
        self.undo: list[tuple[float, Callable[[], None]]] = []
        self.log: list[tuple[float, str, str]] = []  # (when, kind, host)
        self.destroyed: set[str] = set()  # hosts hit by a destructive fault
        self.clear_at: dict[str, float] = {}  # host (or "kdc") -> when it may take the next fault
        self.next_at = time.monotonic() + 2.0
        self.active = True

    def step(self, _: dict[Any, Any]) -> None:
        now = time.monotonic()
        for at, fn in [u for u in self.undo if u[0] <= now]:
            self.undo.remove((at, fn))
            fn()
        if not self.active or now < self.next_at:
            return
        self.next_at = now + self.rnd.uniform(0.8, 2.0)
        used = collections.Counter(kind for _, kind, _ in self.log)
        kinds = list(self.TRANSIENT) + [k for k, cap in self.DESTRUCTIVE.items() if used[k] < cap]
        kind = self.rnd.choice(kinds)
        host = self.rnd.choice(self.s.cluster.hosts)
        target = "kdc" if kind == "kdc" else host.name
        if self.clear_at.get(target, 0.0) > now:
            return
        self.clear_at[target] = now + self.DURATION.get(kind, 0.0) + self.RECOVERY
        f = host.faults
        if kind == "refuse":
            f.refuse(True)
            self.undo.append((now + 2.0, lambda: f.refuse(False)))
        elif kind == "stall":
            f.stall(1.5)
            self.undo.append((now + 3.0, lambda: f.stall(0)))
        elif kind == "drop":
            f.drop_next_receive(2)
        elif kind == "quota":
            host.quotas.MaxShellsPerUser = 0
            self.undo.append((now + 3.0, lambda: setattr(host.quotas, "MaxShellsPerUser", 30)))
        elif kind == "skew":
            f.clock_skew(900)
            self.undo.append((now + 3.0, lambda: f.clock_skew(0)))
        elif kind == "kdc":
            if not self.s.realm.kdc_running:
                return
            self.s.realm.stop_kdc()
            self.undo.append((now + 2.0, self.s.realm.start_kdc))
        elif kind == "reboot":
            self.destroyed.add(host.name)
            f.reboot()
        elif kind == "freeze":
            self.destroyed.add(host.name)
            f.freeze_processes()
            self.undo.append((now + self.hung_after + 3.0, f.thaw_processes))
        self.log.append((now, kind, host.name if kind != "kdc" else "kdc"))

    def on(self, reason: str) -> list[tuple[float, str]]:
        """The faults injected on the host (or the KDC) a failure names, for its message."""
        start = self.log[0][0] if self.log else 0.0
        return [(round(t - start, 1), kind) for t, kind, h in self.log if h in reason or h == "kdc"]

    def stop(self) -> None:
        """No new faults; undo the pending ones now."""
        self.active = False
        for _, fn in sorted(self.undo, key=lambda u: u[0]):
            fn()
        self.undo.clear()


@pytest.mark.timeout(900)
def test_500_tasks_through_5_hosts_with_random_faults(s: Scale) -> None:
    seed = int(os.environ.get("WINEXEC_SOAK_SEED") or time.time())
    print(f"soak seed {seed} (WINEXEC_SOAK_SEED={seed} repeats this run's faults)")
    faults = FaultInjector(s, seed, s.settings.hung_after)
    wls = [make_workload("winexec_soak", f"t{i:03d}") for i in range(500)]
    keys = [w.ti.key for w in wls]
    ex = make_executor(s.settings, s.keytabs)
    try:
        for w in wls:
            ex.queued_tasks[w.ti.key] = w
        try:
            events = drive(ex, finished(keys), timeout=600, step=faults.step)
        finally:
            faults.stop()
        # stops and log copies done; agents of ambiguous launches found and stopped
        drive(ex, lambda ev: not ex.records and not ex.describe()["strays"], timeout=120)
    finally:
        ex.terminate()
    print(f"faults injected: {collections.Counter(k for _, k, _ in faults.log)}")
    print(f"outcomes: {collections.Counter(events[k][0] for k in keys)}")

    # none lost: every task has its outcome; none run twice: no try started more than once
    assert len(events) == 500 and all(events[k][0] in ("success", "failed") for k in keys)
    starts = s.starts()
    twice = {ti: n for ti, n in starts.items() if n > 1}
    assert not twice, twice
    by_id = {w.ti.key: str(w.ti.id) for w in wls}
    failed = {k: events[k][1] for k in keys if events[k][0] == "failed"}
    for k in keys:
        if k not in failed:
            assert starts[(by_id[k], 1)] == 1, (k, events[k])
    # every failure carries its reason, and the reason is a fault this run injected
    for k, reason in failed.items():
        host = next((h for h in faults.destroyed if h in str(reason)), None)
        if "no heartbeat from" in reason or "WinRM shell of this run is gone" in reason:
            hit = faults.on(reason)
            assert host is not None, f"{k}: {reason} on a host without a destructive fault: {hit}"
        elif "whether the task started there is unknown" in reason:  # the launch was ambiguous
            assert starts[(by_id[k], 1)] <= 1, (k, reason)
        elif "WinRM shell of this run vanished from" in reason:  # rebooted mid-launch
            assert host is not None, f"{k}: {reason} on a host without a destructive fault"
            assert starts[(by_id[k], 1)] <= 1, (k, reason)
        else:
            assert "could not start the task" in reason, f"{k}: unexpected failure: {reason}"
            assert starts[(by_id[k], 1)] == 0, (k, reason)
    assert len(failed) <= 0.15 * len(keys), f"{len(failed)} failed: {list(failed.values())[:10]}"

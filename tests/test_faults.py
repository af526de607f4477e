"""The fault suite: the real executor class against real ``winexec.sim`` hosts, a real MIT KDC, the
unmodified pypsrp client, the real agent and a real Airflow api-server (Execution API).

One realm, three hosts and one api-server serve the whole module. Each test builds its own
:class:`WindowsKerberosExecutor` (``start()`` with short timeouts), queues real ``ExecuteTask``
workloads (made the way the scheduler makes them), drives ``heartbeat()`` in a loop, injects a
fault and asserts the exact outcome:

* the final state of every task in the executor's event buffer, and the reason of a failure;
* how many times each try really started, from the ledger the DAG's task writes on its first
  line (``tests/fault_dags``) and from the agents' own run markers (each host's run folder): never two;
* nothing left running on the hosts, and the executor's threads back to their baseline.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from winexec import tickets
from winexec.config import HostSpec, Settings
from winexec.executor import WindowsKerberosExecutor
from winexec.sim import SimCluster
from winexec.sim.accounts import share
from winexec.sim.cluster import SimHost
from winexec.sim.kdc import Realm
from winexec.sim.testing import running_cluster
from winexec.testing.airflow_stack import AirflowStack
from winexec.tickets import TicketStore

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

DAG_ID = "winexec_faults"
TASK_ID = "work"
DAGS = Path(__file__).resolve().parent / "fault_dags"
HOSTS = 3
SLOTS = 2


@dataclass
class World:
    realm: Realm
    cluster: SimCluster
    stack: AirflowStack
    python: Path
    ledger: Path
    settings: Settings
    made: list[WindowsKerberosExecutor] = field(default_factory=list)

    # -- hosts -------------------------------------------------------------------------------
    def sim(self, i: int) -> SimHost:
        return self.cluster.hosts[i]

    def spec(self, i: int) -> HostSpec:
        h = self.cluster.hosts[i]
        return HostSpec(h.name, "http", h.http_port, SLOTS, h.address)

    def reset_faults(self) -> None:
        for h in self.cluster.hosts:
            h.faults.stall(0)
            h.faults.refuse(False)
            h.faults.clock_skew(0)
            if not h.listening:
                h.faults.up()
            h.quotas.MaxShellsPerUser = 30
        if not self.realm.kdc_running:
            self.realm.start_kdc()

    # -- the executor ------------------------------------------------------------------------
    def executor(self, **overrides: Any) -> WindowsKerberosExecutor:
        principals = [self.realm.principal(p) for p in ("airflow", "alice")]
        keytabs = {p: self.realm.keytab_path(p) for p in principals}
        ex = make_executor(self.settings, keytabs, **overrides)
        self.made.append(ex)
        return ex

    # -- tasks -------------------------------------------------------------------------------
    def submit(
        self, ex: WindowsKerberosExecutor, n: int = 1, conf: dict[str, Any] | None = None
    ) -> list[Any]:
        """Trigger ``n`` runs and hand their ``work`` task to the executor as the scheduler does."""
        from airflow.executors.workloads import ExecuteTask

        runs = [self.stack.trigger(DAG_ID, conf=conf) for _ in range(n)]
        workloads = [ExecuteTask.model_validate(w) for w in queue_workloads(self.stack, runs)]
        for w in workloads:
            ex.queued_tasks[w.ti.key] = w
        return workloads

    def starts(self) -> collections.Counter[tuple[str, int]]:
        """How often each (dag run, try) of ``work`` really started, from the task's own ledger."""
        return ledger_starts(self.ledger, "run_id")

    def markers(self, ti_id: str) -> list[dict[str, Any]]:
        """The agents' run markers of one task instance, over all hosts' run folders."""
        safe = "".join(c for c in ti_id if c.isalnum() or c == "-")
        out = []
        for h in self.cluster.hosts:
            for path in sorted((h.program_data / "winexec" / "runs").glob(f"*/{safe}.try*.json")):
                out.append({**json.loads(path.read_text()), "host": h.short_name.upper()})
        return out

    def agents_running(self) -> list[dict[str, Any]]:
        return agents_running(self.cluster)


def queue_workloads(stack: AirflowStack, runs: list[str]) -> list[dict[str, Any]]:
    """Queue ``work`` of each run in one subprocess (airflow-core with the stack's configuration)."""
    code = (
        "import json, sys\n"
        "from winexec.testing.airflow_stack import _queue_workload\n"
        "for run in json.loads(sys.argv[1]):\n"
        f"    print(json.dumps(_queue_workload({DAG_ID!r}, run, {TASK_ID!r}, -1)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(runs)],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("faults")
    share(tmp, writable=True)  # the hosts' DAGs, logs and ledger: folders all principals use
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "winexec_faults_dag.py", dags)
    with (
        pytest.MonkeyPatch.context() as mp,
        running_cluster(tmp / "realm", HOSTS, ("airflow", "alice"), windows_like=True) as (realm, cluster),
        AirflowStack(dags) as stack,
    ):
        env = stack.agent_env(tmp / "host-home")
        host_env = {k: env[k] for k in env if k.startswith("AIRFLOW")}
        host_env["AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT"] = "60"  # a loaded test machine is slow
        ledger = tmp / "ledger.jsonl"
        host_env["WINEXEC_FAULTS_LEDGER"] = str(ledger)
        python = host_python(tmp / "host-python", host_env)
        # what the scheduler's airflow.cfg would say: where tasks reach the API, where logs go
        mp.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", stack.execution_api_url)
        mp.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(stack.log_folder))
        hosts = tuple(HostSpec(h.name, "http", h.http_port, SLOTS, h.address) for h in cluster.hosts)
        settings = Settings(
            hosts=hosts,
            default_principal=realm.principal("airflow"),
            python=str(python),
            connect_timeout=3,
            operation_timeout=2,
            read_timeout=6,
            poll_timeout=1,
            io_workers=8,
            heartbeat_interval=1.0,
            missed_heartbeats=15,  # roomy: a loaded 2-core machine delays heartbeats by seconds
            start_timeout=180.0,
            keepalive_timeout=60.0,
            execution_timeout_grace=2.0,
            launch_attempts=4,
            launch_backoff=0.5,
            launch_backoff_max=2.0,
            host_failure_threshold=2,
            host_cooldown=3.0,
            host_refresh_interval=3600.0,
        )
        w = World(realm, cluster, stack, python, ledger, settings)
        try:
            yield w
        finally:
            for ex in w.made:
                ex.terminate()


@pytest.fixture
def w(world: World, caplog: pytest.LogCaptureFixture) -> Iterator[World]:
    """Per test: faults cleared before and after; afterwards every executor it made is shut down,
    nothing runs on the hosts, and the executor's threads and objects are back to their baseline."""
    world.reset_faults()
    made = len(world.made)
    with nothing_left_behind(world.cluster, caplog):
        yield world
        _terminate(world.made[made:])
        del world.made[made:]
        world.reset_faults()


def _terminate(executors: list[WindowsKerberosExecutor]) -> None:
    for ex in executors:
        ex.terminate()


def running_on(ex: WindowsKerberosExecutor, key: Any) -> str | None:
    rec = ex.records.get(key)
    return rec.host.name if rec is not None and rec.host is not None and rec.started else None


def _idx(w: World, name: str) -> int:
    return next(i for i, h in enumerate(w.cluster.hosts) if h.name == name)


# -- the scenarios ---------------------------------------------------------------------------------
def test_baseline_tasks_run_once_each(w: World) -> None:
    ex = w.executor()
    wls = w.submit(ex, 3)
    keys = [x.ti.key for x in wls]
    events = drive(ex, finished(keys))
    assert [events[k][0] for k in keys] == ["success"] * 3
    starts = w.starts()
    assert [starts[(k.run_id, k.try_number)] for k in keys] == [1, 1, 1]
    for x in wls:
        (marker,) = w.markers(str(x.ti.id))
        assert marker["state"] == "success"
    assert not ex.records and not ex.running


def test_host_killed_mid_task_fails_it_once_with_the_reason(w: World) -> None:
    ex = w.executor()
    (x,) = w.submit(ex, 1, {"sleep": 120})
    key = x.ti.key
    drive(ex, lambda ev: running_on(ex, key) is not None and w.starts()[(key.run_id, key.try_number)] == 1)
    host = running_on(ex, key)
    assert host is not None
    w.sim(_idx(w, host)).faults.down()
    events = drive(ex, finished([key]))
    state, reason = events[key]
    assert state == "failed"
    assert f"no heartbeat from {host}" in reason and "host unreachable" in reason
    drive(ex, lambda ev: not ex.records, timeout=60)
    assert w.starts()[(key.run_id, key.try_number)] == 1  # not relaunched elsewhere
    assert len(w.markers(str(x.ti.id))) == 1


def test_host_rebooted_mid_task_fails_it_once_with_the_reason(w: World) -> None:
    ex = w.executor()
    (x,) = w.submit(ex, 1, {"sleep": 120})
    key = x.ti.key
    drive(ex, lambda ev: running_on(ex, key) is not None and w.starts()[(key.run_id, key.try_number)] == 1)
    host = running_on(ex, key)
    assert host is not None
    w.sim(_idx(w, host)).faults.reboot()  # back up at once, but its shells and processes are gone
    events = drive(ex, finished([key]))
    state, reason = events[key]
    assert state == "failed"
    assert f"the WinRM shell of this run is gone from {host} (the host rebooted" in reason, reason
    drive(ex, lambda ev: not ex.records, timeout=60)
    assert w.starts()[(key.run_id, key.try_number)] == 1
    assert len(w.markers(str(x.ti.id))) == 1


def _started_once(w: World, ex: Any, conf: dict[str, Any]) -> tuple[Any, Any, str, Any]:
    """Submit one task and drive until it runs, started once: (workload, key, host name, sim host)."""
    (x,) = w.submit(ex, 1, conf)
    key = x.ti.key
    drive(ex, lambda ev: running_on(ex, key) is not None and w.starts()[(key.run_id, key.try_number)] == 1)
    host = running_on(ex, key)
    assert host is not None
    return x, key, host, w.sim(_idx(w, host))


def test_network_stall_longer_than_the_heartbeat_timeout(w: World) -> None:
    ex = w.executor()
    x, key, host, sim = _started_once(w, ex, {"sleep": 120})
    sim.faults.stall(120)  # every request to the host now hangs far beyond hung_after (15 s)
    events = drive(ex, finished([key]))
    state, reason = events[key]
    assert state == "failed" and f"no heartbeat from {host}" in reason, reason
    sim.faults.stall(0)  # the network heals: the stop (or the shell's idle timeout) ends it
    drive(ex, lambda ev: not ex.records, timeout=90)
    wait_for(lambda: not sim.processes(), 60, lambda: f"still running on {host}: {sim.processes()}")
    assert w.starts()[(key.run_id, key.try_number)] == 1
    (marker,) = w.markers(str(x.ti.id))
    # stopped by the agent -- or still "running" when deleting the shell killed it before it could
    # say so; never finished as if nothing happened
    assert marker["state"] in ("stopped", "running"), marker


def test_a_partitioned_host_runs_no_orphan_past_keepalive_timeout(w: World) -> None:
    """Cut off from its executor, the host itself ends the task: no request reaches the run's
    shell, so the shell's IdleTimeOut (keepalive_timeout) deletes it with its processes."""
    ex = w.executor()
    _, key, _, sim = _started_once(w, ex, {"sleep": 300})
    assert sim.processes()
    cut = time.monotonic()
    sim.faults.refuse(True)  # the partition: connections refused, the host and its shells live on
    try:
        wait_for(lambda: not sim.processes(), w.settings.keepalive_timeout + 30, lambda: str(sim.processes()))
        assert time.monotonic() - cut >= w.settings.keepalive_timeout - 1
    finally:
        sim.faults.refuse(False)
    events = drive(ex, finished([key]))
    assert events[key][0] == "failed", events[key]
    drive(ex, lambda ev: not ex.records, timeout=90)
    assert w.starts()[(key.run_id, key.try_number)] == 1


def test_connection_dropped_mid_receive_is_survived(w: World) -> None:
    ex = w.executor()
    (x,) = w.submit(ex, 1, {"sleep": 8})
    key = x.ti.key
    drive(ex, lambda ev: running_on(ex, key) is not None and w.starts()[(key.run_id, key.try_number)] == 1)
    host = running_on(ex, key)
    assert host is not None
    w.sim(_idx(w, host)).faults.drop_next_receive()
    events = drive(ex, finished([key]))
    assert events[key][0] == "success", events[key]
    assert events[key][1].startswith(f"{host}|")  # finished where it started
    assert w.starts()[(key.run_id, key.try_number)] == 1
    (marker,) = w.markers(str(x.ti.id))
    assert marker["state"] == "success"


def test_revoke_ends_the_task_on_its_host(w: World) -> None:
    """The scheduler revokes a running task (e.g. its task heartbeat timed out): no outcome is
    reported for it, and its processes are gone from the host."""
    from types import SimpleNamespace

    ex = w.executor()
    (x,) = w.submit(ex, 1, {"sleep": 120})
    key = x.ti.key
    drive(ex, lambda ev: running_on(ex, key) is not None and w.starts()[(key.run_id, key.try_number)] == 1)
    host = w.sim(_idx(w, running_on(ex, key) or ""))
    assert host.processes()
    ex.revoke_task(ti=SimpleNamespace(key=key))  # type: ignore[arg-type]
    events = drive(ex, lambda ev: not ex.records, timeout=60)
    assert events.get(key, ("",))[0] not in ("success", "failed")  # revoked: the scheduler decides
    wait_for(lambda: not host.processes(), 30, lambda: f"still running: {host.processes()}")
    (marker,) = w.markers(str(x.ti.id))
    assert marker["state"] == "stopped", marker


def test_kdc_down_during_launch_is_retried_until_it_is_back(w: World) -> None:
    ex = w.executor(launch_attempts=6)  # TGTs are in hand; service tickets are not
    w.realm.stop_kdc()
    (x,) = w.submit(ex, 1)
    key = x.ti.key
    attempts: list[int] = []

    def kdc_back_after_two_failed_launches(ev: dict[Any, Any]) -> None:
        rec = ex.records.get(key)
        if rec is not None:
            attempts.append(rec.attempt)
        if not w.realm.kdc_running and rec is not None and rec.attempt >= 2 and rec.phase.value == "waiting":
            assert "KDC" in rec.last_error or "kdc" in rec.last_error.lower(), rec.last_error
            w.realm.start_kdc()

    events = drive(ex, finished([key]), step=kdc_back_after_two_failed_launches)
    assert events[key][0] == "success", events[key]
    assert max(attempts) >= 3  # two launches failed on the KDC, a later one worked
    assert w.starts()[(key.run_id, key.try_number)] == 1
    assert len(w.markers(str(x.ti.id))) == 1
    assert ex.pool is not None and all(h.failures == 0 for h in ex.pool.hosts)  # not the hosts' fault


@contextlib.contextmanager
def short_tickets(realm: Realm, principal: str, life: int, renew: int) -> Iterator[None]:
    """The principal's tickets last ``life`` s, renewable for ``renew`` s (the realm's policy)."""
    realm.kadmin(f'modprinc -maxlife "{life} seconds" -maxrenewlife "{renew} seconds" {principal}')
    try:
        yield
    finally:
        realm.kadmin(
            f'modprinc -maxlife "{realm.ticket_lifetime} seconds" '
            f'-maxrenewlife "{realm.renew_lifetime} seconds" {principal}'
        )


def test_tickets_expiring_during_a_long_task(w: World, caplog: pytest.LogCaptureFixture) -> None:
    """12 s tickets renewable for 25 s, a 32 s task: its TGT is renewed, then replaced from the
    keytab, and the service ticket its session logged on with expires long before it ends: the
    session logs on again (a Disconnect, then a Connect: no Connect to a connected shell)."""
    caplog.set_level(logging.INFO, logger="winexec.transport.session")
    principal = w.realm.principal("airflow")
    with short_tickets(w.realm, principal, 12, 25):
        ex = w.executor()
        (x,) = w.submit(ex, 1, {"sleep": 32})
        key = x.ti.key
        events = drive(ex, finished([key]), timeout=300)
        store = ex.tickets
        assert isinstance(store, TicketStore)
        counters = store.counters()
    assert events[key][0] == "success", events[key]
    assert w.starts()[(key.run_id, key.try_number)] == 1
    assert counters["renewals"] >= 1 and counters["acquisitions"] >= 2, counters  # renewed, then fresh
    assert "logged on again with a renewed ticket" in caplog.text
    assert "logging on again failed" not in caplog.text


def test_a_rotated_keytab_is_picked_up_while_tasks_run(
    w: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The principal's key is rotated (a new random key, kvno + 1, as ``ktpass`` or a gMSA
    rotation does) and its keytab replaced on disk while a task runs: the running task is not
    disturbed, the store takes a fresh TGT from the new file within its keytab check, and the
    next task launches with it; no scheduler restart."""
    monkeypatch.setattr(tickets, "KEYTAB_CHECK", 0.5)
    principal = w.realm.principal("airflow")
    keytab = w.realm.keytab_path(principal)
    ex = w.executor()
    store = ex.tickets
    assert isinstance(store, TicketStore)
    (x,) = w.submit(ex, 1, {"sleep": 15})
    drive(ex, lambda ev: running_on(ex, x.ti.key) is not None)
    before = store.counters()
    old = tmp_path / "old.keytab"
    shutil.copy(keytab, old)
    fresh = keytab.with_name(".rotating.keytab")
    w.realm.kadmin(f"ktadd -k {fresh} {principal}")  # a new random key; the old one is void
    fresh.chmod(0o600)
    os.replace(fresh, keytab)
    drive(ex, lambda ev: store.counters()["acquisitions"] > before["acquisitions"], timeout=30)
    (y,) = w.submit(ex, 1)
    events = drive(ex, finished([x.ti.key, y.ti.key]), timeout=180)
    assert events[x.ti.key][0] == "success" and events[y.ti.key][0] == "success", events
    assert store.counters()["renewal_failures"] == before["renewal_failures"]
    # the rotation was real: the key in the old file no longer gets a TGT
    env = {**os.environ, "KRB5CCNAME": "MEMORY:rotated", **w.realm.env()}
    r = subprocess.run(["kinit", "-k", "-t", str(old), principal], env=env, capture_output=True, text=True)
    assert r.returncode != 0, r.stdout


def test_kdc_down_during_renewal_of_a_running_tasks_tickets(w: World) -> None:
    """The KDC goes away while a task runs and its principal's TGT comes due for renewal (and
    expires): the running task is not disturbed, renewal recovers when the KDC is back, and the
    next task launches as usual."""
    principal = w.realm.principal("airflow")
    with short_tickets(w.realm, principal, 12, 300):
        ex = w.executor()
        store = ex.tickets
        assert isinstance(store, TicketStore)
        (x,) = w.submit(ex, 1, {"sleep": 30})
        key = x.ti.key
        drive(
            ex, lambda ev: running_on(ex, key) is not None and w.starts()[(key.run_id, key.try_number)] == 1
        )
        w.realm.stop_kdc()
        down_until = time.monotonic() + 16  # past the TGT's renewal time and its end

        def kdc_back_later(ev: dict[Any, Any]) -> None:
            assert ev.get(key, ("",))[0] != "failed", ev[key]
            if not w.realm.kdc_running and time.monotonic() > down_until:
                w.realm.start_kdc()

        events = drive(ex, finished([key]), timeout=300, step=kdc_back_later)
        assert events[key][0] == "success", events[key]
        assert store.counters()["renewal_failures"] >= 1, store.counters()
        wait_for(lambda: store.status(principal).remaining() > 5, 30, lambda: str(store.status(principal)))
        (y,) = w.submit(ex, 1)
        events = drive(ex, finished([y.ti.key]))
        assert events[y.ti.key][0] == "success", events[y.ti.key]
    assert w.starts()[(key.run_id, key.try_number)] == 1


def test_an_ambiguous_launch_fails_once_and_its_agent_is_stopped_when_the_host_is_back(w: World) -> None:
    """The host ran the agent's command, then went silent: the task fails at once as ambiguous
    (never launched again), and once the host answers the executor stops the agent it left."""
    sim = w.sim(0)
    ex = w.executor(hosts=(w.spec(0),))
    sim.faults.lose_next_answer("Command", then_silent=True)
    (x,) = w.submit(ex, 1)
    key = x.ti.key
    events = drive(ex, finished([key]))
    state, reason = events[key]
    assert state == "failed" and "whether the task started there is unknown" in reason, reason
    # the agent's pipeline waits there for its input; Windows PowerShell 5.1 has not started it
    assert ex.describe()["strays"] and [s for s in sim.shells() if s.commands()]
    assert not sim.processes()
    sim.faults.refuse(False)
    drive(ex, lambda ev: not ex.describe()["strays"], timeout=60)
    wait_for(lambda: not sim.shells(), 30, lambda: f"still there: {sim.shells()}")
    assert not sim.processes()
    assert w.starts()[(key.run_id, key.try_number)] == 0  # the try never ran, and never twice


def test_clock_skew_on_hosts_moves_the_task_to_a_host_with_a_good_clock(w: World) -> None:
    w.sim(0).faults.clock_skew(900)
    w.sim(1).faults.clock_skew(-900)
    ex = w.executor()
    (x,) = w.submit(ex, 1)
    key = x.ti.key
    events = drive(ex, finished([key]))
    assert events[key][0] == "success", events[key]
    assert events[key][1].startswith(f"{w.sim(2).name}|")
    assert ex.pool is not None
    assert ex.pool[w.sim(0).name].failures + ex.pool[w.sim(1).name].failures >= 1
    assert w.starts()[(key.run_id, key.try_number)] == 1


def test_clock_skew_everywhere_fails_with_a_clear_reason(w: World) -> None:
    w.sim(0).faults.clock_skew(900)
    ex = w.executor(hosts=(w.spec(0),), launch_attempts=2)
    (x,) = w.submit(ex, 1)
    key = x.ti.key
    events = drive(ex, finished([key]))
    state, reason = events[key]
    assert state == "failed"
    assert "clock" in reason.lower() and "w32tm" in reason, reason
    assert w.starts()[(key.run_id, key.try_number)] == 0  # never started anywhere
    assert not w.markers(str(x.ti.id))


def test_quota_full_on_one_host_goes_elsewhere_without_using_an_attempt(w: World) -> None:
    w.sim(0).quotas.MaxShellsPerUser = 0  # win01 is first in placement order, and full
    ex = w.executor(launch_attempts=1)  # a used attempt would fail the task
    wls = w.submit(ex, 2)
    keys = [x.ti.key for x in wls]
    events = drive(ex, finished(keys))
    assert [events[k][0] for k in keys] == ["success", "success"], events
    assert not any(events[k][1].startswith(f"{w.sim(0).name}|") for k in keys)
    assert ex.pool is not None and ex.pool[w.sim(0).name].consecutive_failures == 0
    assert [w.starts()[(k.run_id, k.try_number)] for k in keys] == [1, 1]


def test_all_hosts_down_then_back(w: World) -> None:
    for h in w.cluster.hosts:
        h.faults.down()
    ex = w.executor(launch_attempts=8)
    wls = w.submit(ex, 2)
    keys = [x.ti.key for x in wls]

    def back_once_every_host_failed(ev: dict[Any, Any]) -> None:
        assert ex.pool is not None
        if not w.sim(0).listening and all(h.failures >= 1 for h in ex.pool.hosts):
            for h in w.cluster.hosts:
                h.faults.up()

    events = drive(ex, finished(keys), step=back_once_every_host_failed)
    assert [events[k][0] for k in keys] == ["success", "success"], events
    assert [w.starts()[(k.run_id, k.try_number)] for k in keys] == [1, 1]


# -- bad input -------------------------------------------------------------------------------------
#: Everything a shell or PowerShell would act on, plus text a console code page would mangle.
HOSTILE = (
    'it\'s "quoted" `whoami` $(Remove-Item C:\\ -Recurse); echo pwned & del | more > x < y '
    "%PATH% ${env:USERNAME} ^ ü 日本 🙂 \u2028 \\ \t end"
)


def test_hostile_params_round_trip_through_a_real_task(w: World) -> None:
    ex = w.executor()
    conf = {"text": HOSTILE, HOSTILE: [HOSTILE, {"nested": HOSTILE}]}
    (x,) = w.submit(ex, 1, conf)
    key = x.ti.key
    events = drive(ex, finished([key]))
    assert events[key][0] == "success", events[key]
    assert w.stack.xcom(DAG_ID, key.run_id, TASK_ID)["conf"] == conf
    for h in w.cluster.hosts:  # the agent's command line is fixed, whatever the task carries:
        for entry in h.pipeline_log:  # a mode, a run id of ours (hex), a number at most
            argv = entry["argv"]
            assert argv[:3] == [str(w.python), "-m", "winexec.agent"], argv
            assert all(re.fullmatch(r"--[a-z-]+|[0-9a-f]{32}|[0-9]+", a) for a in argv[3:]), argv


def _echo_python(tmp: Path) -> Path:
    """A stand-in for the host's python that answers the ``start`` line with what it received."""
    share(tmp)  # installed where every principal may run it
    program = tmp / "echo_agent.py"
    program.write_text(
        "import json, sys\n"
        "from winexec import protocol\n"
        "start = protocol.parse_line(sys.stdin.readline())\n"
        "got = {'workload': start.workload, 'run_id': start.run_id, 'argv': sys.argv[1:]}\n"
        "sys.stdout.write(protocol.Log(line=json.dumps(got, ensure_ascii=True)).to_line())\n"
        "sys.stdout.write(protocol.Exit(run_id=start.run_id, state='success', code=0).to_line())\n"
        "sys.stdout.flush()\n"
    )
    wrapper = tmp / "echo-python"
    wrapper.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{program}' \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def test_hostile_ids_reach_the_agent_intact_as_pipeline_input_only(w: World, tmp_path: Path) -> None:
    """Task, dag and run ids (and params) full of shell syntax travel as stdin data, never as code."""
    import uuid

    from winexec import protocol
    from winexec.transport import open_session

    python = _echo_python(tmp_path)
    settings = replace(w.settings, python=str(python))
    workload = {
        "ti": {"id": str(uuid.uuid4()), "dag_id": HOSTILE, "task_id": HOSTILE, "run_id": HOSTILE},
        "params": {HOSTILE: HOSTILE},
        "token": "not-a-real-token",
    }
    start = protocol.Start(workload=workload, run_id=uuid.uuid4().hex)
    principal = w.realm.principal("airflow")
    store = TicketStore({principal: str(w.realm.keytab_path(principal))})
    store.start()
    sim = w.sim(0)
    try:
        session = open_session(settings, w.spec(0), principal, False, store, start)
        messages: list[protocol.Message] = []
        deadline = time.monotonic() + 60
        try:
            while not any(isinstance(m, protocol.Exit) for m in messages):
                assert time.monotonic() < deadline, messages
                messages += session.poll(timeout=1).messages
        finally:
            session.close()
    finally:
        store.close()
    (echo,) = [m for m in messages if isinstance(m, protocol.Log)]
    got = json.loads(echo.line)
    assert got == {"workload": workload, "run_id": start.run_id, "argv": ["-m", "winexec.agent"]}
    (entry,) = [e for e in sim.pipeline_log if e["argv"][0] == str(python)]
    assert entry["argv"] == [str(python), "-m", "winexec.agent"]


def test_an_oversized_workload_fails_that_task_only_with_a_clear_reason(w: World) -> None:
    from winexec.transport import MAX_START_BYTES

    ex = w.executor()
    big, small = w.submit(ex, 2)
    ex.queued_tasks.pop(small.ti.key)  # first the oversized one alone
    big.ti.context_carrier = {"blob": "x" * (MAX_START_BYTES + 1)}  # sent with the workload
    events = drive(ex, finished([big.ti.key]))
    state, reason = events[big.ti.key]
    assert state == "failed"
    assert "more than winexec sends to a host (1048576 bytes)" in reason and "oversized" in reason, reason
    assert w.starts()[(big.ti.key.run_id, big.ti.key.try_number)] == 0
    assert not w.markers(str(big.ti.id))
    ex.queued_tasks[small.ti.key] = small  # the executor carries on with the next task
    events = drive(ex, finished([small.ti.key]))
    assert events[small.ti.key][0] == "success"

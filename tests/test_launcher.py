"""The launcher against the real thing minus Windows: MIT KDC, ``winexec.sim`` hosts, the real agent
and a real Airflow api-server. One task per test, driven through :class:`TaskSession` exactly as the
executor's I/O workers drive it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from winexec import protocol
from winexec.config import HostSpec, Settings
from winexec.sim import SimCluster
from winexec.sim.accounts import share
from winexec.sim.kdc import Realm, free_port
from winexec.sim.testing import running_cluster
from winexec.testing.airflow_stack import AirflowStack
from winexec.testing.world import host_python
from winexec.tickets import TicketStore
from winexec.transport import (
    LaunchAmbiguous,
    LaunchError,
    PollResult,
    ShellGone,
    TaskSession,
    open_session,
    python_missing_reason,
    reattach_session,
)

DAG_ID = "winexec_e2e"
DAGS = Path(__file__).resolve().parent / "executor_dags"


@dataclass
class World:
    realm: Realm
    cluster: SimCluster
    stack: AirflowStack
    tickets: TicketStore
    settings: Settings

    def host(self, i: int = 0) -> HostSpec:
        h = self.cluster.hosts[i]
        return HostSpec(h.name, "http", h.http_port, 4, h.address)

    def workload(
        self, task_id: str, run_id: str | None = None, map_index: int = -1, conf: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        run_id = run_id or self.stack.trigger(DAG_ID, conf=conf)
        return run_id, self.stack.queue_workload(DAG_ID, run_id, task_id, map_index)

    def start(self, workload: dict[str, Any], **kw: Any) -> protocol.Start:
        kw.setdefault("heartbeat_interval", 1.0)
        return protocol.Start(
            workload=workload, run_id=uuid.uuid4().hex, server=self.stack.execution_api_url, **kw
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("launcher")
    share(tmp, writable=True)  # the hosts' DAGs and logs: folders all principals use
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "winexec_e2e_dag.py", dags)
    with (
        running_cluster(tmp / "realm", 2, ("airflow", "alice"), windows_like=True) as (
            realm,
            cluster,
        ),
        AirflowStack(dags) as stack,
    ):
        stack.set_variable("winexec_e2e_var", "hello")
        env = stack.agent_env(tmp / "host-home")
        host_env = {k: env[k] for k in env if k.startswith("AIRFLOW")}
        host_env["AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT"] = "60"  # a loaded test machine is slow
        host_env["WINEXEC_E2E_SECOND_HOP"] = f"HTTP@{cluster.hosts[1].name}"
        python = host_python(tmp / "host-python", host_env)
        tickets = TicketStore(
            {realm.principal(p): str(realm.keytab_path(realm.principal(p))) for p in ("airflow", "alice")}
        )
        tickets.start()
        settings = Settings(
            hosts=(),
            default_principal=realm.principal("airflow"),
            python=str(python),
            operation_timeout=5,
            read_timeout=15,
            connect_timeout=5,
        )
        try:
            yield World(realm, cluster, stack, tickets, settings)
        finally:
            tickets.close()


def run_to_exit(session: TaskSession, timeout: float = 120) -> tuple[list[protocol.Message], PollResult]:
    messages: list[protocol.Message] = []
    last = PollResult()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = session.poll(timeout=1)
        messages += last.messages
        if any(isinstance(m, protocol.Exit) for m in messages) or last.finished:
            return messages, last
    raise AssertionError(f"no exit within {timeout} s: {messages}")


def of(messages: list[protocol.Message], cls: type[Any]) -> list[Any]:
    return [m for m in messages if isinstance(m, cls)]


def test_task_runs_on_the_host_as_its_principal(world: World) -> None:
    run_id, wl = world.workload("hello")
    start = world.start(wl)
    session = open_session(
        world.settings, world.host(0), world.realm.principal("airflow"), True, world.tickets, start
    )
    try:
        messages, _ = run_to_exit(session)
    finally:
        session.close()
    (started,) = of(messages, protocol.Started)
    (exit_,) = of(messages, protocol.Exit)
    assert started.run_id == start.run_id and started.delegated is True
    assert "airflow" in started.user
    assert exit_.state == "success", exit_
    hello = world.stack.xcom(DAG_ID, run_id, "hello")
    assert hello["user"] == "airflow"
    assert hello["unbuffered"] == "1"  # the agent's doing: a live log shows the task's lines live
    assert world.stack.task_instance(DAG_ID, run_id, "hello")["state"] == "success"


def test_second_principal_uses_its_delegated_ticket_for_the_next_hop(world: World) -> None:
    run_id, wl = world.workload("double_hop")
    session = open_session(
        world.settings, world.host(0), world.realm.principal("alice"), True, world.tickets, world.start(wl)
    )
    try:
        messages, _ = run_to_exit(session)
    finally:
        session.close()
    (exit_,) = of(messages, protocol.Exit)
    assert exit_.state == "success", exit_
    result = world.stack.xcom(DAG_ID, run_id, "double_hop")
    assert result["client"] == world.realm.principal("alice") and result["user"] == "alice"


def test_queries_and_the_stop_run_beside_the_agent_and_the_stop_kills_the_task(world: World) -> None:
    """The agent's stdin ended with its start line (5.1): a status query and the stop are
    pipelines of their own in the run's shell, beside the agent's, not behind it."""

    run_id, wl = world.workload("too_slow")
    session = open_session(
        world.settings, world.host(1), world.realm.principal("airflow"), False, world.tickets, world.start(wl)
    )
    sim_host = world.cluster.hosts[1]
    try:
        deadline = time.monotonic() + 90
        seen: list[protocol.Message] = []
        while not of(seen, protocol.Started):
            assert time.monotonic() < deadline, seen
            seen += session.poll(timeout=1).messages
        channel = session.channel()
        assert channel is not None
        status = channel.agent("--status", None, session.run_id or "")
        assert status["found"] and status["agent_alive"] and not status.get("finished"), status
        seen += session.poll(timeout=1).messages
        assert not of(seen, protocol.Exit)
        stopped = session.stop("test stop", wait=45)
    finally:
        session.close()
    (exit_,) = of(stopped.messages, protocol.Exit)
    assert exit_.state == "stopped" and exit_.reason == "test stop", exit_
    deadline = time.monotonic() + 15
    while sim_host.processes():
        assert time.monotonic() < deadline, sim_host.processes()
        time.sleep(0.2)
    assert world.stack.task_instance(DAG_ID, run_id, "too_slow")["state"] != "running"


def test_the_host_admits_no_more_runs_than_its_slots(world: World) -> None:
    """Two schedulers sharing a 1-slot host: the host itself refuses the second run, and it leaves
    no marker behind, so the same try can start there once the slot is free."""
    principal = world.realm.principal("airflow")
    _, busy_wl = world.workload("sleeper", conf={"sleep": 60})
    busy = open_session(
        world.settings, world.host(0), principal, False, world.tickets, world.start(busy_wl, slots=1)
    )
    try:
        seen: list[protocol.Message] = []
        deadline = time.monotonic() + 90
        while not of(seen, protocol.Started):
            assert time.monotonic() < deadline, seen
            seen += busy.poll(timeout=1).messages
        _, wl = world.workload("hello")
        refused = open_session(
            world.settings, world.host(0), principal, False, world.tickets, world.start(wl, slots=1)
        )
        try:
            messages, _ = run_to_exit(refused)
        finally:
            refused.close()
        (exit_,) = of(messages, protocol.Exit)
        assert exit_.state == "full" and "1 slot(s)" in exit_.reason, exit_
        assert not of(messages, protocol.Started)
    finally:
        busy.stop("test done", wait=30)
        busy.close()
    again = open_session(
        world.settings, world.host(0), principal, False, world.tickets, world.start(wl, slots=1)
    )
    try:
        messages, _ = run_to_exit(again)
    finally:
        again.close()
    assert of(messages, protocol.Exit)[0].state == "success"


def test_a_disconnected_agent_keeps_running_and_is_reattached_by_run_id(world: World) -> None:
    run_id, wl = world.workload("sleeper", conf={"sleep": 120})
    start = world.start(wl)
    principal = world.realm.principal("alice")
    first = open_session(world.settings, world.host(1), principal, False, world.tickets, start)
    seen: list[protocol.Message] = []
    deadline = time.monotonic() + 90
    while not of(seen, protocol.Started):
        assert time.monotonic() < deadline, seen
        seen += first.poll(timeout=1).messages
    assert first.disconnect()  # e.g. the scheduler shut down
    time.sleep(2)  # heartbeats written meanwhile are kept for whoever reattaches
    second = reattach_session(world.settings, world.host(1), principal, False, world.tickets, start.run_id)
    try:
        later: list[protocol.Message] = []
        deadline = time.monotonic() + 30
        while not of(later, protocol.Heartbeat):
            assert time.monotonic() < deadline, later
            later += second.poll(timeout=1).messages
        assert not of(later, protocol.Started) and not of(later, protocol.Exit)
        assert world.stack.task_instance(DAG_ID, run_id, "sleeper")["state"] == "running"
        stopped = second.stop("adopted, then stopped", wait=45)
    finally:
        second.close()
    (exit_,) = of(stopped.messages, protocol.Exit)
    assert exit_.state == "stopped" and exit_.reason == "adopted, then stopped", exit_
    with pytest.raises(LaunchError):  # its shell is gone now
        reattach_session(world.settings, world.host(1), principal, False, world.tickets, start.run_id)


def test_a_launch_whose_answer_was_lost_finds_its_agent_instead_of_starting_another(world: World) -> None:
    """The host ran the agent's command but its answer was lost: the session looks for the run's
    shell, finds the agent there and goes on with it; the try starts once, on that host."""
    run_id, wl = world.workload("hello")
    start = world.start(wl)
    sim = world.cluster.hosts[0]
    before = len(sim.pipeline_log)
    sim.faults.lose_next_answer("Command")
    session = open_session(
        world.settings, world.host(0), world.realm.principal("airflow"), False, world.tickets, start
    )
    try:
        messages, _ = run_to_exit(session)
    finally:
        session.close()
    assert sim.faults.take_lost_answer("Command") is None  # the fault did strike
    assert len(of(messages, protocol.Started)) == 1
    (exit_,) = of(messages, protocol.Exit)
    assert exit_.state == "success", exit_
    assert len(sim.pipeline_log) - before == 1  # one agent was ever started for this launch
    assert world.stack.task_instance(DAG_ID, run_id, "hello")["state"] == "success"


def test_an_exit_line_lost_with_a_connection_is_read_from_the_hosts_record(world: World) -> None:
    """The Receive that carried the agent's exit line was answered by the host, but the answer
    died with the connection: the outcome comes from the run's record on the host instead."""
    run_id, wl = world.workload("hello")
    start = world.start(wl)
    sim = world.cluster.hosts[0]
    settings = replace(world.settings, heartbeat_interval=1.0)  # as in the start message
    session = open_session(
        settings, world.host(0), world.realm.principal("airflow"), False, world.tickets, start
    )
    try:
        seen: list[protocol.Message] = []
        deadline = time.monotonic() + 90
        while not of(seen, protocol.Started):
            assert time.monotonic() < deadline, seen
            seen += session.poll(timeout=1).messages
        deadline = time.monotonic() + 90
        while sim.processes():  # the agent finishes while nobody listens; its output waits on the host
            assert time.monotonic() < deadline, sim.processes()
            time.sleep(0.2)
        sim.faults.lose_next_answer("Receive")  # the next Receive hands out the exit line, then dies
        messages, _ = run_to_exit(session, timeout=60)
    finally:
        session.close()
    assert sim.faults.take_lost_answer("Receive") is None  # the fault did strike
    assert session.reconnects == 1
    (exit_,) = of(messages, protocol.Exit)
    assert exit_.state == "success" and "from the host's record of the run" in exit_.reason, exit_
    assert world.stack.task_instance(DAG_ID, run_id, "hello")["state"] == "success"


def test_a_host_silent_after_the_launch_command_is_not_launched_again(world: World) -> None:
    """The command reached the host, then the host went silent: nobody can tell whether the task
    runs, so the launch fails for good (no retry anywhere) with that reason."""
    _, wl = world.workload("hello")
    start = world.start(wl)
    sim = world.cluster.hosts[0]
    sim.faults.lose_next_answer("Command", then_silent=True)
    try:
        with pytest.raises(LaunchAmbiguous) as info:
            open_session(
                world.settings, world.host(0), world.realm.principal("airflow"), False, world.tickets, start
            )
    finally:
        sim.faults.refuse(False)
        sim.faults.kill_shells()  # the agent that got no start line; it would give up on its own
    err = info.value
    assert not err.transient and err.host_fault and err.kind == "ambiguous"
    assert f"{sim.name} stopped answering after the agent's command was sent" in err.reason
    assert "not started again anywhere" in err.reason


def test_a_host_rebooted_after_the_agents_input_arrived_is_not_launched_again(world: World) -> None:
    """The input's Send reached the host, then the host restarted before answering: the agent may
    have started and died with its shell, so the try ends there (no retry anywhere), with that
    reason; a retry elsewhere could run it twice."""
    _, wl = world.workload("hello")
    start = world.start(wl)
    sim = world.cluster.hosts[0]
    sim.faults.lose_next_answer("Send", then_reboot=True)
    with pytest.raises(ShellGone) as info:
        open_session(
            world.settings, world.host(0), world.realm.principal("airflow"), False, world.tickets, start
        )
    assert sim.faults.take_lost_answer("Send") is None  # the fault did strike
    err = info.value
    assert not err.transient and err.kind == "shell_gone"
    assert f"vanished from {sim.name} during the launch" in err.reason
    assert "not started again" in err.reason


def test_python_missing_on_the_host_says_how_to_fix_it(world: World) -> None:
    settings = replace(world.settings, python="no-such-python.exe")
    start = protocol.Start(workload={"token": "t"}, run_id="missing")
    session = open_session(
        settings, world.host(0), world.realm.principal("airflow"), False, world.tickets, start
    )
    try:
        messages, last = run_to_exit(session, timeout=30)
    finally:
        session.close()
    assert last.finished and not of(messages, protocol.Exit)
    reason = python_missing_reason(last.errors, world.host(0), "no-such-python.exe")
    assert reason is not None and "[winexec] python" in reason


def test_unreachable_host_is_a_transient_host_fault(world: World) -> None:
    dead = HostSpec(world.host(0).name, "http", free_port(), 4, "127.0.0.1")
    start = protocol.Start(workload={"token": "t"}, run_id="dead")
    with pytest.raises(LaunchError) as info:
        open_session(world.settings, dead, world.realm.principal("airflow"), False, world.tickets, start)
    assert info.value.transient and info.value.host_fault and info.value.kind == "unreachable"


def test_unknown_spn_is_blamed_on_the_host(world: World) -> None:
    wrong = replace(world.host(0), name="win99.winexec.test")
    start = protocol.Start(workload={"token": "t"}, run_id="spn")
    with pytest.raises(LaunchError) as info:
        open_session(world.settings, wrong, world.realm.principal("airflow"), False, world.tickets, start)
    assert info.value.host_fault and "HTTP/win99.winexec.test" in info.value.reason


def test_the_token_is_on_no_command_line(world: World) -> None:
    _, wl = world.workload("too_slow")
    token = wl["token"]
    session = open_session(
        world.settings, world.host(0), world.realm.principal("airflow"), False, world.tickets, world.start(wl)
    )
    try:
        deadline = time.monotonic() + 60
        while not world.cluster.hosts[0].processes():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for proc in world.cluster.hosts[0].processes():
            assert token not in " ".join(proc.get("argv") or [])
            assert token not in str(proc.get("env") or {})
    finally:
        session.stop("done", wait=10)
    assert os.environ.get("KRB5CCNAME", "").startswith(("MEMORY:", "FILE:"))


# -- failure classification (no network) ----------------------------------------------------------
def test_classify_maps_transport_failures() -> None:
    import requests
    from pypsrp.exceptions import AuthenticationError, WSManFaultError

    from winexec.transport.errors import QUOTA_FAULT_CODES, classify

    h = HostSpec("win01.corp.example", "https", 5986, 4, "10.0.0.1")
    refused = classify(requests.exceptions.ConnectionError("refused"), h, "svc@R")
    assert (refused.kind, refused.transient, refused.host_fault) == ("unreachable", True, True)
    assert "10.0.0.1:5986" in refused.reason
    timeout = classify(requests.exceptions.ReadTimeout("slow"), h, "svc@R")
    assert timeout.kind == "unreachable"
    denied = classify(AuthenticationError("401"), h, "svc@R")
    assert (denied.kind, denied.transient) == ("auth", False)
    assert "HTTP/win01.corp.example" in denied.reason and "svc@R" in denied.reason
    full = classify(WSManFaultError(min(QUOTA_FAULT_CODES), "m", "too many shells", "", "", ""), h, "svc@R")
    assert (full.kind, full.transient, full.host_fault) == ("full", True, False)
    endpoint = classify(WSManFaultError(0x803381E4, "m", "plugin shells", "", "", ""), h, "svc@R")
    assert endpoint.kind == "full"  # the endpoint's own MaxShellsPerUser (ERROR_WSMAN_QUOTA_MAX_SHELLS_PPQ)
    other = classify(WSManFaultError(0x80338012, "m", "quota-like words", "", "", ""), h, "svc@R")
    assert other.kind == "unreachable"  # by its code, not its words
    tls = classify(requests.exceptions.SSLError("bad cert"), h, "svc@R")
    assert "cert_validation" in tls.reason


def test_classify_maps_ticket_errors_by_transience() -> None:
    from winexec import tickets
    from winexec.transport import classify

    h = HostSpec("win01.corp.example")
    kdc = classify(tickets.KdcUnreachableError("svc@R", "no KDC"), h, "svc@R")
    assert (kdc.kind, kdc.transient, kdc.host_fault) == ("ticket", True, False)
    missing = classify(tickets.KeytabMissingError("svc@R", "no keytab"), h, "svc@R")
    assert (missing.kind, missing.transient) == ("ticket", False)


def test_python_missing_reason_only_for_command_not_found() -> None:
    h = HostSpec("win01.corp.example")
    assert python_missing_reason(["The term 'py.exe' is not recognized as the name of a cmdlet"], h, "py.exe")
    assert python_missing_reason(["Traceback: boom"], h, "py.exe") is None


def test_only_a_connection_that_never_opened_surely_sent_nothing() -> None:
    """Settling an ambiguous launch resends the agent's input only when it surely never left."""
    import requests
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

    from winexec.transport.errors import never_sent

    refused = requests.exceptions.ConnectionError(
        MaxRetryError(None, "/wsman", NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
    )
    assert never_sent(refused)
    cut = requests.exceptions.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError()))
    assert not never_sent(cut)  # the request may have been read before the connection broke

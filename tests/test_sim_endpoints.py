"""The stand-in's PSRP endpoints behave as Windows PowerShell 5.1 and PowerShell 7 do (sim README's
fidelity table), driven by the unmodified pypsrp: native command input, output, stderr, exit,
stop, runspaces, and the Connect/Disconnect/SessionId rules of MS-WSMV and MS-PSRP."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from pypsrp.exceptions import WSManFaultError
from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool
from pypsrp.wsman import NAMESPACES, SelectorSet

from tests import sim_fixtures
from tests.test_sim_psrp import py
from tests.test_sim_psrp import run as finish
from winexec.sim import SimHost
from winexec.sim.kdc import Realm
from winexec.sim.testing import wsman

host, realm, sim = sim_fixtures.host, sim_fixtures.realm, sim_fixtures.sim
SIM_CLUSTER = {"powershell7": True}  # Microsoft.PowerShell (5.1) and PowerShell.7 on each host

#: the default endpoint's resource URI (Windows PowerShell 5.1)
WINDOWS_POWERSHELL = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"
READ_STDIN = "import sys; print(repr(sys.stdin.buffer.read()), flush=True)"


def running(host: SimHost, marker: str) -> bool:
    return any(marker in " ".join(p["argv"]) for p in host.processes())


@pytest.fixture(params=["Microsoft.PowerShell", "PowerShell.7"])
def pool(request: pytest.FixtureRequest, realm: Realm, host: SimHost) -> Iterator[RunspacePool]:
    with RunspacePool(wsman(host, realm), configuration_name=request.param) as p:
        p.configuration_name = request.param  # type: ignore[attr-defined]  # for the test's eyes
        yield p


def test_input_reaches_the_native_command_as_each_version_writes_it(
    pool: RunspacePool, host: SimHost
) -> None:
    seen: list[bool] = []

    def inputs() -> Iterator[str]:
        yield "alpha"
        seen.append(running(host, "stdin.buffer.read"))  # after the first Send, before the end
        yield "b\u00e9ta"

    ps = py(pool, READ_STDIN)
    ps.begin_invoke(input=inputs())
    finish(ps)
    assert ps.state == PSInvocationState.COMPLETED
    if pool.configuration_name == "PowerShell.7":
        # started before the first input (Prepare), each object a UTF-8 line (§1.9-1.10)
        assert seen == [True]
        assert ps.output == [repr(b"alpha\r\nb\xc3\xa9ta\r\n")]
    else:
        # 5.1: nothing runs until EndOfPipelineInput; one Out-String in ASCII (§1.1-1.5)
        assert seen == [False]
        assert ps.output == [repr(b"alpha\r\nb?ta\r\n")]


def test_no_input_is_an_immediate_end_of_stdin(pool: RunspacePool) -> None:
    ps = py(pool, READ_STDIN)
    ps.invoke()
    assert ps.output == [repr(b"")]


def test_output_is_read_line_by_line_as_produced(pool: RunspacePool) -> None:
    script = (
        "import sys, time\n"
        "sys.stdout.write('a\\rb\\r\\nc\\n'); sys.stdout.flush()\n"
        "time.sleep(1.5)\n"
        "print('late', flush=True)\n"
    )
    ps = py(pool, script)
    ps.begin_invoke()
    first_seen: list[str] = []
    while ps.state == PSInvocationState.RUNNING:
        ps.poll_invoke(timeout=2)
        if ps.output and not first_seen:
            first_seen = list(ps.output)
    assert first_seen == ["a", "b", "c"]  # bare CR ends a line too (StreamReader.ReadLine)
    assert ps.output == ["a", "b", "c", "late"]


def test_unflushed_python_output_waits_for_the_buffer(pool: RunspacePool) -> None:
    # CPython writing to a pipe is block-buffered unless told otherwise (§2.3): the stand-in does
    # not set PYTHONUNBUFFERED for it.
    script = "import time; print('early'); time.sleep(3); print('late')"
    ps = py(pool, script)
    ps.begin_invoke()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        ps.poll_invoke(timeout=1)
        assert not ps.output  # 'early' sits in python's buffer until it exits
    finish(ps)
    assert ps.output == ["early", "late"]


def test_nonzero_exit_completes_and_no_message_carries_the_code(pool: RunspacePool) -> None:
    script = "import sys; print('out'); sys.stderr.write('bad\\nworse\\n'); sys.exit(7)"
    ps = py(pool, script)
    ps.invoke()
    assert ps.state == PSInvocationState.COMPLETED  # §3.2, §3.4
    assert ps.output == ["out"]
    assert [str(e) for e in ps.streams.error] == ["bad", "worse"]
    assert [e.fq_error for e in ps.streams.error] == ["NativeCommandError", "NativeCommandErrorMessage"]
    assert list(ps.streams.information) == []  # §3.5: no exit-code record


def test_pypsrp_stop_closes_the_command_and_the_spec_signal_stops_it(
    pool: RunspacePool, host: SimHost
) -> None:
    ps = py(pool, "import time; print('up', flush=True); time.sleep(60)")
    ps.begin_invoke()
    while not ps.output:
        ps.poll_invoke(timeout=2)
    ps.stop()  # pypsrp's "powershell/signal/ctrl_c": the plugin closes the command (§4.2)
    shell = next(s for s in host.shells() if s.id == str(pool.id).upper())
    assert _eventually(lambda: not running(host, "time.sleep(60)"))
    assert shell.commands() == []

    ps = py(pool, "import time; print('up', flush=True); time.sleep(60)")
    ps.begin_invoke()
    while not ps.output:
        ps.poll_invoke(timeout=2)
    pool.shell.signal("powershell/signal/crtl_c", str(ps.id).upper())  # the spec's spelling
    while ps.state == PSInvocationState.RUNNING:
        ps.poll_invoke(timeout=2)
    assert ps.state == PSInvocationState.STOPPED  # StopCommand: a final Stopped state
    assert _eventually(lambda: not running(host, "time.sleep(60)"))


@pytest.mark.parametrize("max_runspaces", [1, 2])
def test_pipelines_beyond_max_runspaces_wait(realm: Realm, host: SimHost, max_runspaces: int) -> None:
    with RunspacePool(wsman(host, realm), max_runspaces=max_runspaces) as pool:
        first = py(pool, "import time; print('first', flush=True); time.sleep(60)")
        first.begin_invoke()
        while not first.output:
            first.poll_invoke(timeout=2)
        second = py(pool, "print('second')")
        second.begin_invoke()
        end = time.monotonic() + 3
        while second.state == PSInvocationState.RUNNING and time.monotonic() < end:
            second.poll_invoke(timeout=1)
        if max_runspaces == 1:  # queued, not refused (§5.1)
            assert second.state == PSInvocationState.RUNNING and not second.output
            first.stop()
            finish(second)
        else:
            first.stop()
        assert second.state == PSInvocationState.COMPLETED and second.output == ["second"]


# -- Connect, Reconnect, Disconnect, SessionId (§6) -------------------------------------------
def _long_run(realm: Realm, host: SimHost) -> tuple[RunspacePool, PowerShell]:
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    ps = py(pool, "import time\nfor i in range(600):\n    print(i, flush=True); time.sleep(0.2)")
    ps.begin_invoke()
    while not ps.output:
        ps.poll_invoke(timeout=2)
    return pool, ps


def disconnect_shell(client: object, shell_id: str) -> None:
    """rsp:Disconnect of a 5.1 shell (pypsrp's own skips pools it never connected itself)."""
    _shell_request(client, "disconnect", shell_id)


def _shell_request(client: object, op: str, shell_id: str) -> None:
    """A bare ``rsp:<Op>`` on the shell: what the server must refuse before reading the body."""
    sel = SelectorSet()
    sel.add_option("ShellId", shell_id)
    body = ET.Element(f"{{{NAMESPACES['rsp']}}}{op.capitalize()}")
    getattr(client, op)(WINDOWS_POWERSHELL, body, selector_set=sel)


def _find(client: object, shell_id: str) -> RunspacePool:
    return next(p for p in RunspacePool.get_runspace_pools(client) if str(p.id).upper() == shell_id)  # type: ignore[arg-type]


def test_connect_to_a_connected_shell_faults_and_other_sessions_are_refused(
    realm: Realm, host: SimHost
) -> None:
    pool, ps = _long_run(realm, host)
    shell_id = str(pool.id).upper()
    try:
        other = wsman(host, realm)  # a new client: a new SessionId (pypsrp picks one per WSMan)
        with pytest.raises(WSManFaultError) as e:
            _find(other, shell_id).connect()  # MS-WSMV 3.1.4.17
        assert e.value.code == 2150859213
        with pytest.raises(WSManFaultError) as e:
            disconnect_shell(other, shell_id)
        assert e.value.code == 2150859213
        for op in ("receive", "send", "signal"):  # every other request of that session too
            with pytest.raises(WSManFaultError) as e:
                _shell_request(other, op, shell_id)
            assert e.value.code == 2150859213, op
        with pytest.raises(WSManFaultError) as e:  # MS-WSMV 3.1.4.16: another ClientId
            _shell_request(other, "reconnect", shell_id)
        assert e.value.code == 2150859206
        _shell_request(pool.connection, "reconnect", shell_id)  # its own session: ignored
        ps.poll_invoke(timeout=2)  # the owner carries on
        assert ps.state == PSInvocationState.RUNNING
    finally:
        pool.close()


def test_a_new_connection_of_the_same_session_disconnects_and_connects(realm: Realm, host: SimHost) -> None:
    pool, ps = _long_run(realm, host)
    shell_id = str(pool.id).upper()
    # the first client vanishes (no Disconnect): the shell stays connected (MS-WSMV 3.1.6.5)
    assert next(s for s in host.shells() if s.id == shell_id).state == "Connected"
    again = wsman(host, realm)
    again.session_id = pool.connection.session_id  # the same client session, new TCP connection
    disconnect_shell(again, shell_id)
    assert next(s for s in host.shells() if s.id == shell_id).state == "Disconnected"
    with pytest.raises(WSManFaultError) as e:  # a disconnected shell takes no Receive
        ps.poll_invoke(timeout=1)
    assert e.value.code == 2150859204
    newer = wsman(host, realm)  # any client of the owner may Connect to a disconnected shell
    found = _find(newer, shell_id)
    found.connect()
    resumed = found.create_disconnected_power_shells()[0]
    resumed.connect_async()
    before = len(resumed.output)
    resumed.poll_invoke(timeout=2)
    assert len(resumed.output) > before
    found.close()
    assert _eventually(lambda: not running(host, "range(600)"))


def test_idle_timeout_is_the_clients_within_the_hosts_bounds(realm: Realm, host: SimHost) -> None:
    def idle(asked: int | None) -> float:
        with RunspacePool(wsman(host, realm), idle_timeout=asked) as pool:
            return next(s for s in host.shells() if s.id == str(pool.id).upper()).idle_timeout

    assert idle(None) == host.quotas.IdleTimeout
    assert idle(90) == 90
    assert idle(10) == 60  # IdleTimeoutms: "minimum value MUST be 60000"
    assert idle(10**6) == host.quotas.IdleTimeout  # capped by the host's own setting (§7.3)


def test_an_idle_shell_is_deleted_with_its_processes(realm: Realm, host: SimHost) -> None:
    saved = host.quotas.IdleTimeout
    host.quotas.IdleTimeout = 2.0  # the host's own setting (tests shorten it)
    try:
        pool, _ = _long_run(realm, host)
        shell_id = str(pool.id).upper()
        # nobody asks for anything any more: idle from the end of the last request (§4.4)
        assert _eventually(lambda: all(s.id != shell_id for s in host.shells()), 10)
        assert _eventually(lambda: not running(host, "range(600)"))
    finally:
        host.quotas.IdleTimeout = saved


def test_powershell_7_is_there_only_where_it_was_installed(realm: Realm, sim: tuple[Realm, object]) -> None:
    from winexec.sim import SimCluster

    cluster = sim[1]
    assert isinstance(cluster, SimCluster)
    plain = cluster.add_host(powershell7=False)
    try:
        with pytest.raises(WSManFaultError):
            RunspacePool(wsman(plain, realm), configuration_name="PowerShell.7").open()
        with RunspacePool(wsman(plain, realm)) as pool:  # Microsoft.PowerShell is everywhere
            assert py(pool, "print('5.1')").invoke() == ["5.1"]
    finally:
        cluster.remove_host(plain.name)


def _eventually(check: object, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(check())  # type: ignore[operator]


def test_the_pool_tells_its_powershell_version_as_the_server_does(pool: RunspacePool) -> None:
    """APPLICATION_PRIVATE_DATA carries the server's $PSVersionTable, PSVersion the true version
    (PowerShell's ServerRunspacePoolDataStructureHandler.SendApplicationPrivateDataToClient)."""
    private = pool.application_private_data
    assert private is not None
    table = private.data["PSVersionTable"]
    if pool.configuration_name == "PowerShell.7":
        assert table["PSEdition"] == "Core" and str(table["PSVersion"]).startswith("7.")
    else:
        assert table["PSEdition"] == "Desktop" and str(table["PSVersion"]).startswith("5.1.")
        assert str(table["CLRVersion"]).startswith("4.0.30319")
    assert str(table["PSRemotingProtocolVersion"]) == "2.3"

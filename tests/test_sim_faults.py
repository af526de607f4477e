"""WinRM quotas with Windows' fault codes, and every injectable fault, seen through pypsrp."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import requests
from pypsrp.exceptions import WinRMTransportError, WSManFaultError
from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool

from tests import sim_fixtures
from tests.test_sim_endpoints import disconnect_shell
from winexec.sim import Quotas, SimCluster, SimHost
from winexec.sim.kdc import Realm
from winexec.sim.testing import wsman

PY = sys.executable
# the stand-in's shared fixtures (tests/sim_fixtures.py)
realm, sim = sim_fixtures.realm, sim_fixtures.sim
SIM_PRINCIPALS = ("airflow", "alice")
TICKER = "import time\nfor i in range(600):\n    print(i, flush=True)\n    time.sleep(0.1)\n"


@pytest.fixture
def host(sim: tuple[Realm, SimCluster]) -> Iterator[SimHost]:
    h = sim[1].hosts[0]
    yield h
    h.quotas = Quotas()
    h.faults.stall(0)
    h.faults.clock_skew(0)
    h.faults.thaw_processes()
    h.faults.kill_shells()


def start(pool: RunspacePool, script: str) -> PowerShell:
    ps = PowerShell(pool)
    ps.add_cmdlet(PY).add_argument("-c").add_argument(script)
    ps.begin_invoke()
    return ps


def wait_output(ps: PowerShell, n: int = 1, deadline: float = 15) -> None:
    end = time.monotonic() + deadline
    while len(ps.output) < n:
        assert time.monotonic() < end, "no output"
        ps.poll_invoke(timeout=2)


# -- quotas ---------------------------------------------------------------------------------
def test_max_shells_per_user(realm: Realm, host: SimHost) -> None:
    host.quotas.MaxShellsPerUser = 2
    pools = [RunspacePool(wsman(host, realm)) for _ in range(3)]
    pools[0].open()
    pools[1].open()
    with pytest.raises(WSManFaultError) as e:
        pools[2].open()
    assert e.value.code == 2150859173  # ERROR_WSMAN_QUOTA_MAX_SHELLS (0x803381A5)
    assert "This user is allowed a maximum number of 2 concurrent shells, which has been exceeded" in str(
        e.value.reason
    )
    pools[0].close()
    pools[2] = RunspacePool(wsman(host, realm))
    pools[2].open()  # a freed slot is usable again
    for p in pools[1:]:
        p.close()


def test_max_concurrent_users(realm: Realm, host: SimHost) -> None:
    """Windows' defaults are the strictest a source reports (README "Limits and faults")."""
    assert (Quotas().MaxShellsPerUser, Quotas().MaxConcurrentUsers, Quotas().MaxProcessesPerShell) == (
        25,
        5,
        15,
    )
    host.quotas.MaxConcurrentUsers = 1
    first = RunspacePool(wsman(host, realm, "airflow"))
    first.open()
    try:
        with pytest.raises(WSManFaultError) as e:
            RunspacePool(wsman(host, realm, "alice")).open()
        assert e.value.code == 2150859179  # ERROR_WSMAN_QUOTA_MAX_SHELLUSERS (0x803381AB)
        assert "maximum number of users concurrently performing remote operations" in str(e.value.reason)
        with RunspacePool(wsman(host, realm, "airflow")):
            pass  # a user already there may open more shells
    finally:
        first.close()
    with RunspacePool(wsman(host, realm, "alice")):
        pass  # the first user gone: room for another


def test_receive_with_nothing_to_say_is_operation_timeout(realm: Realm, host: SimHost) -> None:
    with RunspacePool(wsman(host, realm)) as pool:
        t0 = time.monotonic()
        with pytest.raises(WSManFaultError) as e:
            pool.shell.receive("stdout", timeout=1)
        assert e.value.code == 2150858793
        assert 0.9 < time.monotonic() - t0 < 3


def test_max_concurrent_operations_per_user(realm: Realm, host: SimHost) -> None:
    with RunspacePool(wsman(host, realm)) as pool:
        host.quotas.MaxConcurrentOperationsPerUser = 1

        def long_poll() -> None:
            with pytest.raises(WSManFaultError):
                pool.shell.receive("stdout", timeout=2)

        poll = threading.Thread(target=long_poll)
        poll.start()  # one long-poll in flight ...
        time.sleep(0.5)
        with pytest.raises(WSManFaultError) as e:  # ... and a second operation is over quota
            RunspacePool(wsman(host, realm)).open()
        assert e.value.code == 2150859174  # ERROR_WSMAN_QUOTA_MAX_OPERATIONS (0x803381A6)
        assert "maximum number of 1 concurrent operations" in str(e.value.reason)
        poll.join()
        host.quotas.MaxConcurrentOperationsPerUser = 1500


def test_max_processes_per_shell(realm: Realm, host: SimHost) -> None:
    host.quotas.MaxProcessesPerShell = 1
    with RunspacePool(wsman(host, realm), max_runspaces=2) as pool:  # the second runs beside the first
        first = start(pool, TICKER)
        wait_output(first)
        second = PowerShell(pool)
        second.add_cmdlet(PY).add_argument("-c").add_argument("print('never')")
        second.invoke()
        assert second.state == PSInvocationState.FAILED
        assert "Not enough quota is available to process this command" in str(second.streams.error[0])
        first.stop()


def test_max_memory_per_shell(realm: Realm, host: SimHost) -> None:
    host.quotas.MaxMemoryPerShellMB = 40
    with RunspacePool(wsman(host, realm)) as pool:
        ps = start(
            pool, "import time\nb = bytearray(120 * 1024 * 1024)\nprint('big', flush=True)\ntime.sleep(30)"
        )
        end = time.monotonic() + 15
        while ps.state == PSInvocationState.RUNNING:
            assert time.monotonic() < end
            ps.poll_invoke(timeout=2)
        assert ps.state == PSInvocationState.FAILED
        assert "MaxMemoryPerShellMB (40 MB)" in str(ps.streams.error[-1])


def test_idle_timeout_closes_shell(realm: Realm, host: SimHost) -> None:
    host.quotas.IdleTimeout = 1
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    assert host.shell_count == 1
    end = time.monotonic() + 5
    while host.shell_count:
        assert time.monotonic() < end
        time.sleep(0.2)
    with pytest.raises(WSManFaultError) as e:
        pool.shell.receive("stdout", timeout=1)
    assert e.value.code == 2150858843


def test_max_envelope_size(realm: Realm, host: SimHost) -> None:
    host.quotas.MaxEnvelopeSizekb = 16
    with RunspacePool(wsman(host, realm)) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet(PY).add_argument("-c").add_argument("x" * 40000)
        with pytest.raises(WinRMTransportError) as e:
            ps.invoke()
        assert e.value.code == 413  # the client's ERROR_WSMAN_HTTP_REQUEST_TOO_LARGE_STATUS


# -- faults ---------------------------------------------------------------------------------
def test_refuse_connections(realm: Realm, host: SimHost) -> None:
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    ps = start(pool, TICKER)
    wait_output(ps)
    host.faults.refuse(True)
    try:
        with pytest.raises(requests.exceptions.ConnectionError):
            RunspacePool(wsman(host, realm)).open()
        with pytest.raises(requests.exceptions.ConnectionError):
            ps.poll_invoke(timeout=1)  # open connections are reset too
        assert host.processes(), "refusing connections must not kill running work"
    finally:
        host.faults.refuse(False)
    with RunspacePool(wsman(host, realm)) as again:
        assert again.state == 2  # OPENED


def test_stall(realm: Realm, host: SimHost) -> None:
    host.faults.stall(3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        RunspacePool(wsman(host, realm, read_timeout=1)).open()
    host.faults.stall(0)
    with RunspacePool(wsman(host, realm)):
        pass


def test_drop_connection_mid_receive(realm: Realm, host: SimHost) -> None:
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    ps = start(pool, TICKER)
    wait_output(ps)
    host.faults.drop_next_receive()
    with pytest.raises(requests.exceptions.ConnectionError):
        ps.poll_invoke(timeout=2)
    assert host.processes(), "the pipeline keeps running when the client's connection dies"
    assert host.shell_count == 1
    # A fresh client of the same session (a new TCP connection) disconnects the shell, which is
    # still connected to it, then adopts the pipeline and keeps reading it.
    fresh = wsman(host, realm)
    fresh.session_id = pool.connection.session_id
    adopted = RunspacePool.get_runspace_pools(fresh)
    assert [str(p.id).upper() for p in adopted] == [str(pool.id).upper()]
    disconnect_shell(fresh, str(pool.id).upper())
    adopted[0].connect()
    again = adopted[0].create_disconnected_power_shells()[0]
    again.connect_async()
    wait_output(again, 2)
    assert int(again.output[-1]) > int(ps.output[-1])
    again.stop()


def test_kill_shells(realm: Realm, host: SimHost) -> None:
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    ps = start(pool, TICKER)
    wait_output(ps)
    pids = [p["pid"] for p in host.processes()]
    host.faults.kill_shells()
    assert host.shell_count == 0 and not host.processes()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    with pytest.raises(WSManFaultError) as e:
        ps.poll_invoke(timeout=2)
    assert e.value.code == 2150858843
    assert "shell was not found on the server" in str(e.value.reason)


def test_freeze_and_thaw(realm: Realm, host: SimHost) -> None:
    with RunspacePool(wsman(host, realm)) as pool:
        ps = start(pool, TICKER)
        wait_output(ps)
        host.faults.freeze_processes()
        pid = host.processes()[0]["pid"]
        end = time.monotonic() + 3
        while psutil.Process(pid).status() != psutil.STATUS_STOPPED:  # SIGSTOP lands asynchronously
            assert time.monotonic() < end
            time.sleep(0.02)
        time.sleep(0.3)
        with pytest.raises(WSManFaultError):  # nothing arrives while frozen
            while True:
                pool.shell.receive("stdout", command_id=ps._command_id, timeout=1)
        frozen_at = len(ps.output)
        host.faults.thaw_processes()
        wait_output(ps, frozen_at + 3)
        ps.stop()


def test_reboot(realm: Realm, host: SimHost) -> None:
    ports = (host.http_port, host.https_port)
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    ps = start(pool, TICKER)
    wait_output(ps)
    pid = host.processes()[0]["pid"]
    host.faults.down()
    assert not host.listening and host.shell_count == 0
    with pytest.raises(requests.exceptions.ConnectionError):
        RunspacePool(wsman(host, realm)).open()
    host.faults.up()
    assert (host.http_port, host.https_port) == ports
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with RunspacePool(wsman(host, realm, ssl=True)) as again:
        assert again.state == 2
    host.faults.reboot()
    assert host.listening and host.shell_count == 0


def test_clock_skew(realm: Realm, host: SimHost) -> None:
    host.faults.clock_skew(900)
    with pytest.raises(Exception, match=r"(?i)clock skew too great"):
        RunspacePool(wsman(host, realm)).open()
    host.faults.clock_skew(60)  # within the 5 minute tolerance
    with RunspacePool(wsman(host, realm)):
        pass

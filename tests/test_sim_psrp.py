"""The stand-in driven by the unmodified pypsrp client against a real KDC: PSRP native commands."""

from __future__ import annotations

import sys
import time

import psutil
import pytest
from pypsrp.exceptions import AuthenticationError
from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool

from tests import sim_fixtures
from winexec.sim import SimCluster, SimHost
from winexec.sim.kdc import Realm
from winexec.sim.testing import kinit, wsman

PY = sys.executable
# the stand-in's shared fixtures (tests/sim_fixtures.py)
host, realm, sim = sim_fixtures.host, sim_fixtures.realm, sim_fixtures.sim

SIM_HOSTS = 2
SIM_PRINCIPALS = ("airflow", "alice")


def run(ps: PowerShell, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while ps.state == PSInvocationState.RUNNING:
        assert time.monotonic() < end, "pipeline did not finish"
        ps.poll_invoke(timeout=2)


def py(pool: RunspacePool, script: str) -> PowerShell:
    ps = PowerShell(pool)
    ps.add_cmdlet(PY).add_argument("-c").add_argument(script)
    return ps


def error_texts(ps: PowerShell) -> list[str]:
    return [str(e) for e in ps.streams.error]


def test_unknown_command_fails_like_powershell(realm: Realm, host: SimHost) -> None:
    with RunspacePool(wsman(host, realm)) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-ChildItem").add_parameter("Path", "C:\\")
        ps.invoke()
        assert ps.state == PSInvocationState.FAILED
        assert error_texts(ps) == [
            "The term 'Get-ChildItem' is not recognized as the name of a cmdlet, function, script file, or "
            "operable program. Check the spelling of the name, or if a path was included, verify that the "
            "path is correct and try again."
        ]
        ps = PowerShell(pool)
        ps.add_script("Write-Output 'hi'")
        ps.invoke()
        assert ps.state == PSInvocationState.FAILED
        assert "The term 'Write-Output' is not recognized" in error_texts(ps)[0]


def _first_line(pool: RunspacePool, script: str) -> tuple[PowerShell, str]:
    """Start ``script`` and wait for the first line it prints."""
    ps = py(pool, script)
    ps.begin_invoke()
    end = time.monotonic() + 15
    while not ps.output:
        assert time.monotonic() < end
        ps.poll_invoke(timeout=2)
    return ps, str(ps.output[0])


def _until_gone(*pids: int, why: str) -> None:
    end = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < end, why
        time.sleep(0.05)


def test_stop_kills_the_whole_tree(realm: Realm, host: SimHost) -> None:
    script = (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with RunspacePool(wsman(host, realm)) as pool:
        ps, line = _first_line(pool, script)
        child = int(line)
        procs = host.processes()
        root = next(p for p in procs if p["argv"][:2] == [PY, "-c"] and "Popen" in p["argv"][2])
        assert {child, root["pid"]} <= {p["pid"] for p in procs}
        ps.stop()
        _until_gone(child, root["pid"], why="process tree survived stop()")
        assert not [p for p in host.processes() if p["pid"] in (child, root["pid"])]


def test_a_stop_misses_what_a_parent_left_and_the_shells_end_takes_it(realm: Realm, host: SimHost) -> None:
    """Facts §4.1: the stop kills the tree as parent PIDs link it then; an orphan lives on until
    its shell is deleted (§4.3-4.5), which is why the agent contains its task itself."""
    sleeper = f"[{PY!r}, '-c', 'import time; time.sleep(60)']"
    quiet = "stdin=s.DEVNULL, stdout=s.DEVNULL, stderr=s.DEVNULL"
    orphan = f"import subprocess as s; print(s.Popen({sleeper}, {quiet}).pid)"  # and exits
    script = (
        "import subprocess, sys, time\n"
        f"r = subprocess.run([{PY!r}, '-c', {orphan!r}], capture_output=True, text=True)\n"
        f"c = subprocess.Popen({sleeper})\n"
        "print(r.stdout.strip(), c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with RunspacePool(wsman(host, realm)) as pool:
        ps, line = _first_line(pool, script)
        left, child = (int(pid) for pid in line.split())
        ps.stop()
        _until_gone(child, why="the stop left the process's own child")
        time.sleep(0.5)
        assert not _gone(left), "the stop found a process whose parent had exited"
    _until_gone(left, why="the orphan outlived its shell")  # the pool's close deleted the shell


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _identity_script(other_spn: str) -> str:
    return (
        "import os, subprocess\n"
        "print(os.environ['USERNAME'], os.environ['USERDOMAIN'], flush=True)\n"
        f"r = subprocess.run(['kvno', {other_spn!r}], capture_output=True, text=True)\n"
        "print('kvno', r.returncode, flush=True)\n"
        "k = subprocess.run(['klist'], capture_output=True, text=True)\n"
        "print('klist', k.stdout.replace(chr(10), ' '), flush=True)\n"
    )


@pytest.mark.parametrize("delegate", [True, False])
def test_delegated_ticket_reaches_the_next_hop(
    realm: Realm, host: SimHost, sim: tuple[Realm, SimCluster], delegate: bool
) -> None:
    other = sim[1].hosts[1]
    with RunspacePool(wsman(host, realm, "alice", delegate=delegate)) as pool:
        ps = py(pool, _identity_script(f"HTTP/{other.name}@{realm.name}"))
        ps.invoke()
        assert ps.output[0] == f"alice {realm.name.split('.')[0]}"
        env = host.pipeline_log[-1]
        assert env["user"] == f"alice@{realm.name}" and env["delegated"] is delegate
        if delegate:
            assert ps.output[1] == "kvno 0"
            assert f"Default principal: alice@{realm.name}" in ps.output[2]
        else:
            assert ps.output[1] != "kvno 0"
            assert "Default principal" not in ps.output[2]


def test_process_env_has_no_server_secrets(realm: Realm, host: SimHost) -> None:
    with RunspacePool(wsman(host, realm)) as pool:
        ps = py(pool, "import time; print('up', flush=True); time.sleep(30)")
        ps.begin_invoke()
        while not ps.output:
            ps.poll_invoke(timeout=2)
        procs = [p for p in host.processes() if p["user"] == f"airflow@{realm.name}"]
        assert procs
        env = procs[0]["env"]
        assert env["KRB5CCNAME"].startswith("FILE:" + str(host.workdir))
        assert env["KRB5_CONFIG"] == str(realm.krb5_conf)
        assert "KRB5_KTNAME" not in env and "KRB5_CLIENT_KTNAME" not in env
        assert procs[0]["shell_id"] == str(pool.id).upper()
        ps.stop()


def test_https_with_certificate_validation(realm: Realm, host: SimHost) -> None:
    with RunspacePool(wsman(host, realm, ssl=True)) as pool:
        ps = py(pool, "print('over tls')")
        ps.invoke()
        assert ps.output == ["over tls"]


def test_https_rejects_untrusted_certificate(realm: Realm, host: SimHost) -> None:
    import requests

    with pytest.raises(requests.exceptions.SSLError):
        RunspacePool(wsman(host, realm, ssl=True, cert_validation=True)).open()


def test_ticket_for_another_host_is_rejected(realm: Realm, sim: tuple[Realm, SimCluster]) -> None:
    a, b = sim[1].hosts
    # Connect to host a's port with a ticket for host b's SPN: a cannot decrypt it.
    client = wsman(a, realm, negotiate_hostname_override=b.name)
    with pytest.raises(AuthenticationError, match=r"Failed to authenticate the user .*airflow"):
        RunspacePool(client).open()


def test_missing_spn_names_it(realm: Realm, host: SimHost) -> None:
    client = wsman(host, realm, negotiate_hostname_override=f"nosuch.{realm.domain}")
    with pytest.raises(Exception, match=f"host/nosuch.{realm.domain}@{realm.name} not found"):
        RunspacePool(client).open()


def test_unencrypted_http_is_refused(realm: Realm, host: SimHost) -> None:
    with pytest.raises(AuthenticationError):
        RunspacePool(wsman(host, realm, encryption="never")).open()


def test_kinit_helper_gives_forwardable_tgt(realm: Realm) -> None:
    import subprocess

    cc = kinit(realm, "airflow")
    out = subprocess.run(
        ["klist", "-f", "-c", f"FILE:{cc}"], capture_output=True, text=True, check=True
    ).stdout
    assert "F" in out.split("Flags:")[1].split()[0]


def test_spnego_negotiate_auth(realm: Realm, host: SimHost) -> None:
    # auth="negotiate" sends a SPNEGO token (pyspnego's own SPNEGO over Kerberos).
    with RunspacePool(wsman(host, realm, auth="negotiate")) as pool:
        ps = py(pool, "print('spnego')")
        assert ps.invoke() == ["spnego"]


def test_shell_id_reused_right_after_close(realm: Realm, host: SimHost) -> None:
    # A launcher retrying a run reuses its ShellId; the old shell's teardown must not touch the new one.
    import uuid

    shell_id = str(uuid.uuid4()).upper()
    for _ in range(2):
        pool = RunspacePool(wsman(host, realm, delegate=True))
        pool.id = pool.shell.id = shell_id
        pool.open()
        ps = PowerShell(pool)
        ps.add_cmdlet("klist")
        assert f"Default principal: airflow@{realm.name}" in ps.invoke()
        py(pool, "import time; time.sleep(30)").begin_invoke()
        pool.close()


def test_concurrent_logons_keep_their_own_delegated_tickets(
    realm: Realm, sim: tuple[Realm, SimCluster]
) -> None:
    import subprocess
    import threading

    users = ("airflow", "alice")
    ccaches = {u: kinit(realm, u) for u in users}
    pools: list[RunspacePool] = []
    lock = threading.Lock()

    def logon(i: int) -> None:
        user, host = users[i % 2], sim[1].hosts[(i // 2) % 2]
        pool = RunspacePool(wsman(host, realm, user, ccache=ccaches[user], delegate=True))
        pool.open()
        with lock:
            pools.append(pool)

    threads = [threading.Thread(target=logon, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        shells = [s for h in sim[1].hosts for s in h.shells()]
        assert len(shells) == 16
        for s in shells:
            out = subprocess.run(["klist", "-c", f"FILE:{s.ccache}"], capture_output=True, text=True).stdout
            assert f"Default principal: {s.owner.principal}" in out
    finally:
        for p in pools:
            p.close()

"""Windows-like mode of processes the stand-in starts, and the WinRS cmd shell via pywinrm."""

from __future__ import annotations

import sys
import time

import pytest
from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool

from tests import sim_fixtures
from winexec.sim import SimHost
from winexec.sim.kdc import Realm
from winexec.sim.testing import kinit, wsman

PY = sys.executable
# the stand-in's shared fixtures (tests/sim_fixtures.py)
host, realm, sim = sim_fixtures.host, sim_fixtures.realm, sim_fixtures.sim


def _run(host: SimHost, realm: Realm, script: str) -> PowerShell:
    with RunspacePool(wsman(host, realm)) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet(PY).add_argument("-c").add_argument(script)
        ps.invoke()
        return ps


def test_fork_is_missing(realm: Realm, host: SimHost) -> None:
    ps = _run(host, realm, "import os; os.fork()")
    assert ps.state == PSInvocationState.COMPLETED  # a failing native command does not fail 5.1's pipeline
    assert any("AttributeError: module 'os' has no attribute 'fork'" in str(e) for e in ps.streams.error)


def test_fcntl_is_unimportable(realm: Realm, host: SimHost) -> None:
    ps = _run(host, realm, "import fcntl")
    assert ps.state == PSInvocationState.COMPLETED
    assert any("ModuleNotFoundError: No module named 'fcntl'" in str(e) for e in ps.streams.error)


def test_whole_list_is_removed_and_portable_calls_work(realm: Realm, host: SimHost) -> None:
    script = (
        "import importlib, os, signal, subprocess, sys\n"
        "names = ['os.fork', 'os.forkpty', 'os.killpg', 'os.setpgid', 'os.setsid', 'os.getpgid',\n"
        "         'signal.SIGKILL', 'signal.SIGALRM', 'signal.SIGUSR1', 'signal.SIGUSR2',\n"
        "         'signal.setitimer']\n"
        "print(sorted(n for n in names if hasattr(sys.modules[n.split('.')[0]], n.split('.')[1])))\n"
        "bad = []\n"
        "for m in ['fcntl', 'pwd', 'grp', 'resource', 'termios']:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "        bad.append(m)\n"
        "    except ImportError:\n"
        "        pass\n"
        "print(bad)\n"
        f"p = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(30)'])\n"
        "p.kill(); print(p.wait() != 0)\n"
        "print(hasattr(signal, 'SIGTERM'), hasattr(os, 'kill'))\n"
    )
    ps = _run(host, realm, script)
    assert ps.output == ["[]", "[]", "True", "True True"], ps.streams.error


def test_psutil_works_but_its_posix_imports_do_not_leak(realm: Realm, host: SimHost) -> None:
    # psutil is cross-platform (a Windows backend on Windows); its Linux backend may import
    # `resource`, but code under test still cannot reach it through sys.modules.
    script = (
        "import psutil\n"
        "print(psutil.Process().memory_info().rss > 0)\n"
        "try:\n"
        "    import resource\n"
        "    print('leak')\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__)\n"
    )
    ps = _run(host, realm, script)
    assert ps.output == ["True", "ModuleNotFoundError"], ps.streams.error


def test_invalid_ntfs_names_are_refused_as_windows_does(realm: Realm, host: SimHost) -> None:
    # ERROR_INVALID_NAME (123), which CPython on Windows reports as errno EINVAL.
    script = (
        "import errno, os, pathlib, tempfile\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "(d / 'x').write_text('x')\n"
        "for what in [lambda: (d / 'run_id=scheduled__2026-01-01T00:00:00+00:00').mkdir(),\n"
        "             lambda: open(d / 'a|b.txt', 'w'), lambda: open(str(d / 'nul.txt'), 'w'),\n"
        "             lambda: open(d / 'trailing.', 'w'), lambda: os.rename(d / 'x', d / 'x:y')]:\n"
        "    try:\n"
        "        what()\n"
        "        print('created')\n"
        "    except OSError as e:\n"
        "        print(e.errno == errno.EINVAL, e.winerror, e.strerror)\n"
        "(d / 'run_id=scheduled__2026-01-01T00%3A00%3A00+00%3A00').mkdir()\n"
        "os.rename(d / 'x', d / 'run_id=scheduled__2026-01-01T00%3A00%3A00+00%3A00' / 'attempt=1.log')\n"
        "print(sorted(p.name for p in d.rglob('*')))\n"
    )
    ps = _run(host, realm, script)
    refused = "True 123 The filename, directory name, or volume label syntax is incorrect"
    assert ps.output == [refused] * 5 + [
        "['attempt=1.log', 'run_id=scheduled__2026-01-01T00%3A00%3A00+00%3A00']"
    ], ps.streams.error


def test_off_switch(realm: Realm, host: SimHost) -> None:
    host.windows_like = False
    try:
        ps = _run(host, realm, "import os, fcntl; print(hasattr(os, 'fork'))")
    finally:
        host.windows_like = True
    assert ps.output == ["True"]


def test_pywinrm_cmd_shell(realm: Realm, host: SimHost, monkeypatch: pytest.MonkeyPatch) -> None:
    winrm = pytest.importorskip("winrm")
    pytest.importorskip("kerberos", reason="pywinrm's kerberos transport needs pykerberos")
    cc = kinit(realm, "airflow")
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{cc}")
    session = winrm.Session(
        f"http://{host.address}:{host.http_port}/wsman",
        auth=(f"airflow@{realm.name}", None),
        transport="kerberos",
        kerberos_hostname_override=host.name,
        message_encryption="auto",
    )
    r = session.run_cmd("echo", ["out-$USERNAME;", "echo", "err", ">&2;", "exit", "4"])
    assert r.std_out == b"out-airflow\n"
    assert r.std_err == b"err\n"
    assert r.status_code == 4
    r = session.run_cmd("echo", ["fine"])
    assert (r.std_out, r.status_code) == (b"fine\n", 0)
    assert host.shell_count == 0  # run_cmd closes its shell
    tls = winrm.Session(
        f"https://{host.address}:{host.https_port}/wsman",
        auth=(f"airflow@{realm.name}", None),
        transport="kerberos",
        kerberos_hostname_override=host.name,
        server_cert_validation="validate",
        ca_trust_path=str(host.ca_cert),
    )
    r = tls.run_cmd("echo", ["tls"])
    assert (r.std_out, r.status_code) == (b"tls\n", 0)


def test_cmd_shell_streams_each_send_to_the_running_command(realm: Realm, host: SimHost) -> None:
    """MS-WSMV 3.1.4.13: Send pipes input to a running command as it comes; End ends it."""
    from pypsrp.shell import CommandState, Process, WinRS

    with WinRS(wsman(host, realm)) as shell:
        proc = Process(shell, "cat")
        proc.begin_invoke()
        proc.send(b"first\n", end=False)
        deadline = time.monotonic() + 10
        while b"first" not in proc.stdout and time.monotonic() < deadline:
            proc.poll_invoke(timeout=1)
        assert proc.stdout == b"first\n" and proc.state == CommandState.RUNNING  # still reading
        proc.send(b"second\n", end=True)
        proc.end_invoke()
        assert (proc.stdout, proc.rc) == (b"first\nsecond\n", 0)

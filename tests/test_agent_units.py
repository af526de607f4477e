"""The agent's parts without an Airflow stack: shims, containment, run markers, CLI contract."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.agent_helpers import REPO, WINDOWSLIKE
from winexec.agent import compat, spool
from winexec.agent.containment import Containment
from winexec.protocol import Exit, Start, parse_line


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="winexec-agent-unit-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _windowslike(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WINDOWSLIKE), str(REPO)]), **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


# -- compat ------------------------------------------------------------------------------------
def test_compat_is_a_no_op_on_posix() -> None:
    before = signal.SIGKILL
    assert compat.install() == []
    assert signal.SIGKILL is before
    assert compat.install_fcntl() is False
    assert compat.is_kill_signal(signal.SIGKILL) and not compat.is_kill_signal(signal.SIGTERM)


def test_compat_fills_in_what_windows_lacks() -> None:
    res = _windowslike(
        "import os, signal, sys\n"
        "from winexec.agent import compat\n"
        "added = compat.install_runner()\n"
        "import fcntl\n"
        "with open(sys.executable, 'rb') as f:\n"
        "    fcntl.flock(f, fcntl.LOCK_SH); fcntl.flock(f, fcntl.LOCK_UN)\n"
        "timeout = os.environ['AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT']\n"
        "print(added, signal.SIGKILL, compat.is_kill_signal(9), timeout)\n"
        "import airflow.sdk.execution_time.task_runner\n"
        "try:\n"
        "    import pwd\n"
        "except ImportError:\n"
        "    print('pwd still refused')\n"
    )
    assert res.returncode == 0, res.stderr
    assert "['signal.SIGKILL', 'fcntl', 'dagbag_import_timeout=0'] 9 True 0" in res.stdout
    assert "pwd still refused" in res.stdout


# -- containment -------------------------------------------------------------------------------
_SLEEP = "import time; time.sleep(300)"
_MIDDLE = (
    f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {_SLEEP!r}]); time.sleep(300)"
)
_TREE = (
    "import subprocess, sys, time\n"
    f"child = subprocess.Popen([sys.executable, '-c', {_MIDDLE!r}])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def _wait_for_tree(proc: subprocess.Popen[bytes], size: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        if len(pids) >= size:
            return pids
        time.sleep(0.1)
    raise AssertionError("tree did not start")


def _all_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]:
            return True
        time.sleep(0.1)
    return False


def test_containment_kills_the_whole_tree_and_keeps_the_exit_status() -> None:
    c = Containment()
    proc = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, **c.popen_kwargs())
    c.adopt(proc)
    pids = _wait_for_tree(proc, 3)
    assert set(pids) <= set(c.snapshot())
    c.kill()
    assert _all_gone(pids)
    # psutil must not have reaped our child behind Popen's back: the status is the kill's.
    assert proc.wait(5) == -signal.SIGKILL
    c.close()


def test_containment_finds_descendants_orphaned_by_their_parent() -> None:
    c = Containment()
    proc = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, **c.popen_kwargs())
    c.adopt(proc)
    pids = _wait_for_tree(proc, 3)
    c.snapshot()
    middle = int(proc.stdout.readline()) if proc.stdout else 0
    os.kill(middle, signal.SIGKILL)  # its child is re-parented away from the tree
    time.sleep(0.3)
    c.kill()
    assert _all_gone(pids)


def test_containment_terminate_is_polite() -> None:
    c = Containment()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], **c.popen_kwargs())
    c.adopt(proc)
    c.terminate()
    assert proc.wait(10) == -signal.SIGTERM


# -- spool -------------------------------------------------------------------------------------
def test_spool_claim_is_exclusive_and_findable(work: Path) -> None:
    m, fresh = spool.claim("ti-1", 1, "run-a", base=work, launch_key="k1")
    assert fresh and m.data["run_id"] == "run-a"
    again, fresh2 = spool.claim("ti-1", 1, "run-b", base=work, launch_key="k1")
    assert not fresh2 and again.data["run_id"] == "run-a"
    _, fresh3 = spool.claim("ti-1", 2, "run-c", base=work, launch_key="k1")
    assert fresh3
    m.update(task_pid=123, state="running")
    found = spool.find("run-a", base=work)
    assert found is not None and found.data["task_pid"] == 123
    assert spool.find("nope", base=work) is None
    assert found.stop_requested() is None
    found.request_stop("because")
    assert m.stop_requested() == "because"


def test_spool_claim_is_keyed_by_try_and_launch_key(work: Path) -> None:
    """A retried launch (same key) is a duplicate; a re-queue of the try (new key) is not."""
    ti = "0199c0de-0000-7000-8000-000000000001"
    first, fresh = spool.claim(ti, 3, "run-a", base=work, launch_key="k1")
    again, fresh2 = spool.claim(ti, 3, "run-b", base=work, launch_key="k1")
    assert fresh and not fresh2 and again.data["run_id"] == "run-a"
    first.update(state="success", finished=time.time())
    poke2, fresh3 = spool.claim(ti, 3, "run-c", base=work, launch_key="k2")  # e.g. a reschedule
    assert fresh3 and poke2.data["launch_key"] == "k2" and poke2.path != first.path
    assert spool.find("run-a", base=work) is not None and spool.find("run-c", base=work) is not None
    # No key: the run id is the key (old callers), so each launch claims its own marker.
    _, fresh4 = spool.claim(ti, 3, "run-d", base=work)
    _, fresh5 = spool.claim(ti, 3, "run-d", base=work)
    assert fresh4 and not fresh5
    # Names stay NTFS-safe whatever the key holds; distinct keys never share a name.
    _, odd = spool.claim(ti, 3, "run-e", base=work, launch_key='a:b\\c/"*?<>|' + "x" * 300)
    _, odd2 = spool.claim(ti, 3, "run-f", base=work, launch_key="a:b")
    assert odd and odd2
    for path in work.iterdir():
        assert re.fullmatch(r"[A-Za-z0-9.-]+", path.name) and len(path.name) < 120, path.name


def test_spool_dir_is_this_principals_own_folder_in_the_run_folder(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WINEXEC_SPOOL", str(work / "s"))
    monkeypatch.setenv("USERDOMAIN", "CORP")
    monkeypatch.setenv("USERNAME", "alice")
    with pytest.raises(spool.SpoolError, match=r"does not exist; an administrator creates it once"):
        spool.spool_dir()
    assert spool.prepare_root() == work / "s" and stat.S_IMODE((work / "s").stat().st_mode) == 0o1777
    mine = spool.spool_dir()
    assert mine == work / "s" / "CORP-alice" and stat.S_IMODE(mine.stat().st_mode) == 0o700
    mine.chmod(0o755)  # loosened by someone: made private again on the next start
    assert stat.S_IMODE(spool.spool_dir().stat().st_mode) == 0o700
    (work / "s").chmod(0o777)  # writable by all without the sticky bit: anyone could remove entries
    with pytest.raises(spool.SpoolError, match=r"without the sticky bit.*chmod \+t"):
        spool.spool_dir()


def test_the_agent_sets_a_private_acl_on_windows(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    """Windows: the principal's folder gets inheritance removed and full control for SYSTEM,
    Administrators and the account only; the run folder lets Users add and read entries, and
    each entry belongs to its creator. Run through icacls (its argv checked here)."""
    calls: list[list[str]] = []

    def run(argv: list[str], **kw: Any) -> Any:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(spool, "IS_WINDOWS", True)
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setenv("WINEXEC_SPOOL", str(work / "runs"))
    monkeypatch.setenv("SystemRoot", "C:\\Windows")
    monkeypatch.setenv("USERDOMAIN", "CORP")
    monkeypatch.setenv("USERNAME", "alice")
    spool.prepare_root()
    assert [c[2:] for c in calls] == [
        [
            "/inheritance:r",
            "/grant:r",
            "*S-1-5-18:(OI)(CI)F",
            "*S-1-5-32-544:(OI)(CI)F",
            "*S-1-3-0:(OI)(CI)(IO)F",
            "*S-1-5-32-545:(RD,WD,AD,REA,X,RA,RC,S)",
        ],
        ["/grant", "*S-1-5-32-545:(OI)(NP)(IO)R"],
    ]
    calls.clear()
    mine = spool.spool_dir()
    assert calls == [
        [
            os.path.join("C:\\Windows", "System32", "icacls.exe"),
            str(mine),
            "/inheritance:r",
            "/grant:r",
            "*S-1-5-18:(OI)(CI)F",
            "*S-1-5-32-544:(OI)(CI)F",
            "CORP\\alice:(OI)(CI)F",
        ]
    ]
    monkeypatch.setattr(
        subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 5, "", "Access is denied.")
    )
    with pytest.raises(spool.SpoolError, match=r"cannot set the ACL of .*Access is denied"):
        spool.spool_dir()  # a folder of that name another account made first


# -- the CLI contract --------------------------------------------------------------------------
def _agent(stdin: bytes, work: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(WINDOWSLIKE), str(REPO)]),
        "WINEXEC_SPOOL": str(work),
    }
    return subprocess.run(
        [sys.executable, "-m", "winexec.agent", *args], input=stdin, env=env, capture_output=True, timeout=120
    )


def test_a_bad_first_line_gets_an_error_exit_without_echoing_it(work: Path) -> None:
    secret = "eyJ-very-secret-token"
    res = _agent(b'{"v":1,"type":"start","workload":{"token":"' + secret.encode() + b'"', work)
    assert res.returncode == 2
    (line,) = res.stdout.splitlines()
    ex = parse_line(line)
    assert isinstance(ex, Exit) and ex.state == "error"
    assert secret.encode() not in res.stdout + res.stderr


def test_an_invalid_workload_is_an_error_and_the_token_stays_secret(work: Path) -> None:
    secret = "eyJ-another-secret"
    start = Start(workload={"token": secret, "ti": {"id": "not-a-uuid"}}, run_id="r1")
    res = _agent(start.to_line().encode(), work)
    msgs = [parse_line(x) for x in res.stdout.splitlines()]
    assert msgs and isinstance(msgs[-1], Exit) and msgs[-1].state == "error"
    assert secret.encode() not in res.stdout + res.stderr
    assert secret not in repr(start)


def test_first_line_must_be_start(work: Path) -> None:
    res = _agent(b'{"v":1,"type":"heartbeat","run_id":"r"}\n', work)
    ex = parse_line(res.stdout.splitlines()[-1])
    assert isinstance(ex, Exit) and ex.state == "error" and "start" in ex.reason


def test_an_agent_never_sent_its_start_line_gives_up(work: Path) -> None:
    """A launch whose command reached the host but whose start line did not (the host went silent
    in between) must not leave an agent waiting forever."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(WINDOWSLIKE), str(REPO)]),
        "WINEXEC_SPOOL": str(work),
    }
    code = "import sys, winexec.agent.main as m; m.START_LINE_TIMEOUT = 1.0; sys.exit(m.main([]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        proc.wait(timeout=60)  # stdin stays open: no EOF, just silence
    finally:
        proc.kill()
    assert proc.stdout is not None and proc.stdin is not None
    out = proc.stdout.read()
    proc.stdin.close()
    assert proc.returncode == 2
    ex = parse_line(out.splitlines()[-1])
    assert isinstance(ex, Exit) and ex.state == "error" and "no start line within 1 s" in ex.reason


def test_self_check_is_one_json_line(work: Path) -> None:
    res = _agent(b"", work, "--self-check")
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.splitlines()
    info = json.loads(line)
    for key in ("python", "task_sdk", "delegated", "principal", "memory_free", "disk_free", "platform"):
        assert key in info
    assert info["delegated"] is False  # tests never have a ticket in the default cache


def test_self_check_sees_a_delegated_tgt(realm: object, work: Path) -> None:
    from winexec.sim.kdc import Realm

    assert isinstance(realm, Realm)
    principal = realm.principal("alice")
    keytab = realm.add_principal("alice")
    ccache = work / "cc"
    kinit = shutil.which("kinit") or "/usr/bin/kinit"
    env = {**os.environ, **realm.env(), "KRB5CCNAME": f"FILE:{ccache}"}
    subprocess.run([kinit, "-k", "-t", str(keytab), principal], env=env, check=True, timeout=30)
    res = subprocess.run(
        [sys.executable, "-m", "winexec.agent", "--self-check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    info = json.loads(res.stdout)
    assert info["delegated"] is True and info["principal"] == principal


def test_status_of_an_unknown_run(work: Path) -> None:
    res = _agent(b"", work, "--status", "no-such-run")
    assert json.loads(res.stdout) == {"found": False, "run_id": "no-such-run"}


def test_the_agent_imports_only_the_task_sdk_of_airflow() -> None:
    """Our own code names ``airflow.sdk`` only (the SDK itself still pulls in core, see report)."""
    for path in (REPO / "winexec" / "agent").glob("*.py"):
        for mod in re.findall(r"^\s*(?:from|import) (airflow[\w.]*)", path.read_text(), re.M):
            assert mod.startswith("airflow.sdk"), f"{path.name} imports {mod}"


def test_admission_ranks_live_agents_of_this_computer_by_ticket(tmp_path: Path) -> None:
    """Slot entries of live agents count, each agent once at its earliest entry; entries of
    finished runs are gone, a dead agent's and another computer's do not count, a fresh entry
    still being written counts as ahead, an old unreadable one (junk) does not."""
    me = psutil.Process()
    mine = (me.pid, me.create_time())

    def marker(name: str, started: float) -> spool.Marker:
        body = {"run_id": name, "started": started, "computer": "WIN01"}
        return spool.Marker(tmp_path / f"{name}.json", body)

    def entry(name: str, started: float, agent: tuple[Any, Any], computer: str = "WIN01") -> Path:
        path = tmp_path / f"{name}.slot"
        body = {"run_id": name, "started": started, "computer": computer}
        path.write_text(json.dumps({**body, "agent_pid": agent[0], "agent_create_time": agent[1]}))
        return path

    other = (os.getppid(), psutil.Process(os.getppid()).create_time())  # a live agent, not us
    alive = lambda pid, ct: psutil.pid_exists(pid)  # noqa: E731
    entry("ahead", 1.0, other)
    entry("dead", 0.5, (2**22 + 7, 1.0))
    entry("elsewhere", 0.6, other, computer="WIN02")
    entry("forged-for-the-other", 0.7, other)  # another entry for the same agent: still one
    first = marker("first", 2.0)
    assert not spool.take_slot(first, 1, alive, tmp_path)
    assert "slot" not in first.data and not list(tmp_path.glob("*first*"))  # backed off, entry gone
    assert spool.take_slot(first, 2, alive, tmp_path)
    assert mine in {(d["agent_pid"], d["agent_create_time"]) for d in spool.slot_entries(tmp_path)}
    spool.release_slot(first)
    assert mine not in {(d["agent_pid"], d["agent_create_time"]) for d in spool.slot_entries(tmp_path)}
    junk = tmp_path / "junk.slot"
    junk.write_text("{not json")
    again = marker("again", 4.0)
    assert not spool.take_slot(again, 2, alive, tmp_path)  # fresh: maybe still being written
    os.utime(junk, (time.time() - 60, time.time() - 60))
    assert spool.take_slot(again, 2, alive, tmp_path)  # old junk counts for nothing


def test_an_agent_that_claimed_first_but_ranks_last_stands_behind_the_runs_already_admitted(
    tmp_path: Path,
) -> None:
    """Two schedulers' agents race for a host's last slot: the one that claimed its run first
    (``started``) but was slower to add its slot entry must not rank ahead of the one that came
    in between and was admitted, or both would run (over-admission); and an entry still choosing
    its ticket counts as ahead."""
    other = (os.getppid(), psutil.Process(os.getppid()).create_time())
    alive = lambda pid, ct: psutil.pid_exists(pid)  # noqa: E731
    slow = spool.Marker(
        tmp_path / "slow.json", {"run_id": "slow", "started": time.time(), "computer": "WIN01"}
    )
    time.sleep(0.01)
    fast = spool.Marker(
        tmp_path / "fast.json", {"run_id": "fast", "started": time.time(), "computer": "WIN01"}
    )
    assert spool.take_slot(fast, 1, alive, tmp_path)  # the host's one slot, while slow was descheduled
    entry = Path(fast.data["slot"])  # it is another agent's (here all are this process)
    entry.write_text(
        json.dumps({**json.loads(entry.read_text()), "agent_pid": other[0], "agent_create_time": other[1]})
    )
    assert not spool.take_slot(slow, 1, alive, tmp_path)  # its earlier claim buys it no place ahead
    spool.release_slot(fast)
    body = {"run_id": "choosing", "started": 0.0, "computer": "WIN01", "ticket": None}
    (tmp_path / "choosing.slot").write_text(
        json.dumps({**body, "agent_pid": other[0], "agent_create_time": other[1]})
    )
    assert not spool.take_slot(slow, 1, alive, tmp_path)
    assert spool.take_slot(slow, 2, alive, tmp_path)
    assert json.loads(Path(slow.data["slot"]).read_text())["ticket"] > 0 and not list(tmp_path.glob("*.tmp"))


def test_forged_entries_make_a_run_count_for_more_never_for_less(tmp_path: Path) -> None:
    """Another principal's files in the shared folder: an entry naming our agent with no ticket
    does not put our run ahead of one already admitted, a huge ticket does not make the next
    ticket tie with it, and a ticket that is not a whole number counts as ahead."""
    other = (os.getppid(), psutil.Process(os.getppid()).create_time())
    me = psutil.Process()
    alive = lambda pid, ct: psutil.pid_exists(pid)  # noqa: E731

    def entry(name: str, agent: tuple[Any, Any], ticket: Any) -> None:
        body = {"run_id": name, "computer": "WIN01", "ticket": ticket, "started": 0.0}
        body.update(agent_pid=agent[0], agent_create_time=agent[1])
        (tmp_path / f"{name}.slot").write_text(json.dumps(body))

    def marker(name: str) -> spool.Marker:
        return spool.Marker(
            tmp_path / f"{name}.json", {"run_id": name, "started": time.time(), "computer": "WIN01"}
        )

    entry("admitted", other, 10**30)  # running, with a huge ticket
    entry("forged-for-me", (me.pid, me.create_time()), None)
    late = marker("late")
    assert not spool.take_slot(late, 1, alive, tmp_path)  # not ahead of the admitted run
    assert spool.take_slot(late, 2, alive, tmp_path)
    assert json.loads(Path(late.data["slot"]).read_text())["ticket"] == 10**30 + 1
    spool.release_slot(late)
    entry("admitted", other, 1.5)  # not a whole number: ahead, whatever it says
    again = marker("again")
    assert not spool.take_slot(again, 1, alive, tmp_path)
    assert spool.take_slot(again, 2, alive, tmp_path)


def test_admission_weighs_each_run_by_the_slots_it_takes(tmp_path: Path) -> None:
    """A heavy task (``pool_slots``) is admitted only where its weight fits after the runs ahead
    of it; an entry claiming more than the host's slots weighs the slots, not more."""
    other = (os.getppid(), psutil.Process(os.getppid()).create_time())
    alive = lambda pid, ct: psutil.pid_exists(pid)  # noqa: E731
    body = {"run_id": "ahead", "started": 1.0, "computer": "WIN01", "weight": 2}
    (tmp_path / "ahead.slot").write_text(
        json.dumps({**body, "agent_pid": other[0], "agent_create_time": other[1]})
    )
    heavy = spool.Marker(tmp_path / "heavy.json", {"run_id": "heavy", "started": 2.0, "computer": "WIN01"})
    assert not spool.take_slot(heavy, 4, alive, tmp_path, weight=3)  # 2 ahead + 3 > 4
    assert spool.take_slot(heavy, 5, alive, tmp_path, weight=3)  # 2 + 3 fits in 5
    assert json.loads(Path(heavy.data["slot"]).read_text())["weight"] == 3
    spool.release_slot(heavy)
    light = spool.Marker(tmp_path / "light.json", {"run_id": "light", "started": 3.0, "computer": "WIN01"})
    assert spool.take_slot(light, 3, alive, tmp_path)  # weight 1: 2 + 1 fits in 3
    spool.release_slot(light)
    body["weight"] = 99  # forged: weighs at most the host's slots
    (tmp_path / "ahead.slot").write_text(
        json.dumps({**body, "agent_pid": other[0], "agent_create_time": other[1]})
    )
    assert not spool.take_slot(light, 3, alive, tmp_path)


# -- file names on the host --------------------------------------------------------------------
AIRFLOW_LOG = "dag_id=d/run_id=scheduled__2026-01-01T00:00:00+00:00/task_id=t/attempt=1.log"
TRICKY = ["a:b", "a%3Ab", "a%b", "a%25b", "CON", "%43ON", "con.txt", "x.", "x%2E", "x ", 'q"<>|?*\\\x01', "."]


def test_host_path_encodes_what_ntfs_refuses() -> None:
    from winexec.protocol import host_path

    assert host_path(AIRFLOW_LOG) == (
        "dag_id=d/run_id=scheduled__2026-01-01T00%3A00%3A00+00%3A00/task_id=t/attempt=1.log"
    )
    assert host_path("a:b/100%") == "a%3Ab/100%25"
    assert host_path("CON/nul.txt/Lpt1/com9.tar.gz/CONX/console") == (
        "%43ON/%6Eul.txt/%4Cpt1/%63om9.tar.gz/CONX/console"
    )
    assert host_path("trailing./space /a..") == "trailing%2E/space%20/a.%2E"
    assert host_path('q"<>|?*\\\x01') == "q%22%3C%3E%7C%3F%2A%5C%01"
    assert host_path("plain/dag_id=d/attempt=1.log") == "plain/dag_id=d/attempt=1.log"


def test_host_path_is_injective() -> None:
    from winexec.protocol import host_path

    mapped = [host_path(name) for name in TRICKY]
    assert len(set(mapped)) == len(TRICKY), mapped
    assert host_path("a:b") != host_path("a%3Ab") and host_path("CON") != host_path("%43ON")
    for name, out in zip(TRICKY, mapped, strict=True):  # every '%' starts an escape: decoding gives it back
        assert re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), out) == name


def test_host_path_names_pass_the_windows_like_checks(work: Path) -> None:
    names = [AIRFLOW_LOG, *(f"d/{n}" for n in TRICKY if n != ".")]
    code = (
        "import os, sys\n"
        "from winexec.protocol import host_path\n"
        "for rel in sys.argv[1:]:\n"
        f"    path = os.path.join({str(work)!r}, host_path(rel))\n"
        "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "    open(path, 'w').close()\n"
        "try:\n"
        f"    os.makedirs(os.path.join({str(work)!r}, 'raw', sys.argv[1]))\n"
        "except OSError as e:\n"
        "    print(e.winerror)\n"
    )
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WINDOWSLIKE), str(REPO)])}
    r = subprocess.run(
        [sys.executable, "-c", code, *names], env=full, capture_output=True, text=True, timeout=120
    )
    assert (r.returncode, r.stdout) == (0, "123\n"), r.stderr


def test_read_log_finds_the_host_file_when_asked_with_the_airflow_path(work: Path) -> None:
    from winexec.agent import hostlog
    from winexec.protocol import host_path

    host_file = work / host_path(AIRFLOW_LOG)
    host_file.parent.mkdir(parents=True)
    host_file.write_text("line one\nline two\n")
    page = hostlog.read_log({"path": AIRFLOW_LOG}, base=work)
    assert page["found"] and page["data"] == "line one\nline two\n" and page["eof"], page
    assert hostlog.safe_log_path(work, AIRFLOW_LOG) == host_file.resolve()
    assert not hostlog.read_log({"path": "dag_id=d/../../etc/passwd"}, base=work)["found"]
    assert hostlog.read_log({"path": AIRFLOW_LOG.replace("t/", "other/")}, base=work) == {
        "found": False,
        "path": AIRFLOW_LOG.replace("t/", "other/"),
    }

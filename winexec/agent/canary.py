"""``python -m winexec.agent --canary``: what a task needs from this host, tried as this principal.

Run by ``airflow winexec check --canary`` in a WinRM shell of every configured principal, so each
check runs in the logon a task of that principal gets: a fresh Task SDK import (timed: a task pays
it on every start), a contained process tree created and killed (the Job Object on Windows), the
principal's private run folder, and a file named as Airflow names a scheduled run's log (NTFS
refuses ``:``). The answer carries the self-check too (interpreter, packages, the logon's tickets
as the host's ``klist`` shows them). Each check is one ``{"name", "ok", "detail", "fix"}``; none
raises.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from winexec.agent import hostinfo, spool
from winexec.agent.containment import IS_WINDOWS, Containment
from winexec.protocol import host_path

#: A scheduled run's log path as Airflow writes it: the ``:`` of its timestamp is no NTFS name.
SCHEDULED_LOG = "dag_id=canary/run_id=scheduled__2026-01-01T00:00:00+00:00/task_id=t/attempt=1.log"
#: Seconds the Task SDK's import may take before the check calls it slow for a task start.
SLOW_IMPORT = 10.0

Check = dict[str, Any]


def _check(name: str, ok: bool, detail: str, fix: str = "") -> Check:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


def sdk_import() -> Check:
    """A fresh interpreter imports the task runner, as every task's runner does."""
    code = (
        "import time; t = time.perf_counter()\n"
        "from winexec.agent import compat; compat.install_runner()\n"
        "import airflow.sdk.execution_time.task_runner\n"
        "print(round(time.perf_counter() - t, 3))\n"
    )
    t0 = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return _check(
            "Task SDK import", False, f"cannot start {sys.executable}: {e}", "check [winexec] python"
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return _check(
            "Task SDK import",
            False,
            f"the task runner does not import: {last}",
            "pip install winexec (it brings apache-airflow-task-sdk) for this interpreter",
        )
    took = float(done.stdout.strip() or 0.0)
    total = time.monotonic() - t0
    slow = (
        f"; slow for a task start (over {SLOW_IMPORT:g} s): the host is slow or overloaded (antivirus "
        "scanning site-packages is common): exclude the Python install from real-time scanning, or "
        "give the host more CPU"
        if took >= SLOW_IMPORT
        else ""
    )
    # slow is worth saying, not failing: the tasks still run, only later
    detail = f"{took:.2f} s (interpreter start included: {total:.2f} s); every task's start pays it"
    return _check("Task SDK import", True, detail + slow)


def containment() -> Check:
    """A child that starts a grandchild, as python.exe's venv launcher starts the real interpreter:
    both must be in the container (the Job Object on Windows) and both gone after the kill."""
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    box = Containment()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            **box.popen_kwargs(),
        )
        box.adopt(proc)
    except OSError as e:
        return _check(
            "process tree",
            False,
            f"cannot start a contained process: {e}",
            "the account may not create Job Objects here; see the error",
        )
    kind = "Job Object" if IS_WINDOWS else "session"
    try:
        grandchild = _first_line(proc, 15)
        inside = grandchild.isdigit() and box.contains(int(grandchild))
        box.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        pids = (proc.pid, int(grandchild) if grandchild.isdigit() else 0)
        survivors = [pid for pid in pids if spool.alive(pid)]
    finally:
        if proc.poll() is None:  # the check itself failed: at least the root does not outlive it
            with contextlib.suppress(OSError):
                proc.kill()
        box.close()
    if not grandchild.isdigit():
        return _check("process tree", False, "the child never started its own child", "report this")
    if not inside:
        return _check(
            "process tree",
            False,
            f"a grandchild (pid {grandchild}) started outside the {kind}: a task's processes "
            "could escape its stop",
            "report this with the Windows version; a task's tree would not be stopped whole",
        )
    return _check(
        "process tree",
        not survivors,
        f"a child and its child in one {kind}, killed whole"
        + (f"; still alive: {survivors}" if survivors else ""),
        "report this: a task's processes could outlive it",
    )


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line ``proc`` writes, or "" after ``timeout`` (a pipe cannot be polled on Windows)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline() if proc.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return got[0].strip() if got else ""


def run_folder() -> Check:
    try:
        mine = spool.spool_dir()
    except OSError as e:
        return _check("run folder", False, str(e), f"as an administrator: {spool.PREPARE}")
    if IS_WINDOWS:  # pragma: no cover - the ACL as Windows reports it
        acl = subprocess.run(
            [os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "icacls.exe"), str(mine)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        detail = " ".join(acl.stdout.split())
    else:
        st = mine.stat()
        detail = f"{mine}: mode {oct(st.st_mode & 0o7777)}, owner uid {st.st_uid}, private to this account"
    return _check("run folder", True, detail)


def ntfs_names() -> Check:
    base = Path(tempfile.gettempdir()) / "winexec-canary"
    target = base / host_path(SCHEDULED_LOG)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("canary")
        target.unlink()
    except OSError as e:
        return _check("NTFS-safe paths", False, f"cannot write {target}: {e}", "report this with the path")
    finally:
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(base)
    return _check(
        "NTFS-safe paths", True, f"a scheduled run's log path written as {host_path(SCHEDULED_LOG)}"
    )


CHECKS: tuple[Callable[[], Check], ...] = (sdk_import, containment, run_folder, ntfs_names)


def run() -> dict[str, Any]:
    from winexec.agent import compat

    compat.install()  # the agent's own environment for a task, as `serve` has it
    checks = []
    for check in CHECKS:
        try:
            checks.append(check())
        except Exception as e:  # a canary reports; it never takes the host's word for granted
            checks.append(_check(check.__name__, False, f"{type(e).__name__}: {e}", "report this"))
    # the self-check's facts (interpreter, packages, the logon's tickets) come along: one logon
    facts = hostinfo.self_check(spool.usable_spool_dir())
    return {"ok": all(c["ok"] for c in checks), "checks": checks, "self_check": facts}

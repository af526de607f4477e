"""Keep the task's whole process tree under the agent's control, and kill all of it.

Windows: a Job Object with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``; every descendant inherits the
job, ``TerminateJobObject`` kills them all, and if the agent itself dies the handle closes and
Windows kills the tree. The task process never runs outside the job: it is created suspended
(``CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP``), :meth:`Containment.adopt` creates the job,
``AssignProcessToJobObject`` puts the process in it, and only then are its threads resumed. In a
venv, ``python.exe`` is a launcher that starts the real interpreter as its child; a launcher
assigned after it ran could have started that child outside the job. If the job cannot be made,
the assignment fails or the resume fails, the process is killed (it has run no code) and the
error raised. Stopping politely is ``CTRL_BREAK_EVENT`` to the task's process group (the root
pid, thanks to ``CREATE_NEW_PROCESS_GROUP``); the runner routes the resulting ``SIGBREAK`` to the
Task SDK's ``SIGTERM`` handler, so the operator's ``on_kill`` runs. Killing terminates the job.
All calls into kernel32 go through :class:`_JobObject`, whose function table is one argument.

POSIX: ``Popen(start_new_session=True)`` (done in C by ``_posixsubprocess``, so it still works
where the stand-in removed ``os.setsid``/``os.setpgid``), then the tree is found with psutil --
descendants of the root plus anything still in the root's session, which catches processes
re-parented after their parent died. ``os.killpg`` is not used.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from ctypes import wintypes
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - the Task SDK requires psutil
    psutil = None  # type: ignore[assignment]

IS_WINDOWS = sys.platform == "win32"

#: ``CreateProcess`` flags (``subprocess`` has the first on Windows only, the second nowhere).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_SUSPENDED = 0x00000004
#: ``signal.CTRL_BREAK_EVENT`` exists on Windows only; the value is the Win32 constant.
CTRL_BREAK_EVENT: int = getattr(signal, "CTRL_BREAK_EVENT", 1)


class _BASIC_LIMIT(ctypes.Structure):
    """``JOBOBJECT_BASIC_LIMIT_INFORMATION``; DWORDs are spelled 32-bit so the layout is Windows'
    on every platform (``wintypes.DWORD`` is ``c_ulong``, 64-bit on Linux)."""

    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class _IO_COUNTERS(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint64)
        for n in (
            "ReadOperationCount",
            "WriteOperationCount",
            "OtherOperationCount",
            "ReadTransferCount",
            "WriteTransferCount",
            "OtherTransferCount",
        )
    ]


class _EXTENDED_LIMIT(ctypes.Structure):
    """``JOBOBJECT_EXTENDED_LIMIT_INFORMATION`` (144 bytes on x64, 112 on x86)."""

    _fields_ = [
        ("BasicLimitInformation", _BASIC_LIMIT),
        ("IoInfo", _IO_COUNTERS),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


def _load_kernel32() -> Any:  # pragma: no cover - Windows only
    """kernel32 with the prototypes :class:`_JobObject` uses (``ctypes.WinDLL`` is Windows-only)."""
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    k32.CreateJobObjectW.restype = wintypes.HANDLE
    k32.CreateJobObjectW.argtypes = [ctypes.c_void_p, wintypes.LPCWSTR]
    k32.SetInformationJobObject.restype = wintypes.BOOL
    k32.SetInformationJobObject.argtypes = [wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p, wintypes.DWORD]
    k32.AssignProcessToJobObject.restype = wintypes.BOOL
    k32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
    k32.TerminateJobObject.restype = wintypes.BOOL
    k32.TerminateJobObject.argtypes = [wintypes.HANDLE, wintypes.UINT]
    k32.CloseHandle.restype = wintypes.BOOL
    k32.CloseHandle.argtypes = [wintypes.HANDLE]
    k32.OpenProcess.restype = wintypes.HANDLE
    k32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    k32.IsProcessInJob.restype = wintypes.BOOL
    k32.IsProcessInJob.argtypes = [wintypes.HANDLE, wintypes.HANDLE, ctypes.POINTER(wintypes.BOOL)]
    return k32


def _win_error(call: str) -> OSError:
    """The ``OSError`` for a failed kernel32 ``call`` (``winerror`` set on Windows)."""
    code = int(getattr(ctypes, "get_last_error", lambda: 0)())
    describe = getattr(ctypes, "FormatError", None)
    text = describe(code).strip() if describe is not None and code else f"error {code}"
    return OSError(None, f"{call} failed: {text}", None, code)


class _JobObject:
    """The kernel32 boundary: create (kill-on-close), assign, terminate, close.

    ``k32`` is the function table -- ``None`` loads the real kernel32; tests pass a fake.
    """

    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
    JobObjectExtendedLimitInformation = 9
    PROCESS_QUERY_LIMITED_INFORMATION = 0x1000

    def __init__(self, k32: Any = None) -> None:
        self._k32 = _load_kernel32() if k32 is None else k32
        handle = self._k32.CreateJobObjectW(None, None)
        if not handle:
            raise _win_error("CreateJobObjectW")
        self._handle: int | None = handle
        info = _EXTENDED_LIMIT()
        info.BasicLimitInformation.LimitFlags = self.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if not self._k32.SetInformationJobObject(
            handle, self.JobObjectExtendedLimitInformation, ctypes.byref(info), ctypes.sizeof(info)
        ):
            err = _win_error("SetInformationJobObject")
            self.close()
            raise err

    def assign(self, proc: subprocess.Popen[Any]) -> None:
        handle = int(proc._handle)  # type: ignore[attr-defined]
        if not self._k32.AssignProcessToJobObject(self._handle, handle):
            raise _win_error("AssignProcessToJobObject")

    def terminate(self, code: int = 1) -> None:
        if self._handle:
            self._k32.TerminateJobObject(self._handle, code)

    def contains(self, pid: int) -> bool:
        """``IsProcessInJob`` for ``pid`` and this job (not any job: WinRM's own holds the shell)."""
        process = self._k32.OpenProcess(self.PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        if not process:
            return False  # gone (or never ours to open)
        try:
            result = wintypes.BOOL(0)
            if not self._k32.IsProcessInJob(process, self._handle, ctypes.byref(result)):
                raise _win_error("IsProcessInJob")
            return bool(result.value)
        finally:
            self._k32.CloseHandle(process)

    def close(self) -> None:
        if self._handle:
            self._k32.CloseHandle(self._handle)
            self._handle = None


def _resume_process(pid: int) -> None:
    """Resume the threads of a process created suspended (Windows).

    psutil's ``Process.resume()`` is ``NtResumeProcess``: every thread's suspend count drops by one,
    so the primary thread of a ``CREATE_SUSPENDED`` process (count 1, the only thread) starts.
    ``Popen`` closed the thread handle ``CreateProcess`` returned, so there is no ``ResumeThread``
    handle to hand.
    """
    if psutil is None:  # pragma: no cover - the Task SDK requires psutil
        raise OSError(f"cannot resume process {pid}: psutil is not installed")
    try:
        psutil.Process(pid).resume()
    except psutil.Error as e:
        raise OSError(f"cannot resume process {pid}: {e}") from e


class Containment:
    """The task's process tree: start it contained, ask it to stop, kill it whole."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[Any] | None = None
        self._job: _JobObject | None = None
        self._known: dict[int, Any] = {}  # pid -> psutil.Process seen in the tree (POSIX)

    # -- launch ---------------------------------------------------------------------------
    @staticmethod
    def popen_kwargs() -> dict[str, Any]:
        """Arguments for ``subprocess.Popen`` that put the child in its own group/session.

        On Windows the child is created suspended: :meth:`adopt` must follow, or it never runs.
        """
        if IS_WINDOWS:
            return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_SUSPENDED}
        return {"start_new_session": True}

    def adopt(self, proc: subprocess.Popen[Any]) -> None:
        """Take the freshly started ``proc`` (and everything it will start) into the container.

        Windows: job, assign, then resume; on any failure the never-run process is killed, the job
        closed and the error raised.
        """
        self._proc = proc
        if not IS_WINDOWS:
            self.snapshot()
            return
        job: _JobObject | None = None
        try:
            job = _JobObject()
            job.assign(proc)
            _resume_process(proc.pid)
        except BaseException:
            with contextlib.suppress(OSError):
                proc.kill()  # TerminateProcess: still suspended, it has run no code
            if job is not None:
                job.close()  # kill-on-close: nothing is left in it either way
            raise
        self._job = job

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- inspection -----------------------------------------------------------------------
    def snapshot(self) -> list[int]:
        """Refresh and return the pids of the live tree (POSIX; remembered for :meth:`kill`)."""
        if self._proc is None or psutil is None or IS_WINDOWS:
            return [self._proc.pid] if self._proc and self._proc.poll() is None else []
        root = self._proc.pid
        found: dict[int, Any] = {}
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(root)
            found[root] = p
            for c in p.children(recursive=True):
                found[c.pid] = c
        getsid = getattr(os, "getsid", None)
        if getsid is not None:
            for pid in psutil.pids():
                if pid in found:
                    continue
                with contextlib.suppress(OSError, psutil.Error):
                    if getsid(pid) == root:
                        found[pid] = psutil.Process(pid)
        for pid, p in list(self._known.items()):
            if pid not in found:
                with contextlib.suppress(psutil.Error):
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        found[pid] = p
        self._known = found
        alive = []
        for pid, p in found.items():
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return sorted(alive)

    def contains(self, pid: int) -> bool:
        """Whether ``pid`` is in the container now: in the task's Job Object on Windows, in the
        tree or session seen on POSIX. (The canary asks it of a grandchild.)"""
        if self._job is not None:
            return self._job.contains(pid)
        return pid in self.snapshot()

    # -- stopping -------------------------------------------------------------------------
    def terminate(self) -> None:
        """Ask politely: SIGTERM to every process of the tree.

        Windows: ``CTRL_BREAK_EVENT`` to the task's process group (its root pid), which every
        process of the group sharing the agent's console receives; the runner makes it the SDK's
        ``SIGTERM`` (``on_kill``). Where it cannot be delivered (no console shared with the task),
        there is no polite way: the job is terminated at once rather than after a useless grace.
        """
        if self._proc is None:
            return
        if IS_WINDOWS:
            try:
                self._proc.send_signal(CTRL_BREAK_EVENT)
            except OSError:
                self.kill()
            return
        if psutil is None:  # pragma: no cover
            with contextlib.suppress(OSError):
                self._proc.terminate()
            return
        self.snapshot()
        for p in list(self._known.values()):
            with contextlib.suppress(psutil.Error, OSError):
                p.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the whole tree now. Safe to call repeatedly and from any thread."""
        if self._proc is None:
            return
        if self._job is not None:  # Windows: TerminateJobObject, every process of the job
            self._job.terminate()
            return
        if psutil is None:  # pragma: no cover
            with contextlib.suppress(OSError):
                self._proc.kill()
            return
        for _ in range(3):  # a dying parent may still fork; go round until nothing is left
            self.snapshot()
            procs = list(self._known.values())
            if not procs:
                break
            for p in procs:
                with contextlib.suppress(psutil.Error, OSError):
                    p.kill()
            # Never let psutil wait() for the root: it is our child, and reaping it would steal
            # the exit status from Popen (which then reports 0 -- a killed task as "success").
            root = self._proc.pid
            with contextlib.suppress(psutil.Error):
                psutil.wait_procs([p for p in procs if p.pid != root], timeout=2)
            deadline = time.monotonic() + 2
            while self._proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.05)

    def close(self) -> None:
        """Release the container (Windows: closing the job kills anything left in it)."""
        if self._job is not None:
            self._job.close()
            self._job = None

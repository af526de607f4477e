"""Keep the task's whole process tree under the agent's control, and kill all of it.

Windows: a Job Object with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``; every descendant inherits the
job, ``TerminateJobObject`` kills them all, and if the agent itself dies the handle closes and
Windows kills the tree. The launched process is assigned right after ``CreateProcess``; the
runner is a Python interpreter that starts nothing in its first milliseconds.

POSIX: ``Popen(start_new_session=True)`` (done in C by ``_posixsubprocess``, so it still works
where the stand-in removed ``os.setsid``/``os.setpgid``), then the tree is found with psutil --
descendants of the root plus anything still in the root's session, which catches processes
re-parented after their parent died. ``os.killpg`` is not used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - the Task SDK requires psutil
    psutil = None  # type: ignore[assignment]

IS_WINDOWS = sys.platform == "win32"


class _JobObject:  # pragma: no cover - exercised on Windows only
    """Minimal ctypes wrapper: create, set kill-on-close, assign, terminate, close."""

    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
    JobObjectExtendedLimitInformation = 9

    def __init__(self) -> None:
        import ctypes
        from ctypes import wintypes

        class BASIC(ctypes.Structure):
            _fields_ = [
                ("PerProcessUserTimeLimit", ctypes.c_int64),
                ("PerJobUserTimeLimit", ctypes.c_int64),
                ("LimitFlags", wintypes.DWORD),
                ("MinimumWorkingSetSize", ctypes.c_size_t),
                ("MaximumWorkingSetSize", ctypes.c_size_t),
                ("ActiveProcessLimit", wintypes.DWORD),
                ("Affinity", ctypes.c_size_t),
                ("PriorityClass", wintypes.DWORD),
                ("SchedulingClass", wintypes.DWORD),
            ]

        class IO_COUNTERS(ctypes.Structure):
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

        class EXTENDED(ctypes.Structure):
            _fields_ = [
                ("BasicLimitInformation", BASIC),
                ("IoInfo", IO_COUNTERS),
                ("ProcessMemoryLimit", ctypes.c_size_t),
                ("JobMemoryLimit", ctypes.c_size_t),
                ("PeakProcessMemoryUsed", ctypes.c_size_t),
                ("PeakJobMemoryUsed", ctypes.c_size_t),
            ]

        k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        k32.CreateJobObjectW.restype = wintypes.HANDLE
        k32.CreateJobObjectW.argtypes = [ctypes.c_void_p, wintypes.LPCWSTR]
        k32.SetInformationJobObject.restype = wintypes.BOOL
        k32.SetInformationJobObject.argtypes = [
            wintypes.HANDLE,
            ctypes.c_int,
            ctypes.c_void_p,
            wintypes.DWORD,
        ]
        k32.AssignProcessToJobObject.restype = wintypes.BOOL
        k32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
        k32.TerminateJobObject.restype = wintypes.BOOL
        k32.TerminateJobObject.argtypes = [wintypes.HANDLE, wintypes.UINT]
        k32.CloseHandle.restype = wintypes.BOOL
        k32.CloseHandle.argtypes = [wintypes.HANDLE]
        self._ctypes = ctypes
        self._k32 = k32
        handle = k32.CreateJobObjectW(None, None)
        if not handle:
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        self._handle: int | None = handle
        info = EXTENDED()
        info.BasicLimitInformation.LimitFlags = self.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if not k32.SetInformationJobObject(
            handle, self.JobObjectExtendedLimitInformation, ctypes.byref(info), ctypes.sizeof(info)
        ):
            err = ctypes.get_last_error()  # type: ignore[attr-defined]
            k32.CloseHandle(handle)
            raise ctypes.WinError(err)  # type: ignore[attr-defined]

    def assign(self, proc: subprocess.Popen[Any]) -> None:
        handle = int(proc._handle)  # type: ignore[attr-defined]
        if not self._k32.AssignProcessToJobObject(self._handle, handle):
            raise self._ctypes.WinError(self._ctypes.get_last_error())  # type: ignore[attr-defined]

    def terminate(self, code: int = 1) -> None:
        if self._handle:
            self._k32.TerminateJobObject(self._handle, code)

    def close(self) -> None:
        if self._handle:
            self._k32.CloseHandle(self._handle)
            self._handle = None


class Containment:
    """The task's process tree: start it contained, ask it to stop, kill it whole."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[Any] | None = None
        self._job: _JobObject | None = None
        self._known: dict[int, Any] = {}  # pid -> psutil.Process seen in the tree (POSIX)

    # -- launch ---------------------------------------------------------------------------
    @staticmethod
    def popen_kwargs() -> dict[str, Any]:
        """Arguments for ``subprocess.Popen`` that put the child in its own group/session."""
        if IS_WINDOWS:  # pragma: no cover
            return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
        return {"start_new_session": True}

    def adopt(self, proc: subprocess.Popen[Any]) -> None:
        """Take the freshly started ``proc`` (and everything it will start) into the container."""
        self._proc = proc
        if IS_WINDOWS:  # pragma: no cover
            self._job = _JobObject()
            self._job.assign(proc)
        else:
            self.snapshot()

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

    # -- stopping -------------------------------------------------------------------------
    def terminate(self) -> None:
        """Ask politely: SIGTERM to every process of the tree (Windows: end the root process)."""
        if self._proc is None:
            return
        if IS_WINDOWS or psutil is None:  # pragma: no cover
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
        if self._job is not None:  # pragma: no cover
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
        if self._job is not None:  # pragma: no cover
            self._job.close()
            self._job = None

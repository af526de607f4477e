"""Narrow shims for the POSIX-only names the Task SDK reaches for on the agent's path.

Each shim is a no-op where the name exists (POSIX), so behaviour there is unchanged.

* ``signal.SIGKILL``: ``ActivitySubprocess._on_child_started`` calls ``self.kill(signal.SIGKILL)``
  when the API refuses the start, and ``WatchedSubprocess.kill`` builds its escalation list
  ``[SIGINT, SIGTERM, SIGKILL]``; both raise ``AttributeError`` on Windows, masking the real error.
  The agent's subprocess class overrides ``kill`` (tree kill through the Job Object), so the
  value only needs to exist and be recognisable: :data:`SIGKILL_FALLBACK`.
* ``fcntl`` (task process only): ``task_runner`` imports ``airflow.dag_processing.bundles.base``,
  which does ``import fcntl`` at module level for ``flock`` on bundle lock files. Windows has no
  ``fcntl``; :func:`install_fcntl` registers a module with the four ``LOCK_*`` names and a
  ``flock`` built on ``LockFileEx``/``UnlockFileEx`` (a no-op where neither exists, i.e. the
  stand-in's windows-like mode on Linux).
* ``signal.SIGALRM`` (task process only): the DAG file importer
  (``airflow.dag_processing.importers.python_importer._timeout``) arms ``SIGALRM`` and catches
  only ``ValueError``, so on Windows every DAG import fails with ``AttributeError``.
  :func:`install_runner` sets ``[core] dagbag_import_timeout = 0`` there (the importer then skips
  the alarm); the agent bounds the whole task from outside anyway.
* ``run_as_user`` / ``[core] default_impersonation`` (task process only): ``task_runner.startup``
  re-executes itself through ``sudo -u <user>`` when that name differs from ``getuser()``. On a
  Windows host the WinRM logon already is the task's identity (the executor chose the principal
  from ``run_as_user``), and there is no ``sudo``: :func:`install_runner` sets the SDK's own
  "already re-executed" flag, ``_AIRFLOW__REEXECUTED_PROCESS=1``, without a stored startup
  message, so the runner reads its startup message from the supervisor as usual and never
  re-executes. (The same flag makes ``airflow.settings`` skip the ORM, which the task process
  must not use anyway.)
"""

from __future__ import annotations

import os
import signal
import sys
import types
from typing import Any

#: Stand-in value for ``signal.SIGKILL`` where the platform has none (Windows): 9, as on POSIX.
SIGKILL_FALLBACK = 9


def install() -> list[str]:
    """Add the missing names the SDK needs; return what was added (empty on POSIX)."""
    added: list[str] = []
    if not hasattr(signal, "SIGKILL"):
        signal.SIGKILL = SIGKILL_FALLBACK  # type: ignore[misc,assignment]
        added.append("signal.SIGKILL")
    return added


def is_kill_signal(sig: int) -> bool:
    """Whether ``sig`` asks for a hard kill (``SIGKILL`` or its stand-in)."""
    return int(sig) == int(getattr(signal, "SIGKILL", SIGKILL_FALLBACK))


LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8


def _flock(f: Any, op: int) -> None:
    """``fcntl.flock`` on Windows: whole-file ``LockFileEx`` (shared/exclusive, optionally non-blocking)."""
    if sys.platform != "win32":
        return  # windows-like mode on POSIX: nothing to lock with, and nothing contends in tests
    import ctypes  # pragma: no cover - Windows only
    import msvcrt
    from ctypes import wintypes

    class OVERLAPPED(ctypes.Structure):
        _fields_ = [
            ("Internal", ctypes.c_size_t),
            ("InternalHigh", ctypes.c_size_t),
            ("Offset", wintypes.DWORD),
            ("OffsetHigh", wintypes.DWORD),
            ("hEvent", wintypes.HANDLE),
        ]

    k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    fd = f if isinstance(f, int) else f.fileno()
    handle = wintypes.HANDLE(msvcrt.get_osfhandle(fd))  # type: ignore[attr-defined]
    ov = OVERLAPPED()
    if op & LOCK_UN:
        ok = k32.UnlockFileEx(handle, 0, 0xFFFFFFFF, 0xFFFFFFFF, ctypes.byref(ov))
        if not ok and ctypes.get_last_error() != 158:  # type: ignore[attr-defined]  # ERROR_NOT_LOCKED
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        return
    flags = (0x2 if op & LOCK_EX else 0) | (0x1 if op & LOCK_NB else 0)
    if not k32.LockFileEx(handle, flags, 0, 0xFFFFFFFF, 0xFFFFFFFF, ctypes.byref(ov)):
        err = ctypes.get_last_error()  # type: ignore[attr-defined]
        if err in (33, 997):  # ERROR_LOCK_VIOLATION, ERROR_IO_PENDING
            raise BlockingIOError(err, "lock held elsewhere")
        raise ctypes.WinError(err)  # type: ignore[attr-defined]


def install_fcntl() -> bool:
    """Make ``import fcntl`` work where it does not (Windows); return whether the shim went in."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        pass
    else:
        return False
    mod = types.ModuleType("fcntl", "winexec shim: flock only (see winexec.agent.compat)")
    for name, value in (
        ("LOCK_SH", LOCK_SH),
        ("LOCK_EX", LOCK_EX),
        ("LOCK_NB", LOCK_NB),
        ("LOCK_UN", LOCK_UN),
    ):
        setattr(mod, name, value)
    mod.flock = _flock  # type: ignore[attr-defined]
    mod.__winexec_shim__ = True  # type: ignore[attr-defined]  # tells the stand-in it is no real fcntl
    sys.modules["fcntl"] = mod
    return True


def install_threaded_supervisor() -> None:
    """Let ``supervise_task`` run off the main thread (a warm agent's runs each have one).

    ``ActivitySubprocess.wait`` swaps the ``SIGTERM``/``SIGINT`` handlers around its loop to
    forward them to the task (``signal.signal``), which Python allows on the main thread only
    (``ValueError`` elsewhere). Off the main thread the swap is skipped: a warm agent stops its
    tasks through their containments, and nothing signals a warm agent to stop a task.
    """
    import threading

    from airflow.sdk.execution_time import supervisor

    real = signal

    class _Signals(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def signal(signalnum: Any, handler: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                return real.signal(signalnum, handler)
            return real.getsignal(signalnum)

    supervisor.signal = _Signals("signal")  # type: ignore[attr-defined]


def install_runner() -> list[str]:
    """Everything the task process needs: :func:`install`, :func:`install_fcntl`, no SIGALRM
    timeout, no ``sudo`` re-exec for ``run_as_user``."""
    added = install()
    if install_fcntl():
        added.append("fcntl")
    if not hasattr(signal, "SIGALRM"):
        os.environ["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"] = "0"
        added.append("dagbag_import_timeout=0")
    os.environ.pop("_AIRFLOW__STARTUP_MSG", None)
    os.environ["_AIRFLOW__REEXECUTED_PROCESS"] = "1"  # the logon is the identity: never sudo
    return added

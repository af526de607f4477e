"""Per-host run markers: refuse a second start of the same launch, and let a later agent find a run.

One JSON file per (task instance id, try number, launch key), created with ``O_EXCL`` so exactly
one agent wins when the executor retries a launch whose first attempt may have reached the host
(an ambiguous launch retried, possibly on the same host): every attempt for one accepted workload
carries the same launch key. A legitimate re-queue of the same try (a reschedule-mode sensor's
next poke, a deferred task resuming after its trigger fired) is a new workload with a new key,
so it claims its own marker. It records the launch's ``run_id``, the agent's pid, the task's pid
and the outcome, which is what ``--status``/``--stop`` need. A stop request is a sibling
``.stop`` file the running agent polls, so stopping works across users and platforms without
signals.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Markers older than this are removed opportunistically; a try is never restarted that late.
MAX_AGE_SECONDS = 14 * 24 * 3600


def spool_dir() -> Path:
    """``$WINEXEC_SPOOL``, else ``%ProgramData%\\winexec\\runs`` (Windows) or ``<tmp>/winexec-runs``."""
    if env := os.environ.get("WINEXEC_SPOOL"):
        base = Path(env)
    elif sys.platform == "win32":  # pragma: no cover
        base = Path(os.environ.get("ProgramData", r"C:\ProgramData")) / "winexec" / "runs"
    else:
        base = Path(tempfile.gettempdir()) / "winexec-runs"
    base.mkdir(parents=True, exist_ok=True)
    return base


@dataclass
class Marker:
    path: Path
    data: dict[str, Any]

    @property
    def stop_path(self) -> Path:
        return self.path.with_suffix(".stop")

    @property
    def log_path(self) -> Path:
        return self.path.with_suffix(".log")

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` and rewrite atomically (readers never see a half-written file)."""
        self.data.update(fields)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        os.replace(tmp, self.path)

    def stop_requested(self) -> str | None:
        try:
            return self.stop_path.read_text() or "stop requested"
        except OSError:
            return None

    def request_stop(self, reason: str) -> None:
        self.stop_path.write_text(reason)


#: Longest launch key used as is in a marker's name; longer ones are hashed (NTFS: 255 per name).
_MAX_KEY = 64


def _safe(text: str) -> str:
    return "".join(c for c in text if c.isascii() and (c.isalnum() or c == "-"))


def _key(ti_id: str, try_number: int, launch_key: str) -> str:
    """``<ti>.try<N>.<key>``: ASCII letters, digits, ``-`` and ``.`` only (NTFS-safe)."""
    key = _safe(launch_key)
    if not key or len(key) > _MAX_KEY or key != launch_key:  # never let two keys share a name
        key = hashlib.sha256(launch_key.encode()).hexdigest()[:32]
    return f"{_safe(ti_id)}.try{int(try_number)}.{key}"


def claim(
    ti_id: str,
    try_number: int,
    run_id: str,
    base: Path | None = None,
    extra: dict[str, Any] | None = None,
    launch_key: str = "",
) -> tuple[Marker, bool]:
    """Create the marker for this launch; return ``(marker, True)`` or ``(existing, False)``.

    ``launch_key`` names the executor's workload, the same for every attempt to launch it;
    ``""`` means ``run_id`` (this launch alone). ``extra`` (which computer, which task, as whom)
    is for ``--runs``, what operators see.
    """
    base = base or spool_dir()
    _cleanup(base)
    launch_key = launch_key or run_id
    path = base / f"{_key(ti_id, try_number, launch_key)}.json"
    data = {
        "run_id": run_id,
        "launch_key": launch_key,
        "ti_id": ti_id,
        "try_number": try_number,
        "agent_pid": os.getpid(),
        "task_pid": None,
        "started": time.time(),
        "state": "starting",
        **(extra or {}),
    }
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return Marker(path, _read(path)), False
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, sort_keys=True)
    return Marker(path, data), True


def _read(path: Path) -> dict[str, Any]:
    for _ in range(20):  # the winner may be between O_EXCL and its first write
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(path.read_text()))
        time.sleep(0.05)
    return {}


def find(run_id: str, base: Path | None = None) -> Marker | None:
    """The marker of the launch named ``run_id``, if this host has one."""
    base = base or spool_dir()
    for path in base.glob("*.json"):
        data = _read(path)
        if data.get("run_id") == run_id:
            return Marker(path, data)
    return None


def admitted(marker: Marker, slots: int, alive: Callable[[Any, Any], bool], base: Path | None = None) -> bool:
    """Whether ``marker``'s run is among the first ``slots`` live runs of this computer.

    Admission on the host, not only counted by one scheduler: every agent claims its marker
    first (atomic), then ranks the live markers of its computer by claim time; all agents see
    the same order, so of two racing for the last slot exactly the later one backs off. A marker
    still being written counts as ahead of us (never over-admit).
    """
    base = base or spool_dir()
    me = marker.data.get("computer")
    mine = (marker.data["started"], marker.data["run_id"])
    ahead = 0
    for path in base.glob("*.json"):
        if path == marker.path:
            continue
        data = _read(path)
        if data and (data.get("finished") or data.get("state") not in ("starting", "running")):
            continue
        if data and data.get("computer") not in (None, me):
            continue  # another computer's marker in a shared spool (the stand-in's hosts)
        if data and not alive(data.get("agent_pid"), data.get("agent_create_time")):
            continue
        if not data or (data.get("started", 0.0), data.get("run_id", "")) < mine:
            ahead += 1
    return ahead < slots


def _cleanup(base: Path) -> None:
    cutoff = time.time() - MAX_AGE_SECONDS
    for path in base.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()

"""Host-side answers for operators and the api-server: which winexec runs are active, and log pages.

Both run as short ``python -m winexec.agent`` commands over the same authenticated WinRM channel as
tasks (``--runs``, ``--read-log``). A log page request arrives on stdin as one JSON line, never on
the command line: a task's log path contains DAG, run and task ids, and Windows PowerShell 5.1
re-quotes native-command arguments badly. Only files under the host's ``[logging]
base_log_folder`` are readable: the path is relative, has no ``..`` part, and must resolve inside
that folder (symlinks and junctions included).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from winexec.agent.hostinfo import computer_name
from winexec.protocol import host_path

#: Largest page one ``--read-log`` answer carries (the caller may ask for less).
MAX_PAGE = 4 * 1024 * 1024
DEFAULT_PAGE = 512 * 1024


def base_log_folder() -> Path:
    """The host's ``[logging] base_log_folder``: the environment first, then the SDK's config."""
    value = os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER")
    if not value:
        from airflow.sdk.configuration import conf

        value = conf.get("logging", "base_log_folder", fallback="") or ""
    if not value:
        raise LookupError("[logging] base_log_folder is not set on this host")
    return Path(os.path.expanduser(value))


def safe_log_path(base: Path, relative: str) -> Path:
    """``base/relative`` if it is a relative path that stays inside ``base``; else ``ValueError``.

    ``relative`` is Airflow's log path; the file is under its NTFS-safe ``host_path`` name.
    """
    if not relative or "\x00" in relative:
        raise ValueError("empty log path")
    for flavour in (PurePosixPath(relative), PureWindowsPath(relative)):
        if flavour.is_absolute() or flavour.anchor or ".." in flavour.parts:
            raise ValueError("the log path must be relative to the log folder, without '..'")
    root = os.path.realpath(base)
    target = os.path.realpath(os.path.join(root, host_path(relative)))
    if os.path.commonpath([root, target]) != root:
        raise ValueError("the log path leaves the log folder")
    return Path(target)


def _page_end(chunk: bytes, at_eof: bool) -> int:
    """Where a page may end: after its last newline, else at a UTF-8 character boundary."""
    if at_eof:
        return len(chunk)
    cut = chunk.rfind(b"\n") + 1
    if cut:
        return cut
    cut = len(chunk)
    while cut > 0 and (chunk[cut - 1] & 0xC0) == 0x80:  # a continuation byte: back off
        cut -= 1
    if cut > 0 and chunk[cut - 1] >= 0xC0:  # the lead byte of the cut character
        cut -= 1
    return cut or len(chunk)


def read_log(request: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """One page of a task log: ``{"found", "size", "offset", "next", "eof", "data"}``; never raises.

    Pages end after a newline (a whole line never straddles two pages) unless a single line is
    longer than the page.
    """
    rel = str(request.get("path") or "")
    try:
        offset = max(0, int(request.get("offset") or 0))
        limit = min(MAX_PAGE, max(1, int(request.get("limit") or DEFAULT_PAGE)))
    except (TypeError, ValueError):
        return {"found": False, "error": "offset and limit must be whole numbers"}
    try:
        path = safe_log_path(base or base_log_folder(), rel)
    except (ValueError, LookupError) as e:
        return {"found": False, "error": str(e)}
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(min(offset, size))
            chunk = f.read(limit)
    except FileNotFoundError:
        return {"found": False, "path": rel}
    except OSError as e:
        return {"found": False, "path": rel, "error": f"cannot read: {e.strerror}"}
    start = min(offset, size)
    at_eof = start + len(chunk) >= size
    cut = _page_end(chunk, at_eof)
    return {
        "found": True,
        "size": size,
        "offset": start,
        "next": start + cut,
        "eof": start + cut >= size,
        "data": chunk[:cut].decode("utf-8", errors="replace"),
    }


def active_runs() -> dict[str, Any]:
    """The winexec runs this host is running now: every principal's, from the slot entries; the
    task of this principal's own runs from their records (others' records are not ours to read)."""
    from winexec.agent import spool

    me = computer_name()
    tasks: dict[str, Any] = {}
    keys: dict[str, Any] = {}  # the executor's launch key of each of our runs (adoption finds runs by it)
    with contextlib.suppress(OSError):
        for path in spool.spool_dir().glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                data = dict(json.loads(path.read_text()))
                tasks[str(data.get("run_id"))] = data.get("task")
                keys[str(data.get("run_id"))] = data.get("launch_key")
    runs: list[dict[str, Any]] = []
    for entry in spool.live_slot_entries(me):
        run = {k: entry.get(k) for k in ("run_id", "started", "principal")}
        rid = str(entry.get("run_id"))
        runs.append({**run, "task": tasks.get(rid), "launch_key": keys.get(rid)})
    return {"computer": me, "count": len(runs), "runs": runs}


def read_request(stream: Any = None) -> dict[str, Any]:
    """The one JSON request line on stdin (empty dict if there is none or it is not JSON)."""
    line = (stream or sys.stdin).readline()
    try:
        value = json.loads(line) if line.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

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

Principals that share a host never share these files. The run folder (``%ProgramData%`` /
``winexec/runs``, prepared once by an administrator) holds one folder per principal, which only that
account, SYSTEM and Administrators may open: its records, logs and stop files. Windows: the agent
sets that ACL itself on every start (``icacls``: inheritance removed, full control for the three),
and a folder it cannot set it on (another account's, made to squat the name) is refused. POSIX
(the stand-in): the folder is the account's own, mode 0700 (which also masks ACLs inherited from
a share). The only shared files are the host's slot entries (``<run>.slot``, one per live run,
readable by all, removable only by their owner): admission counts them, each live agent once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity

#: Markers older than this are removed opportunistically; a try is never restarted that late.
MAX_AGE_SECONDS = 14 * 24 * 3600


IS_WINDOWS = sys.platform == "win32"
#: What an administrator runs once per host to prepare the run folder (docs/windows-host-setup.md).
PREPARE = "python -m winexec.agent --prepare-spool"


class SpoolError(OSError):
    """The run folder is missing or not safe to keep one principal's runs apart from another's."""


def spool_root() -> Path:
    """``$WINEXEC_SPOOL``, else ``%ProgramData%\\winexec\\runs``, else ``<tmp>/winexec-runs`` (POSIX)."""
    if env := os.environ.get("WINEXEC_SPOOL"):
        return Path(env)
    if data := os.environ.get("ProgramData"):  # every Windows process has it; so has the stand-in's
        return Path(data) / "winexec" / "runs"
    if IS_WINDOWS:  # pragma: no cover
        return Path(r"C:\ProgramData") / "winexec" / "runs"
    return Path(tempfile.gettempdir()) / "winexec-runs"


def prepare_root(root: Path | None = None) -> Path:
    """Create the run folder as an administrator would: every account may add entries, only an
    entry's owner may change or remove it (Windows: the ACL below; POSIX: root's, mode 1777)."""
    root = root or spool_root()
    root.mkdir(parents=True, exist_ok=True)
    if IS_WINDOWS:  # pragma: no cover - the argv is unit-tested
        for args in _root_acl(root):
            _icacls(args)
    else:
        root.chmod(0o1777)
    return root


def check_root(root: Path) -> None:
    """Refuse a run folder in which one principal could remove or replace another's entries."""
    try:
        st = root.stat()
    except FileNotFoundError:
        raise SpoolError(
            f"run folder {root} does not exist; an administrator creates it once: {PREPARE}"
        ) from None
    if IS_WINDOWS:  # pragma: no cover - the ACL is the administrator's (PREPARE); the canary reads it
        return
    if st.st_uid not in (0, os.geteuid()):
        raise SpoolError(
            f"run folder {root} belongs to uid {st.st_uid}, not to root; recreate it with {PREPARE}"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise SpoolError(
            f"run folder {root} is writable by other accounts without the sticky bit, so one principal "
            f"could remove or replace another's runs; run `chmod +t {root}` or {PREPARE}"
        )


def account_key() -> str:
    """This logon's account as a folder name (``DOMAIN-user``: letters, digits and ``-``)."""
    from winexec.agent.hostinfo import user_name

    return _safe(user_name().replace("\\", "-")) or "unknown"


def spool_dir(root: Path | None = None) -> Path:
    """This principal's private folder in the run folder, made private now (see the module doc)."""
    root = root or spool_root()
    check_root(root)
    mine = root / account_key()
    try:
        mine.mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        raise SpoolError(
            f"cannot create {mine} ({e.strerror}); check the run folder with {PREPARE}"
        ) from None
    if IS_WINDOWS:  # pragma: no cover - the argv is unit-tested
        _icacls(_private_acl(mine))
        return mine
    st = mine.stat()
    if st.st_uid != os.geteuid():
        raise SpoolError(
            f"{mine} belongs to another account (uid {st.st_uid}), so this principal's runs would be "
            "readable there; an administrator removes that folder"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        mine.chmod(0o700)  # also masks whatever ACL a share above handed down
    return mine


def _private_acl(path: Path) -> list[str]:
    """``icacls`` arguments: only this account, SYSTEM and Administrators, nothing inherited."""
    from winexec.agent.hostinfo import user_name

    full = "(OI)(CI)F"
    return [
        str(path),
        "/inheritance:r",
        "/grant:r",
        f"*S-1-5-18:{full}",
        f"*S-1-5-32-544:{full}",
        f"{user_name()}:{full}",
    ]


def _root_acl(path: Path) -> list[list[str]]:
    """``icacls`` calls for the run folder: Users add and list (this folder) and read what is
    directly in it (the slot entries); CREATOR OWNER owns what it adds; SYSTEM and Administrators
    everything. Two calls: ``/grant:r`` would replace the first Users entry with the second."""
    users = "*S-1-5-32-545"
    return [
        [
            str(path),
            "/inheritance:r",
            "/grant:r",
            "*S-1-5-18:(OI)(CI)F",
            "*S-1-5-32-544:(OI)(CI)F",
            "*S-1-3-0:(OI)(CI)(IO)F",
            f"{users}:(RD,WD,AD,REA,X,RA,RC,S)",
        ],
        [str(path), "/grant", f"{users}:(OI)(NP)(IO)R"],
    ]


def _icacls(args: list[str]) -> None:
    """Set an ACL with Windows' own ``icacls`` (no secret is ever among its arguments)."""
    import subprocess

    system = os.environ.get("SystemRoot", r"C:\Windows")
    done = subprocess.run(
        [os.path.join(system, "System32", "icacls.exe"), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip()
        raise SpoolError(
            f"cannot set the ACL of {args[0]} ({why}); an administrator checks it with {PREPARE}"
        )


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


def _slot_path(root: Path, run_id: str) -> Path:
    return root / f"{_key('slot', 0, run_id)}.slot"


def take_slot(
    marker: Marker,
    slots: int,
    alive: Callable[[Any, Any], bool],
    root: Path | None = None,
    weight: int = 1,
) -> bool:
    """Whether ``marker``'s run gets ``weight`` of the host's ``slots``; if not, its entry is gone.

    Admission on the host, not only counted by one scheduler (several schedulers offer the same
    host more than its slots). Lamport's bakery, on files in the shared run folder: an agent adds
    its entry with no ticket yet (choosing), takes the ticket one above every ticket of a live
    agent it then sees, writes it, and only then ranks the live entries of its computer by
    ticket. An agent that had not yet added its entry when another ranked takes a higher ticket
    than that one's, so of two racing for the last slot exactly one backs off. Counted as ahead,
    never behind (at worst a refusal the scheduler retries, never an over-admission): an entry
    still choosing or being written, one whose ticket is not a whole number, and one of an agent
    from before tickets. Tickets are integers: a forged huge one cannot make the next ticket
    equal to it. Each other live agent (pid and start time) counts once, at its earliest entry
    and its heaviest weight, and this agent at its own entry: an entry another principal forged
    for an agent can make it count for more, never for less, and one forged for a process of its
    own costs only what that principal could spend by running it. An entry weighs what it says,
    at most ``slots`` (a heavy task, ``pool_slots``): the run is admitted when the weight ahead
    plus its own fits.
    While what stands ahead is only still choosing, the agent looks again for up to
    :data:`_CHOOSING_WAIT` before it backs off, as the bakery waits for choosers.
    """
    import psutil

    root = root or spool_root()
    me = psutil.Process()
    agent = (me.pid, me.create_time())
    entry = {
        "run_id": marker.data["run_id"],
        "computer": marker.data.get("computer"),
        "principal": marker.data.get("principal"),
        "agent_pid": agent[0],
        "agent_create_time": agent[1],
        "started": marker.data["started"],
        "weight": weight,
        "ticket": None,
    }
    path = _slot_path(root, entry["run_id"])
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    marker.data["slot"] = str(path)
    tmp = path.with_name(path.name + ".tmp")  # not a *.slot: nobody reads it half-written
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, sort_keys=True)
        live, _ = _live_entries(root, entry["computer"], alive)
        entry["ticket"] = 1 + max((t for _, data in live if (t := _ticket(data)) is not None), default=0)
        tmp.write_text(json.dumps(entry, sort_keys=True))
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        release_slot(marker)
        raise
    mine = (entry["ticket"], entry["run_id"])
    deadline = time.monotonic() + _CHOOSING_WAIT
    while True:
        live, unread = _live_entries(root, entry["computer"], alive)
        rank: dict[tuple[Any, Any], tuple[float, str]] = {}
        weighs: dict[tuple[Any, Any], int] = {}
        for who, data in live:
            ticket = _ticket(data)
            key = (float("-inf") if ticket is None else ticket, str(data.get("run_id") or ""))
            rank[who] = min(key, rank.get(who, key))
            weighs[who] = max(_weight(data.get("weight"), slots), weighs.get(who, 0))
        # ourselves at our own entry: another entry naming our agent (forged, say, with no
        # ticket) must not put us ahead of runs admitted before us
        rank[agent], weighs[agent] = mine, weight
        ahead = [who for who, key in rank.items() if key < rank[agent]]
        if unread + sum(weighs[who] for who in ahead) + weighs[agent] <= slots:
            return True
        choosing = unread or any(rank[who][0] == float("-inf") for who in ahead)
        if not choosing or time.monotonic() > deadline:
            release_slot(marker)
            return False
        time.sleep(0.02)


#: How long an agent looks again while entries ahead of it are still choosing their tickets.
_CHOOSING_WAIT = 1.0


#: Retried briefly: on Windows a file another agent has open (reading it to rank) cannot be
#: replaced or removed until it is closed (Python opens files without ``FILE_SHARE_DELETE``).
_while_open_elsewhere = tenacity.retry(
    retry=tenacity.retry_if_exception_type(PermissionError),
    stop=tenacity.stop_after_delay(2.0),
    wait=tenacity.wait_fixed(0.01),
    reraise=True,
)


@_while_open_elsewhere
def _replace(tmp: Path, path: Path) -> None:
    """``os.replace`` of our own entry, while other agents may be reading it."""
    os.replace(tmp, path)


@_while_open_elsewhere
def _unlink(path: Path) -> None:
    """``unlink`` of our own entry: one left behind would be read by every later admission."""
    path.unlink(missing_ok=True)


def _live_entries(
    root: Path, computer: Any, alive: Callable[[Any, Any], bool]
) -> tuple[list[tuple[tuple[Any, Any], dict[str, Any]]], int]:
    """The slot entries of ``computer``'s live agents, each with its agent, and how many entries
    may still be being written (unreadable and fresh, or not even statable: each counts as
    ahead; old unreadable junk does not). An entry counts only where its file belongs to the
    account running its agent (POSIX; see :func:`_owned_by`). Other computers' entries in a
    shared folder (the stand-in's agent tests) are left out."""
    out: list[tuple[tuple[Any, Any], dict[str, Any]]] = []
    unread = 0
    now = time.time()
    for other in root.glob("*.slot"):
        try:
            st = other.stat()
        except FileNotFoundError:
            continue  # released meanwhile
        except OSError:  # Windows: being replaced or deleted; maybe someone's entry, so ahead
            unread += 1
            continue
        try:
            data = dict(json.loads(other.read_text()))
        except (OSError, ValueError, TypeError):
            unread += now - st.st_mtime < _BEING_WRITTEN
            continue
        who = (data.get("agent_pid"), data.get("agent_create_time"))
        if data.get("computer") in (None, computer) and alive(*who) and _owned_by(st, who[0]):
            out.append((who, data))
    return out, unread


def _ticket(data: dict[str, Any]) -> int | None:
    """An entry's place in line: a whole number, or ``None`` while it is choosing one, and for
    anything else (a forged or broken value, an agent from before tickets), which counts as
    ahead."""
    value = data.get("ticket")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _weight(value: Any, slots: int) -> int:
    """An entry's weight: a whole number in 1..slots (entries of older agents say none: 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return min(max(1, value), slots)


#: How long an entry that cannot be read yet counts as one being written (then: ignored).
_BEING_WRITTEN = 5.0


def _owned_by(st: os.stat_result, pid: Any) -> bool:
    """Whether the entry's file belongs to the account running ``pid`` (POSIX; Windows lets no
    principal read another's process owner, so there only the pid and start time are checked)."""
    if IS_WINDOWS:  # pragma: no cover
        return True
    import psutil

    try:
        return bool(psutil.Process(int(pid)).uids().real == st.st_uid)
    except (psutil.Error, ValueError, TypeError):
        return False


def release_slot(marker: Marker) -> None:
    """Remove the run's slot entry (its agent is done, or was not admitted)."""
    if slot := marker.data.pop("slot", None):
        with contextlib.suppress(OSError):
            _unlink(Path(slot))


def alive(pid: Any, create_time: Any = None) -> bool:
    """Whether process ``pid`` lives (and, with ``create_time``, is still the process that was)."""
    if not pid:
        return False
    try:
        import psutil

        p = psutil.Process(int(pid))
        if create_time is not None and abs(p.create_time() - float(create_time)) > 1:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:  # another account's process, there: alive (never over-admit)
        return True
    except Exception:
        return False


def live_slot_entries(computer: Any, root: Path | None = None) -> list[dict[str, Any]]:
    """The slot entries of ``computer``'s live agents: the winexec runs it is running now."""
    entries, _ = _live_entries(root or spool_root(), computer, alive)
    return [data for _, data in entries]


def usable_spool_dir() -> Path | None:
    """This principal's run folder, or ``None`` where it is not usable (a self-check reports it)."""
    try:
        return spool_dir()
    except Exception:
        return None


def slot_entries(root: Path | None = None) -> list[dict[str, Any]]:
    """Every slot entry in the run folder (what ``--runs`` may show of other principals' runs)."""
    root = root or spool_root()
    return [d for d in (_read(p) for p in sorted(root.glob("*.slot"))) if d]


def _cleanup(base: Path) -> None:
    cutoff = time.time() - MAX_AGE_SECONDS
    for path in base.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()

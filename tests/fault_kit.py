"""What the fault suites share: driving the executor as the scheduler does, and checking that a
test left nothing behind (threads, objects, processes on the hosts)."""

from __future__ import annotations

import collections
import contextlib
import enum
import gc
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from winexec.config import Settings
from winexec.executor import WindowsKerberosExecutor
from winexec.tickets import TicketStore


def make_executor(
    settings: Settings, keytabs: Mapping[str, Path], **overrides: Any
) -> WindowsKerberosExecutor:
    """A started executor with ``settings`` (plus ``overrides``) and its own ticket store."""
    ex = WindowsKerberosExecutor(parallelism=1024)
    ex.settings = replace(settings, **overrides)
    store = TicketStore({p: str(k) for p, k in keytabs.items()})
    store.start()
    ex.tickets = store
    ex.start()
    return ex


def host_python(path: Path, env: Mapping[str, str], *, lite: bool = False) -> Path:
    """The interpreter "installed on every host" (each keeps its runs in its own ProgramData).

    ``lite``: the agent's run mode is :mod:`winexec.testing.lite_agent` (the real agent around a
    tiny task) instead of a Task SDK run.
    """
    exports = "".join(f"export {k}='{v}'\n" for k, v in env.items())
    lite_line = (
        f"[ \"$*\" = '-m winexec.agent' ] && exec '{sys.executable}' -m winexec.testing.lite_agent\n"
        if lite
        else ""
    )
    path.write_text(f"#!/bin/sh\n{exports}{lite_line}exec '{sys.executable}' \"$@\"\n")
    path.chmod(0o755)
    return path


def wait_for(cond: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        time.sleep(0.2)


def drive(
    ex: WindowsKerberosExecutor,
    until: Callable[[dict[Any, Any]], bool],
    timeout: float = 240.0,
    step: Callable[[dict[Any, Any]], None] | None = None,
    events: dict[Any, Any] | None = None,
) -> dict[Any, Any]:
    """Run the executor as the scheduler loop does; return every key's last (state, info)."""
    events = {} if events is None else events
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ex.heartbeat()
        for key, (state, info) in ex.get_event_buffer().items():
            events[key] = (str(state), info)
        if step is not None:
            step(events)
        if until(events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"timed out: events {events}, records {ex.describe()}")


def finished(keys: list[Any]) -> Callable[[dict[Any, Any]], bool]:
    return lambda ev: all(ev.get(k, ("",))[0] in ("success", "failed") for k in keys)


# -- nothing left behind ---------------------------------------------------------------------------
def scheduler_side_threads() -> set[int]:
    """Threads of the scheduler side: all but the stand-in hosts' own (they share this process)."""
    return {t.ident or 0 for t in threading.enumerate() if not _is_sim_thread(t)}


def _is_sim_thread(t: threading.Thread) -> bool:
    if t.name.startswith(("winrm-", "sim-")):
        return True
    target = getattr(t, "_target", None)
    owner = getattr(target, "__self__", None)  # e.g. a sim server's process_request_thread
    module = getattr(target, "__module__", "") or ""
    return module.startswith("winexec.sim") or type(owner).__module__.startswith("winexec.sim")


#: Packages whose objects the executor makes per task or per host (records, sessions, WS-Man
#: clients, HTTP pools, security contexts). The stand-in hosts' own are not counted.
_CENSUS = ("winexec.", "pypsrp.", "spnego.", "requests.", "urllib3.")
_NOT_COUNTED = ("winexec.sim", "winexec.testing")


def census() -> collections.Counter[str]:
    """Live objects per type of the scheduler side, after a full collection.

    The client libraries are imported first: their module-level singletons (urllib3's default
    pool manager, requests' status codes) are not per-task objects.
    """
    import pypsrp.powershell
    import pypsrp.wsman  # noqa: F401
    import requests  # noqa: F401
    import urllib3.http2.probe  # noqa: F401

    gc.collect()
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        if isinstance(obj, enum.Enum):  # flag combinations are cached on first use, by design
            continue
        t = type(obj)
        module = t.__dict__.get("__module__")
        if isinstance(module, str) and module.startswith(_CENSUS) and not module.startswith(_NOT_COUNTED):
            counts[f"{module}.{t.__qualname__}"] += 1
    return counts


def ledger_starts(ledger: Path, run_field: str) -> collections.Counter[tuple[str, int]]:
    """How often each (``run_field``, try) really started, from the ledger the tasks write first."""
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            e = json.loads(line)
            counts[(e[run_field], e["try"])] += 1
    return counts


def agents_running(cluster: Any) -> list[dict[str, Any]]:
    """Every process the stand-in hosts run."""
    return [p for h in cluster.hosts for p in h.processes()]


@contextlib.contextmanager
def nothing_left_behind(cluster: Any, caplog: Any) -> Iterator[None]:
    """Around a test: afterwards nothing runs on the hosts, and the executor's threads and
    objects are back to what they were before it."""
    threads, objects = scheduler_side_threads(), census()
    yield
    wait_for(lambda: not agents_running(cluster), 60, lambda: f"left running: {agents_running(cluster)}")
    wait_for(
        lambda: scheduler_side_threads() <= threads,
        30,
        lambda: f"threads left: {sorted(t.name for t in threading.enumerate() if t.ident not in threads)}",
    )
    forget_captured_logs(caplog)
    wait_for(lambda: not grown(objects), 10, lambda: f"objects left: {grown(objects)}")


def forget_captured_logs(caplog: Any) -> None:
    """Drop the log records pytest keeps for the test: pypsrp logs exceptions with their
    tracebacks, whose frames would keep the executor alive for the census."""
    for when in ("setup", "call"):
        caplog.get_records(when).clear()


def grown(baseline: collections.Counter[str], slack: int = 0) -> dict[str, int]:
    """Types with more live objects than at ``baseline`` (beyond ``slack``)."""
    now = census()
    return {k: n - baseline[k] for k, n in now.items() if n - baseline[k] > slack}

"""Task logs that live on the Windows host, shown by Airflow without a shared folder or remote logging.

A task's log is written on its host (``<host base_log_folder>/<log path>``). Airflow's
``FileTaskHandler`` finds logs locally, in remote storage, or -- for a *running* task -- by calling
``executor.get_task_log`` in the process serving the log view (the api-server), on an executor
instance that was never started. So:

* :func:`read_task_log` (running tasks, in the api-server): find the task's host from its external
  executor id (``<host>|<run id>``), open a WinRM shell *as the task's principal* (the same
  authenticated channel as the launch) and stream the file page by page through the agent's
  ``--read-log`` mode. Pages are fetched as Airflow iterates, so a large log is never held whole.
* :func:`collect_log` (finished tasks, in the scheduler): when the agent has exited, copy the log
  page by page into the scheduler's ``base_log_folder`` before the shell closes, so the normal
  local-file path shows it afterwards (the api-server reads that folder: same machine or a shared
  volume). Skipped when the file already exists locally (shared folder) or remote logging is on
  (the host uploads it itself): the normal path stays unchanged then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winexec.config import airflow_log_folder

if TYPE_CHECKING:
    from winexec.config import Settings
    from winexec.executor import WindowsKerberosExecutor
    from winexec.transport import TaskSession

log = logging.getLogger(__name__)

#: Bytes per ``--read-log`` round trip.
PAGE_SIZE = 512 * 1024


class HostLogPages(list[str]):
    """The log's pages, fetched from the host only as Airflow iterates them (one page in memory).

    A ``list`` because that is ``get_task_log``'s declared type; it is iterated exactly once.
    """

    def __init__(self, pages: Iterator[str]) -> None:
        super().__init__()
        self._pages = pages

    def __iter__(self) -> Iterator[str]:
        return self._pages

    def __bool__(self) -> bool:
        return True


def _remote_logging() -> bool:
    from airflow.configuration import conf

    return conf.getboolean("logging", "remote_logging", fallback=False)


def _render_path(ti: Any, try_number: int) -> str:
    """The relative log path exactly as the log view renders it (the dag run's log template)."""
    from airflow.utils.log.file_task_handler import FileTaskHandler

    handler = FileTaskHandler(base_log_folder=str(airflow_log_folder() or ""))
    return str(handler._render_filename(ti, try_number))


class _Reader:
    """What the api-server's executor instance keeps between log requests: settings, tickets,
    and the reader of task facts (which principal a task ran as)."""

    def __init__(self, settings: Settings) -> None:
        from winexec.taskfacts import FactsReader
        from winexec.tickets import TicketStore

        self.settings = settings
        self.tickets = TicketStore()  # never started: get() refreshes on demand
        self.facts = FactsReader(settings.grants)
        self.lock = threading.Lock()

    def credential_store(self, principal: str) -> Any:
        with self.lock:
            self.tickets.ensure(principal, self.settings.keytab_for)
        return self.tickets


def _reader(executor: WindowsKerberosExecutor) -> _Reader:
    reader = getattr(executor, "_winexec_log_reader", None)
    if reader is None:
        from winexec.config import airflow_getter, load

        team = getattr(executor, "team_name", None)  # the api-server's instance of a team's executor
        reader = _Reader(executor.settings or load(airflow_getter(team), check_files=False))
        executor._winexec_log_reader = reader  # type: ignore[attr-defined]
    return reader


def read_task_log(executor: WindowsKerberosExecutor, ti: Any, try_number: int) -> tuple[list[str], list[str]]:
    """``(sources, pages)`` of a running task's log on its host; explains itself in ``sources``."""
    from winexec.identity import resolve
    from winexec.transport import LaunchError, log_pages, open_channel

    host_name, _, run_id = str(getattr(ti, "external_executor_id", None) or "").partition("|")
    try:
        rel = _render_path(ti, try_number)
    except Exception as e:
        return [f"winexec: cannot render the log path: {e}"], []
    base = airflow_log_folder()
    if base is not None and (base / rel).is_file():
        return [], []  # a shared log folder: Airflow reads the file itself
    if not run_id:
        return ["winexec: the task's host is not known yet (no external executor id); reload shortly"], []
    try:
        reader = _reader(executor)
        settings = reader.settings
        host = next((h for h in settings.hosts if h.name == host_name), None)
        if host is None:
            return [f"winexec: host {host_name} is no longer in [winexec] hosts"], []
        ident = resolve(settings, reader.facts.orm_ti(ti))
        store = reader.credential_store(ident.principal)
        channel = open_channel(settings, host, ident.principal, False, store)
    except LaunchError as e:
        return [f"winexec: cannot read the log on {host_name}: {e.reason}"], []
    except Exception as e:
        return [f"winexec: cannot read the log on {host_name}: {type(e).__name__}: {e}"], []
    source = f"winexec: {host.name} (as {ident.principal}) {rel}"
    return [source], HostLogPages(_guarded(log_pages(channel, rel, PAGE_SIZE), host.name))


def _guarded(pages: Iterator[str], host: str) -> Iterator[str]:
    """The pages; a failure half-way ends the log with a line saying why (never an HTTP 500)."""
    from winexec.transport import LaunchError

    try:
        yield from pages
    except LaunchError as e:
        yield f"\nwinexec: reading the rest of the log from {host} failed: {e.reason}\n"
    except Exception as e:
        yield f"\nwinexec: reading the rest of the log from {host} failed: {type(e).__name__}: {e}\n"


def collect_log(session: TaskSession, log_path: str | None) -> Path | None:
    """Copy the finished task's log from its host into this machine's log folder; the path or None.

    Uses the task's still-open shell, writes to a temporary file and renames it, so a reader sees
    the whole log or none. Never raises: a missing log must not disturb the executor.
    """
    from winexec.transport import log_pages

    if not log_path or session.closed:
        return None
    tmp: Path | None = None
    try:
        base = airflow_log_folder()
        if base is None or _remote_logging():
            return None
        dest = base / log_path
        if dest.exists():
            return None  # shared folder, or a reason the executor wrote: keep it
        channel = session.channel()
        if channel is None:
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.winexec-{os.getpid()}-{threading.get_ident()}")
        wrote = False
        with open(tmp, "w", encoding="utf-8") as f:
            for page in log_pages(channel, log_path, PAGE_SIZE, close=False):
                f.write(page)
                wrote = True
        if wrote and not dest.exists():
            os.replace(tmp, dest)
            return dest
        return None
    except Exception as e:
        log.warning("winexec: cannot copy the task log %s from %s: %s", log_path, session.host.name, str(e))
        return None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()

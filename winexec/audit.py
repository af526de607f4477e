"""The audit trail: one record per identity decision and per outcome of a task's launch.

Each record goes to Airflow's own audit log (the ``log`` table: the UI's audit log view and
``/api/v2/eventLogs``, event ``winexec.<event>``, the fields as JSON in ``extra``) and as one
JSON line to ``[winexec] audit_file`` for a SIEM to ship. Records are queued by the scheduler
loop and written by an I/O worker, so the loop never waits on the database or the disk.
Fields are names, hosts, ids, states and reasons, which the executor already scrubs of tokens:
never a token, password or keytab.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winexec.config import airflow_log_folder

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey

    from winexec.config import Settings

log = logging.getLogger(__name__)

EVENTS = ("refused", "not_launched", "launched", "started", "ended")
OWNER = "winexec"
#: A database that refuses the records is said once a minute, not once a heartbeat.
COMPLAIN_EVERY = 60.0


def audit_path(settings: Settings) -> Path | None:
    """``[winexec] audit_file``, or ``winexec/audit.jsonl`` under Airflow's local log folder."""
    if settings.audit_file:
        return Path(settings.audit_file).expanduser()
    try:
        base = airflow_log_folder()
    except Exception:  # no Airflow configuration to read: no default place either
        base = None
    return base / "winexec" / "audit.jsonl" if base is not None else None


class AuditTrail:
    """Records queued by the scheduler loop, written in batches by an I/O worker."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.scheduler = f"{socket.gethostname()}:{os.getpid()}"
        self._pending: list[tuple[TaskInstanceKey, dict[str, Any]]] = []
        self._writing = threading.Lock()
        self._flush_asked = False
        self._missed = 0
        self._complained = -COMPLAIN_EVERY

    def record(self, event: str, key: TaskInstanceKey, **fields: Any) -> None:
        """Queue one record (cheap: called from the scheduler loop)."""
        assert event in EVENTS, event
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "event": event,
            "dag_id": key.dag_id,
            "task_id": key.task_id,
            "run_id": key.run_id,
            "map_index": key.map_index,
            "try_number": key.try_number,
            **{k: v for k, v in fields.items() if v is not None},
            "scheduler": self.scheduler,
        }
        self._pending.append((key, entry))

    def flush_due(self) -> bool:
        """Whether a worker should flush now: records wait and no flush is on its way already
        (a slow database must not take one worker per heartbeat)."""
        if not self._pending or self._flush_asked:
            return False
        self._flush_asked = True
        return True

    def flush(self) -> None:
        """Write what is queued to both places (an I/O worker, or the executor's shutdown).

        The records leave the queue only here, so a flush cancelled at shutdown loses none."""
        with self._writing:
            self._flush_asked = False
            batch, self._pending = self._pending, []  # an append meanwhile lands in either list
            if not batch:
                return
            lines = "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for _, e in batch)
            if self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    with open(self.path, "a", encoding="utf-8") as f:
                        f.write(lines)
                except OSError as e:
                    log.error("winexec: cannot write the audit file %s: %s", self.path, e.strerror)
            try:
                _to_airflow(batch)
            except Exception as e:  # the file still has them; the scheduler goes on
                self._missed += len(batch)
                if time.monotonic() - self._complained >= COMPLAIN_EVERY:
                    self._complained = time.monotonic()
                    # str(e), not e: a log record holding the exception keeps its frames alive
                    missed = self._missed
                    log.error("winexec: audit records not in Airflow's log (%d so far): %s", missed, str(e))


def _to_airflow(batch: list[tuple[TaskInstanceKey, dict[str, Any]]]) -> None:
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    with create_session() as session:
        for key, entry in batch:
            extra = {k: v for k, v in entry.items() if k not in ("dag_id", "task_id", "run_id", "map_index")}
            session.add(
                Log(
                    event=f"winexec.{entry['event']}",
                    task_instance=key,
                    owner=OWNER,
                    extra=json.dumps(extra, sort_keys=True, default=str),
                )
            )

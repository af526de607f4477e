"""Hosts an operator took out of placement (``airflow winexec hosts drain HOST``).

A drain lives in Airflow's metadata database, as the Variable ``winexec.drain.<host>``, so every
scheduler sharing that database honours it, a restarted scheduler still does, and nobody edits
``[winexec] hosts`` to patch one machine. A drained host gets no new task; its running tasks
finish. ``resume`` deletes the Variable. Schedulers read the drains when they start and at each
``host_refresh_interval``.
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PREFIX = "winexec.drain."


@dataclass(frozen=True)
class Drain:
    host: str
    by: str  # who drained it: user@machine of the CLI
    at: str  # ISO 8601, UTC
    comment: str = ""

    def __str__(self) -> str:
        said = f": {self.comment}" if self.comment else ""
        return f"drained by {self.by} at {self.at}{said}"


def drain(host: str, comment: str = "", session: Session | None = None) -> Drain:
    """Take ``host`` out of placement for every scheduler; a second drain updates the record."""
    from airflow.models.variable import Variable

    record = Drain(
        host=host,
        by=f"{getpass.getuser()}@{socket.gethostname()}",
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        comment=comment,
    )
    Variable.set(
        PREFIX + host,
        asdict(record),
        description="winexec: this host gets no new tasks until `airflow winexec hosts resume` it",
        serialize_json=True,
        session=session,
    )
    return record


def resume(host: str, session: Session | None = None) -> bool:
    """Put ``host`` back into placement; False when it was not drained."""
    from airflow.models.variable import Variable

    return Variable.delete(PREFIX + host, session=session) > 0


def drained(session: Session | None = None) -> dict[str, Drain]:
    """Every drained host's record, by host name (one query)."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if session is None:
        with create_session() as own:
            return drained(own)
    found: dict[str, Drain] = {}
    for var in session.scalars(select(Variable).where(Variable.key.startswith(PREFIX, autoescape=True))):
        host = var.key[len(PREFIX) :]
        try:
            fields = json.loads(var.val or "{}")
            found[host] = Drain(
                host=host,
                by=str(fields.get("by", "?")),
                at=str(fields.get("at", "?")),
                comment=str(fields.get("comment", "")),
            )
        except (ValueError, AttributeError):  # edited by hand into something else: still drained
            found[host] = Drain(host=host, by="?", at="?", comment=str(var.val))
    return found

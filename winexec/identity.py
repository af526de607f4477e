"""Which Kerberos principal a task runs as: a pure function of ``[winexec]`` and the task's facts.

Precedence, most specific first (the first that applies wins):

1. ``executor_config={"winexec": {"principal": "user@REALM"}}`` on the task
   (when ``honor_executor_config``);
2. the task's ``run_as_user`` (when ``honor_run_as_user``); a bare ``user`` gets the realm of
   ``default_principal``;
3. ``pool_principals[<task's pool>]``;
4. ``queue_principals[<task's queue>]``;
5. ``default_principal``.

A principal outside ``allowed_principals`` (when that is set) is refused rather than silently
replaced: running a task as someone other than its author asked is worse than failing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from winexec.config import Settings

Source = Literal["executor_config", "run_as_user", "pool", "queue", "default"]

_PRINCIPAL = re.compile(r"^[^\s@=,/]+(/[^\s@=,/]+)?@[^\s@=,/]+$")


class IdentityError(ValueError):
    """The task names a principal it may not run as, or one that is malformed."""


@dataclass(frozen=True)
class TaskFacts:
    """What identity resolution looks at; the executor fills it from the workload and the DB."""

    queue: str | None = None
    pool: str | None = None
    run_as_user: str | None = None
    executor_config: dict[str, Any] | None = None

    @classmethod
    def from_ti(cls, ti: Any, *, pool: str | None = None, run_as_user: str | None = None) -> TaskFacts:
        """From a workload's ``TaskInstanceDTO`` (it carries queue and executor_config, not the rest)."""
        return cls(
            queue=getattr(ti, "queue", None),
            pool=pool if pool is not None else getattr(ti, "pool", None),
            run_as_user=run_as_user if run_as_user is not None else getattr(ti, "run_as_user", None),
            executor_config=getattr(ti, "executor_config", None),
        )


@dataclass(frozen=True)
class Identity:
    principal: str
    source: Source
    delegate: bool


def _qualify(user: str, settings: Settings) -> str:
    user = user.strip()
    if "@" in user or not settings.realm:
        return user
    return f"{user}@{settings.realm}"


def _requested_by_executor_config(executor_config: dict[str, Any] | None) -> str | None:
    if not executor_config:
        return None
    section = executor_config.get("winexec")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise IdentityError('executor_config["winexec"] must be a dict like {"principal": "user@REALM"}')
    principal = section.get("principal")
    if principal is None:
        return None
    if not isinstance(principal, str) or not principal.strip():
        raise IdentityError('executor_config["winexec"]["principal"] must be a non-empty string')
    return principal


def resolve(settings: Settings, facts: TaskFacts) -> Identity:
    """The principal (and whether to delegate) for a task; raises :class:`IdentityError`."""
    principal: str | None = None
    source: Source = "default"
    if settings.honor_executor_config:
        requested = _requested_by_executor_config(facts.executor_config)
        if requested:
            principal, source = _qualify(requested, settings), "executor_config"
    if principal is None and settings.honor_run_as_user and facts.run_as_user:
        principal, source = _qualify(facts.run_as_user, settings), "run_as_user"
    if principal is None and facts.pool and facts.pool in settings.pool_principals:
        principal, source = settings.pool_principals[facts.pool], "pool"
    if principal is None and facts.queue and facts.queue in settings.queue_principals:
        principal, source = settings.queue_principals[facts.queue], "queue"
    if principal is None:
        principal, source = settings.default_principal, "default"
    if not _PRINCIPAL.match(principal):
        raise IdentityError(f"{principal!r} (from {source}) is not a Kerberos principal user@REALM")
    if settings.allowed_principals and principal not in settings.allowed_principals:
        raise IdentityError(
            f"{principal} (from {source}) is not in [winexec] allowed_principals; add it there "
            "or run the task as an allowed principal"
        )
    return Identity(principal=principal, source=source, delegate=settings.delegate_for(principal))

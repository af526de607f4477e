"""Which Kerberos principal a task runs as, and whether it may: a pure function of ``[winexec]``
and the task's facts.

Precedence, most specific first (the first that applies wins):

1. ``executor_config={"winexec": {"principal": "user@REALM"}}`` on the task
   (when ``honor_executor_config``);
2. the task's ``run_as_user`` (when ``honor_run_as_user``); a bare ``user`` gets the realm of
   ``default_principal``;
3. ``pool_principals[<task's pool>]``;
4. ``queue_principals[<task's queue>]``;
5. the first ``grants`` rule marked ``default`` that matches the task's DAG;
6. ``default_principal``.

Then the choice must be allowed: with ``grants``, some rule must grant that principal to the
task's DAG; without, it must be one the administrator mapped (default, pool, queue), so that a
DAG author's ``executor_config`` cannot name a principal nobody granted. A refusal fails the task
before any launch rather than running it as someone else: running a task as someone other than
its author asked is worse than failing it. The TGT is forwarded only where a granting rule says
``delegate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from winexec.config import Settings
from winexec.grants import DagFacts

Source = Literal["executor_config", "run_as_user", "pool", "queue", "grant", "default"]

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
    dag: DagFacts | None = None

    @classmethod
    def from_ti(
        cls,
        ti: Any,
        *,
        pool: str | None = None,
        run_as_user: str | None = None,
        dag: DagFacts | None = None,
    ) -> TaskFacts:
        """From a workload's ``TaskInstanceDTO`` (it carries queue and executor_config, not the rest)."""
        return cls(
            queue=getattr(ti, "queue", None),
            pool=pool if pool is not None else getattr(ti, "pool", None),
            run_as_user=run_as_user if run_as_user is not None else getattr(ti, "run_as_user", None),
            executor_config=getattr(ti, "executor_config", None),
            dag=dag if dag is not None else DagFacts(str(getattr(ti, "dag_id", "") or "")),
        )


@dataclass(frozen=True)
class Identity:
    principal: str
    source: Source
    delegate: bool
    #: the ``grants`` rule that allowed it ("grants rule 2 (...)"); None without rules
    grant: str | None = None


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
    dag = facts.dag or DagFacts("")
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
        rule = next((g for g in settings.grants if g.default and g.matches(dag)), None)
        if rule is not None:
            principal, source = rule.principal, "grant"
    if principal is None:
        principal, source = settings.default_principal, "default"
    if not _PRINCIPAL.match(principal):
        raise IdentityError(f"{principal!r} (from {source}) is not a Kerberos principal user@REALM")
    if not settings.grants:
        if principal not in settings.configured_principals():
            raise IdentityError(
                f"{principal} (from {source}) is not granted to {dag.describe()}: with no [winexec] "
                "grants, tasks run only as default_principal or a pool_principals/queue_principals "
                f"mapping; grant it with a rule such as '{principal}: dag_id={dag.dag_id or '*'}'"
            )
        return Identity(principal=principal, source=source, delegate=False)
    granting = [g for g in settings.grants if g.principal == principal and g.matches(dag)]
    if not granting:
        raise IdentityError(
            f"{principal} (from {source}) is not granted to {dag.describe()}: no [winexec] grants "
            f"rule gives it this DAG; add one such as '{principal}: dag_id={dag.dag_id or '*'}'"
        )
    return Identity(
        principal=principal,
        source=source,
        delegate=any(g.delegate for g in granting),
        grant=str(next((g for g in granting if g.delegate), granting[0])),
    )


def for_connection_test(settings: Settings, queue: str | None) -> Identity:
    """The principal an Airflow connection test runs as: its queue's (``queue_principals``), else
    ``default_principal``, i.e. what a task of that queue runs as when nothing else names one.

    No DAG asks, so grants (rules about DAGs) do not choose or refuse it; the Airflow user who
    asks must be allowed to edit connections. Its TGT is never forwarded: whoever may edit a
    connection names the server the test talks to, and a delegated TGT on the host would let
    the test act as the principal anywhere (a second hop is tested as far as RBCD allows it).
    """
    source: Source = "default"
    principal = settings.default_principal
    if queue and queue in settings.queue_principals:
        principal, source = settings.queue_principals[queue], "queue"
    return Identity(principal=principal, source=source, delegate=False)

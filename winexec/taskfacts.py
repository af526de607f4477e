"""What identity and timeouts need to know about a task or a callback, read from Airflow's database.

A workload carries the task's queue and ``executor_config`` but not its pool, ``run_as_user``,
``execution_timeout``, or the DAG's tags, bundle and team that grants match on. The scheduler
hands the executor its session while it queues a workload, and adoption and the log view have
ORM task instances bound to one: these read through that session, never one of their own (the
scheduler's session is scoped; closing one would detach the instances being adopted). A fact
that cannot be read is logged and left empty: the grants then decide without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from winexec.grants import DagFacts, Grant, match_on
from winexec.identity import TaskFacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DbFacts:
    """A task's facts from the database (``None`` where the database did not say)."""

    pool: str | None
    run_as_user: str | None
    execution_timeout: float | None
    dag: DagFacts


class FactsReader:
    """Reads facts for ``grants``: a DAG's team costs one more query, made only where a rule
    matches on ``team=``. Keeps one ``DBDagBag`` (serialized DAGs by version) for its life."""

    def __init__(self, grants: tuple[Grant, ...]) -> None:
        self.need_team = match_on(grants, "team")
        self._dagbag: Any = None

    def task(self, ti: Any, session: Any, bundle: str | None = None) -> DbFacts:
        """The task's pool, ``run_as_user`` and ``execution_timeout``, and what grants match on."""
        pool: str | None = None
        run_as_user: str | None = None
        timeout: float | None = None
        tags: frozenset[str] = frozenset()
        team: str | None = None
        try:
            from airflow.models.taskinstance import TaskInstance as TI
            from sqlalchemy import select

            pool = session.scalar(select(TI.pool).where(TI.id == ti.id))
        except Exception as e:
            log.warning("winexec: cannot read the pool of %s: %s", ti.key, str(e))
        try:
            if self._dagbag is None:
                from airflow.models.dagbag import DBDagBag

                self._dagbag = DBDagBag()
            dag = self._dagbag.get_dag(ti.dag_version_id, session=session)
            task = dag.get_task(ti.task_id) if dag is not None else None
            if task is not None:
                run_as_user = getattr(task, "run_as_user", None) or None
                et = getattr(task, "execution_timeout", None)
                if et is not None:
                    timeout = et.total_seconds() if hasattr(et, "total_seconds") else float(et)
                if pool is None:
                    pool = getattr(task, "pool", None)
            tags = frozenset(str(t) for t in (getattr(dag, "tags", None) or ()))
        except Exception as e:
            log.warning("winexec: cannot read the task definition of %s: %s", ti.key, str(e))
        try:
            from airflow.models.dag import DagModel
            from sqlalchemy import select

            if bundle is None:
                bundle = session.scalar(select(DagModel.bundle_name).where(DagModel.dag_id == ti.dag_id))
            if self.need_team:
                team = DagModel.get_team_name(ti.dag_id, session=session)
        except Exception as e:
            log.warning("winexec: cannot read the bundle and team of %s: %s", ti.key, str(e))
        return DbFacts(pool, run_as_user, timeout, DagFacts(str(ti.dag_id), bundle, tags, team))

    def callback_dag(self, workload: Any, session: Any) -> DagFacts:
        """The DAG a callback belongs to, as grants see it (its log path names it:
        ``executor_callbacks/<dag_id>/<run_id>/<id>``)."""
        parts = str(workload.log_path or "").split("/")
        dag_id = parts[1] if len(parts) > 2 and parts[0] == "executor_callbacks" else ""
        bundle = getattr(workload.bundle_info, "name", None)
        tags: frozenset[str] = frozenset()
        team: str | None = None
        try:
            from airflow.models.dag import DagModel, DagTag
            from sqlalchemy import select

            tags = frozenset(session.scalars(select(DagTag.name).where(DagTag.dag_id == dag_id)))
            if self.need_team:
                team = DagModel.get_team_name(dag_id, session=session)
        except Exception as e:
            log.warning("winexec: cannot read the tags and team of DAG %s: %s", dag_id, str(e))
        return DagFacts(dag_id, bundle, tags, team)

    def orm_ti(self, ti: Any) -> TaskFacts:
        """Identity facts of a scheduler-side TaskInstance, through the session it is bound to."""
        from sqlalchemy.orm import object_session
        from sqlalchemy.orm.exc import UnmappedInstanceError

        run_as_user: str | None = None
        dag = DagFacts(str(getattr(ti, "dag_id", "") or ""))
        try:
            session = object_session(ti)
        except UnmappedInstanceError:  # not an ORM instance: nothing more to read
            session = None
        if session is not None:
            found = self.task(ti, session)
            run_as_user, dag = found.run_as_user, found.dag
        return TaskFacts(
            queue=getattr(ti, "queue", None),
            pool=getattr(ti, "pool", None),
            run_as_user=run_as_user,
            executor_config=getattr(ti, "executor_config", None),
            dag=dag,
        )

"""Adopting the runs a previous scheduler left going: reattach to their shells, as their principal.

The external executor id ``<host>|<run_id>`` names the host and the run, and the run id is the
id of the WinRM shell the agent runs in, so the shell can be found and connected to again. An
id without ``|`` is the one the scheduler assigned at queuing (the workload's launch key): the
previous scheduler died before it saved where the run went, so every host is asked (``--runs``)
for a live run of that key, once per host and principal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from winexec.executor import results as res
from winexec.executor.driver import TaskDriver
from winexec.executor.jobs import stop_quietly
from winexec.executor.records import Phase, TaskRecord
from winexec.identity import Identity, resolve
from winexec.pool import task_weight
from winexec.taskfacts import FactsReader
from winexec.watchdog import Liveness

if TYPE_CHECKING:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancekey import TaskInstanceKey

    from winexec.config import HostSpec


class Adoption:
    def __init__(self, driver: TaskDriver, facts: FactsReader) -> None:
        self.driver = driver
        self.facts = facts
        #: (ti, host or None while searched for, identity, run id or launch key), by task
        self._adopting: dict[TaskInstanceKey, tuple[Any, HostSpec | None, Identity, str]] = {}
        self._adopted: set[TaskInstanceKey] = set()

    def adopt(self, tis: Sequence[TaskInstance], drain: Any) -> Sequence[TaskInstance]:
        """Reattach to what ``tis`` left running; hand back the rest, for the scheduler to reset.

        This waits for the reattach attempts (a connect and a read timeout per round of
        ``io_workers``, per host where a run is searched for), calling ``drain`` to apply
        results: adoption happens when a scheduler takes over, not on every heartbeat.
        """
        d = self.driver
        s, pool, log = d.s, d.pool, d.log
        pending: dict[TaskInstanceKey, TaskInstance] = {}
        searches: dict[str, dict[TaskInstanceKey, tuple[Identity, str]]] = {}
        for ti in tis:
            try:
                ext = str(getattr(ti, "external_executor_id", None) or "")
            except Exception:
                continue
            host_name, sep, run_id = ext.partition("|")
            if not ext or ti.key in d.book or (sep and (not run_id or host_name not in pool)):
                continue
            try:
                ident = resolve(s, self.facts.orm_ti(ti))
            except Exception as e:  # adoption must never take the scheduler down
                log.warning("winexec: cannot adopt %s: %s", ti.key, str(e))
                continue
            pending[ti.key] = ti
            if sep:
                host = pool[host_name].spec
                self._adopting[ti.key] = (ti, host, ident, run_id)
                d.jobs.submit(d.jobs.reattach, ti.key, host, ident, run_id)
            else:
                self._adopting[ti.key] = (ti, None, ident, ext)
                searches.setdefault(ident.principal, {})[ti.key] = (ident, ext)
        hosts = [h.spec for h in pool.active_hosts()]
        for wanted in searches.values():  # one question per host and principal, not per task
            d.jobs.submit(d.jobs.find_and_reattach, hosts, wanted)
        waves = -(-len(pending) // max(1, s.io_workers))  # reattaches run io_workers at a time
        per_wave = (s.connect_timeout + s.read_timeout) * (1 + (len(pool.active_hosts()) if searches else 0))
        deadline = d.clock() + per_wave * max(1, waves)
        while any(k in self._adopting for k in pending) and d.clock() < deadline:
            time.sleep(0.05)
            drain()
        adopted = {k for k in pending if k in self._adopted}
        self._adopted -= adopted
        for k in pending:
            if k not in adopted:
                self._adopting.pop(k, None)  # a late answer closes the session
        if pending:
            log.info("winexec: adopted %d of %d orphaned task(s)", len(adopted), len(tis))
        return [ti for ti in tis if ti.key not in adopted]

    def on_result(self, result: res.Reattached | res.ReattachFailed) -> None:
        d = self.driver
        key = result.key
        pending = self._adopting.pop(key, None)
        if isinstance(result, res.ReattachFailed):
            if pending is not None:
                d.log.warning("winexec: cannot reattach to %s: %s", key, result.error.reason)
            return
        session, at, run_id = result.session, result.at, result.run_id
        if pending is None or d.closing:
            d.jobs.submit(stop_quietly, session, "not adopted")  # too late: the scheduler resets it
            return
        ti, searched, ident, _ = pending
        host = session.host
        try:
            weight = task_weight(getattr(ti, "pool_slots", 1), getattr(ti, "executor_config", None))
        except ValueError:
            weight = 1  # it runs already: count it, whatever its setting says
        claimed = d.pool.claim(host.name, ident.principal, weight)
        rec = TaskRecord(
            key=key,
            workload=None,
            identity=ident,
            execution_timeout=None,  # the agent enforces it; it started before we came
            run_id=run_id,
            phase=Phase.RUNNING,
            host=claimed or host,
            session=session,
            started=True,
            log_path=_log_path(ti),
            weight=weight,
        )
        rec.live = Liveness(last_heartbeat=at, last_poll_ok=at, heard=True)
        d.book.add(rec)
        d.airflow.running.add(key)
        self._adopted.add(key)
        if searched is None:  # found by its pre-assigned id: now Airflow learns where it runs
            d.airflow.running_state(key, rec.external_id)
        d.log.info("winexec: adopted %s: reattached to run %s on %s", key, run_id, host.name)
        d.next_job(rec)


def _log_path(ti: Any) -> str | None:
    """The task's relative log path, as Airflow renders it for this try."""
    try:
        from airflow.utils.helpers import log_filename_template_renderer

        return str(log_filename_template_renderer()(ti=ti))
    except Exception:
        return None

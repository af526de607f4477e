"""The BaseExecutor hooks, and nothing else: each hands its work to a part of this package.

Threading model (the AWS ECS executor's split of executor / task collection): the scheduler
thread owns the record book (:mod:`.records`), the host pool and the event buffer, and moves
records on in the driver (:mod:`.driver`, deciding by :mod:`.policy`); a bounded pool of I/O
worker threads (:mod:`.jobs`) does all network work, one job per task at a time, and reports
typed results (:mod:`.results`) that ``sync()`` applies. A running task therefore costs a record
and a share of the workers, never a thread of its own, and ``sync()`` / ``heartbeat()`` never
wait on the network. Adoption (:mod:`.adoption`) and connection tests and callbacks
(:mod:`.oneshots`) are parts of their own.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.executors.base_executor import BaseExecutor

from winexec import metrics
from winexec.audit import AuditTrail, audit_path
from winexec.config import HostSpec, Settings, WinexecConfigError, airflow_getter, load
from winexec.executor import policy
from winexec.executor import results as res
from winexec.executor.adoption import Adoption
from winexec.executor.driver import TaskDriver
from winexec.executor.jobs import HostJobs, read_drains, stop_quietly
from winexec.executor.oneshots import OneShots
from winexec.executor.records import Phase, RecordBook, TaskRecord
from winexec.identity import IdentityError, TaskFacts, resolve
from winexec.pool import HostPool
from winexec.taskfacts import FactsReader
from winexec.transport import CredentialStore, PsrpTransport, Transport
from winexec.transport.warm import WarmTransport

if TYPE_CHECKING:
    from airflow.executors import workloads
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy.orm import Session

#: How often the watchdog sweeps all running tasks.
SWEEP_INTERVAL = 1.0


class WindowsKerberosExecutor(BaseExecutor):
    """Runs each task instance on a Windows host over PSRP as the task's own principal."""

    is_local: bool = False
    #: connection tests and DAG callbacks run on a host too (:mod:`winexec.oneshot`)
    supports_connection_test: bool = True
    supports_callbacks: bool = True
    #: The scheduler saves a UUID with the QUEUED state: it is the workload's launch key, so a
    #: scheduler killed after the launch but before it saved ``<host>|<run_id>`` leaves an id the
    #: next one finds the run by (:meth:`try_adopt_task_instances`), instead of starting it again.
    pre_assigns_external_executor_id: ClassVar[bool] = True
    #: One executor per team (Airflow's multi-team mode), each with its own ``[<team>=winexec]``:
    #: its own hosts, principals and grants.
    supports_multi_team: bool = True
    serve_logs: bool = False
    #: the logger's name from before the executor became a package (log settings name it)
    _logger_name: str | None = "winexec.executor.WindowsKerberosExecutor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: Settings | None = None
        self.pool: HostPool | None = None
        self.tickets: CredentialStore | None = None
        self.transport: Transport = PsrpTransport()  # how hosts are reached (a fake in unit tests)
        self.records = RecordBook()
        self.audit: AuditTrail | None = None
        self.driver: TaskDriver | None = None
        self._adoption: Adoption | None = None
        self._oneshots: OneShots | None = None
        self._reader: FactsReader | None = None
        self._refused_kinds: set[str] = set()
        self._last_sweep = 0.0
        self._next_refresh = 0.0
        self._refreshing = False
        self._clock: Callable[[], float] = time.monotonic
        self._execution_api: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Validate ``[winexec]`` once (all problems in one error) and start the I/O workers."""
        settings = self.settings = self.settings or self._load_settings()
        if settings.warm_runners and isinstance(self.transport, PsrpTransport):
            self.transport = WarmTransport()
        pool = self.pool = HostPool(
            settings.hosts, failure_threshold=settings.host_failure_threshold, cooldown=settings.host_cooldown
        )
        if self.tickets is None:
            self.tickets = _make_ticket_store(settings)
        tickets = self.tickets
        self.audit = AuditTrail(audit_path(settings))
        jobs = HostJobs(
            settings, self.transport, tickets, self.records, self._clock, self.log, self.team_name
        )
        self.driver = driver = TaskDriver(
            settings, pool, self.records, jobs, self.audit, self, self.log, self._clock, self._server_url
        )
        self._adoption = Adoption(driver, self._facts_reader())
        self._oneshots = OneShots(driver, self, _default_queue, self._callback_timeout)
        self._next_refresh = self._clock() + settings.host_refresh_interval
        self._apply_drains(read_drains(self.log))
        self.log.info(
            "winexec%s: %d host(s) %s, %d slot(s), %d I/O worker(s)",
            f" (team {self.team_name})" if self.team_name else "",
            len(settings.hosts),
            ", ".join(str(h) for h in settings.hosts),
            pool.total_slots(),
            settings.io_workers,
        )

    def _load_settings(self) -> Settings:
        """``[winexec]``, or a team's own section: its problems then say which team's."""
        try:
            return load(airflow_getter(self.team_name))
        except WinexecConfigError as e:
            if not self.team_name:
                raise
            team = self.team_name
            where = f"team {team} ([{team}=winexec] or AIRFLOW__{team.upper()}___WINEXEC__*)"
            raise WinexecConfigError([f"{where}: {p}" for p in e.problems]) from None

    def _started(self) -> TaskDriver:
        if self.driver is None:
            raise RuntimeError("WindowsKerberosExecutor used before start()")
        return self.driver

    # -- queueing --------------------------------------------------------------------------
    def queue_workload(self, workload: workloads.ExecutorWorkload, session: Session) -> None:
        """Queue as the base class does, and look up what identity and timeouts need from the DB.

        The workload's TaskInstance carries queue and executor_config but not the pool, the
        task's ``run_as_user`` or its ``execution_timeout``; the scheduler's session is at hand
        here, so they are read now rather than from the scheduler loop later.

        A DAG's callback (``ExecuteCallback``) runs on a host as the DAG's tasks would
        (:mod:`winexec.oneshot`): what grants match on is read here too.
        """
        from airflow.executors import workloads as wl

        if not isinstance(workload, (wl.ExecuteTask, wl.ExecuteCallback, wl.TestConnection)):
            self._refuse_workload(workload)
            return
        super().queue_workload(workload, session)
        if isinstance(workload, wl.ExecuteCallback):
            dag = self._facts_reader().callback_dag(workload, session)
            self.records.callback_facts[workload.key] = TaskFacts(queue=_default_queue(), dag=dag)
            return
        ti = getattr(workload, "ti", None)
        if ti is None:
            return
        bundle = getattr(getattr(workload, "bundle_info", None), "name", None)
        found = self._facts_reader().task(ti, session, bundle)
        facts = TaskFacts.from_ti(ti, pool=found.pool, run_as_user=found.run_as_user, dag=found.dag)
        self.records.facts[ti.key] = (facts, found.execution_timeout)

    def _refuse_workload(self, workload: Any) -> None:
        """A workload type this winexec does not know (a newer Airflow's): the base class would
        raise in the scheduler loop, on every loop while the workload stays pending. Fail its
        task, if it names one not running here, with the reason in its log; otherwise say so
        in the scheduler's log, once per type."""
        kind = type(workload).__name__
        reason = (
            f"winexec does not run {kind} workloads (it runs ExecuteTask, ExecuteCallback and TestConnection)"
        )
        key = getattr(getattr(workload, "ti", None), "key", None)
        if key is not None and key not in self.running:
            self.running.add(key)
            self._started().finish_unlaunched(key, getattr(workload, "log_path", None), reason)
        elif kind not in self._refused_kinds:
            self._refused_kinds.add(kind)
            self.log.error("winexec: %s", reason)

    def _process_workloads(self, workload_items: Sequence[workloads.ExecutorWorkload]) -> None:
        """Accept as many tasks as there are free host slots; the rest stay queued for later."""
        from airflow.executors import workloads as wl

        driver = self._started()
        assert self._oneshots is not None
        capacity = driver.pool.free_slots() - self.records.waiting
        for workload in workload_items:
            if isinstance(workload, (wl.TestConnection, wl.ExecuteCallback)):
                self._oneshots.launch(workload)
                continue
            key = workload.ti.key
            if capacity <= 0:
                break  # stays in queued_tasks; offered again next heartbeat
            if key in self.records:
                # The same try again (a sensor's next poke, a resumed deferral) before its previous
                # run here has wrapped up: that run's results must not land on this one's record.
                continue  # stays in queued_tasks; offered again next heartbeat
            self.queued_tasks.pop(key, None)
            facts, timeout = self.records.facts.pop(key, (TaskFacts.from_ti(workload.ti), None))
            unplaceable, weight = policy.unplaceable(driver.pool, workload.ti)
            ident = None
            try:
                ident = None if unplaceable else resolve(driver.s, facts)
            except IdentityError as e:
                unplaceable = f"cannot choose a principal: {e}"
                bundle = facts.dag.bundle if facts.dag else None
                driver.trail.record("refused", key, bundle=bundle, outcome="failed", reason=unplaceable)
            if ident is None:
                self.running.add(key)
                driver.finish_unlaunched(key, workload.log_path, unplaceable)
                continue
            external_id = getattr(workload.ti, "external_executor_id", None)
            rec = TaskRecord(
                key=key,
                workload=workload,
                identity=ident,
                execution_timeout=timeout,
                log_path=workload.log_path,
                weight=weight,
                launch_key=_launch_key(external_id),
            )
            capacity -= weight
            driver.accept(rec)
        driver.launch_due()

    # -- the loop --------------------------------------------------------------------------
    def sync(self) -> None:
        """Apply what the workers reported, start due launches and polls, sweep the watchdog."""
        driver = self.driver
        if driver is None:
            return
        self._drain_results()
        driver.launch_due()
        now = self._clock()
        driver.tick(now)
        if now - self._last_sweep >= SWEEP_INTERVAL:
            self._last_sweep = now
            if len(self.records.facts) > len(self.queued_tasks):  # of workloads the scheduler took back
                self.records.facts = {k: v for k, v in self.records.facts.items() if k in self.queued_tasks}
            driver.sweep(now)
            metrics.pool_gauges(driver.pool, now, self.records.last_heartbeats())
            if isinstance(self.transport, WarmTransport):
                driver.jobs.submit(self.transport.retire_idle, driver.s.keepalive_timeout)
        if now >= self._next_refresh and not self._refreshing:
            self._refreshing = True
            driver.jobs.submit(driver.jobs.refresh_hosts)
        if driver.trail.flush_due():
            driver.jobs.submit(driver.trail.flush)

    def _drain_results(self) -> None:
        driver = self._started()
        assert self._adoption is not None and self._oneshots is not None
        for result in driver.jobs.drain():
            match result:
                case res.HostsRead(hosts, problems, drains):
                    self._on_hosts(hosts, problems, drains)
                case res.OneShotDone():
                    self._oneshots.on_done(result)
                case res.Reattached() | res.ReattachFailed():
                    self._adoption.on_result(result)
                case res.StrayChecked(stray, done):
                    driver.on_stray_checked(stray, done)
                case _:
                    driver.on_result(result)

    def _on_hosts(
        self, hosts: tuple[HostSpec, ...], problems: list[str], drains: dict[str, str] | None
    ) -> None:
        driver = self._started()
        self._refreshing = False
        self._next_refresh = self._clock() + driver.s.host_refresh_interval
        if problems:
            for p in problems:
                self.log.error("winexec: %s (keeping the current hosts)", p)
        else:
            added, removed = driver.pool.update(hosts)
            if added or removed:
                self.log.info("winexec: hosts added %s, removed %s (running tasks finish)", added, removed)
        self._apply_drains(drains)

    def _apply_drains(self, drains: dict[str, str] | None) -> None:
        if drains is None or self.pool is None:
            return
        drained, resumed = self.pool.set_drained(drains)
        for name in drained:
            self.log.warning(
                "winexec: %s gets no new tasks, %s (its running tasks finish)", name, drains[name]
            )
        for name in resumed:
            self.log.info("winexec: %s resumed: back in placement", name)

    # -- endings ------------------------------------------------------------------------------
    def end(self) -> None:
        """Stop launching and detach from every running task, leaving it running on its host.

        Each agent keeps running in a disconnected WinRM shell named by its run id; the next
        scheduler reattaches to it in :meth:`try_adopt_task_instances`. A shell nobody
        reattaches to is deleted by its host after ``keepalive_timeout`` (its IdleTimeOut), and
        the task's processes with it. Queued-but-unlaunched tasks are simply not started.
        """
        driver = self.driver
        if driver is None:
            return
        driver.closing = True
        s = driver.s
        for rec in self.records.values():
            if rec.phase is Phase.WAITING:
                driver.forget(rec)
            elif rec.phase is Phase.RUNNING and not rec.busy:
                driver.next_job(rec)  # the disconnect
        waves = -(-len(self.records) // max(1, s.io_workers))  # disconnects run io_workers at a time
        deadline = self._clock() + (s.connect_timeout + s.read_timeout) * max(1, waves)
        while self.records and self._clock() < deadline:
            self._drain_results()
            for rec in self.records.values():
                if rec.phase is Phase.RUNNING and not rec.busy:
                    driver.next_job(rec)
            time.sleep(0.05)
        if self.records:
            self.log.warning("winexec: %d task(s) not detached cleanly at shutdown", len(self.records))
        if isinstance(self.transport, WarmTransport):
            self.transport.close()  # warm agents finish their runs, then exit
        driver.jobs.shutdown(wait=False)
        driver.trail.flush()
        self._close_tickets()

    def _close_tickets(self) -> None:
        close = getattr(self.tickets, "close", None)
        if callable(close):
            try:
                close()
            except Exception as e:
                self.log.warning("winexec: closing the ticket store: %s", str(e))

    def terminate(self) -> None:
        """Stop every running task on its host (SIGTERM of the daemon), then shut down."""
        driver = self.driver
        if driver is None:
            return
        driver.closing = True
        for rec in self.records.values():
            if rec.session is not None:
                driver.jobs.submit(stop_quietly, rec.session, "scheduler terminating")
                rec.session = None
            driver.forget(rec)
        driver.jobs.shutdown(wait=True)
        if isinstance(self.transport, WarmTransport):
            self.transport.close()
        driver.trail.flush()
        self._close_tickets()

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """Stop the task on its host and forget it, without reporting a state."""
        key = ti.key
        self.queued_tasks.pop(key, None)
        self.records.facts.pop(key, None)
        rec = self.records.get(key)
        self.running.discard(key)
        if rec is None or self.driver is None:
            return
        rec.revoked = True
        if rec.phase is Phase.WAITING:
            self.driver.forget(rec)
        elif rec.phase is Phase.RUNNING:
            self.driver.request_stop(rec, "revoked by the scheduler")
        elif rec.phase is Phase.LAUNCHING:
            rec.stop_reason = "revoked by the scheduler"  # the stop follows the launch

    def try_adopt_task_instances(self, tis: Sequence[TaskInstance]) -> Sequence[TaskInstance]:
        """Reattach to the agents a previous scheduler left running; hand back the rest
        (:mod:`winexec.executor.adoption`)."""
        if self.driver is None or self._adoption is None or self.driver.closing:
            return tis
        return self._adoption.adopt(tis, self._drain_results)

    # -- Airflow's other entry points ---------------------------------------------------------
    def get_task_log(self, ti: TaskInstance, try_number: int) -> tuple[list[str], list[str]]:
        """A running task's log, read from its Windows host over the task's own channel.

        Airflow calls this in the api-server, on an executor that was never started; see
        :mod:`winexec.tasklog`.
        """
        from winexec.tasklog import read_task_log

        return read_task_log(self, ti, try_number)

    @staticmethod
    def get_cli_commands() -> list[Any]:
        """``airflow winexec hosts|check|tickets`` (:mod:`winexec.cli`)."""
        from winexec.cli import get_cli_commands

        return list(get_cli_commands())

    def _facts_reader(self) -> FactsReader:
        if self._reader is None:
            if self.settings is None:
                raise RuntimeError("WindowsKerberosExecutor used before start()")
            self._reader = FactsReader(self.settings.grants)
        return self._reader

    def _airflow_conf(self, *options: tuple[str, str]) -> Any:
        """This executor's ``conf`` (a team's own sections) where the team sets one of
        ``options`` itself, else the deployment's: Airflow 3.3's team lookup falls back to the
        built-in defaults, not to ``[core]``, so a team that sets none would send its hosts to the
        Execution API at ``localhost:8080`` and give callbacks no time limit."""
        import configparser

        from airflow.configuration import conf

        if not self.team_name:
            return self.conf
        team = self.team_name
        for section, key in options:
            env = f"AIRFLOW__{team.upper()}___{section.replace('.', '_').upper()}__{key.upper()}"
            if env in os.environ or configparser.ConfigParser.has_option(conf, f"{team}={section}", key):
                return self.conf
        return conf

    def _server_url(self) -> str | None:
        """The Execution API URL the task on the host talks to (``[core] execution_api_server_url``)."""
        if self._execution_api is None:
            try:
                from airflow.executors.base_executor import get_execution_api_server_url

                source = self._airflow_conf(("core", "execution_api_server_url"), ("api", "base_url"))
                self._execution_api = get_execution_api_server_url(source)
            except Exception as e:
                self.log.warning("winexec: cannot resolve the execution API URL: %s", str(e))
                self._execution_api = ""
        return self._execution_api or None

    def _callback_timeout(self) -> int:
        timeout = self._airflow_conf(("callbacks", "callback_execution_timeout"))
        return int(timeout.getint("callbacks", "callback_execution_timeout", fallback=0))

    # -- introspection for tests and the CLI --------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "phases": self.records.phases(),
            "hosts": self.pool.describe() if self.pool else [],
            "strays": [f"{x.host.name}|{x.run_id}" for x in self.records.strays],
            "waiting": {str(r.key): r.waits_for for r in self.records.values() if r.waits_for},
        }


def _launch_key(pre_assigned: str | None) -> str:
    """The workload's launch key: the id Airflow saved with QUEUED (``pre_assigns_external_executor_id``),
    unless it is an old ``<host>|<run_id>`` kept from an earlier launch; else a fresh one."""
    if pre_assigned and "|" not in pre_assigned:
        return str(pre_assigned)
    return uuid.uuid4().hex


def _default_queue() -> str:
    """The queue a connection test or callback without one belongs to, as for a task without one."""
    from airflow.configuration import conf

    return conf.get("operators", "default_queue", fallback="default")


def _make_ticket_store(settings: Settings) -> CredentialStore:
    """A ``winexec.tickets.TicketStore`` with every statically configured principal, started.

    Starting acquires each TGT now, so a bad keytab or unknown principal stops the scheduler at
    start-up with the principal named, instead of failing tasks one by one later.
    """
    from winexec.tickets import TicketStore

    keytabs: dict[str, str] = {}
    for principal in settings.static_principals():
        path = settings.keytab_for(principal)
        if path:
            keytabs[principal] = path
    store = TicketStore(keytabs)
    store.start()
    return store

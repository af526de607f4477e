"""Airflow glue: maps BaseExecutor calls onto the host pool, the launcher and the watchdog.

Threading model (the same split as the AWS ECS executor's executor / config / task collection):
the scheduler thread owns every record, the host pool and the event buffer; a bounded pool of
I/O worker threads does all network work (launch, one poll, stop), one job per task at a time,
and reports through a thread-safe queue that ``sync()`` drains. A running task therefore costs a
:class:`TaskRecord` and a share of the workers, never a thread of its own, and ``sync()`` /
``heartbeat()`` never wait on the network.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.executors.base_executor import BaseExecutor

from winexec import jobresults as res
from winexec import maintenance, metrics, oneshot, protocol
from winexec.audit import AuditTrail, audit_path
from winexec.backoff import backoff, retry_delay
from winexec.config import HostSpec, Settings, airflow_getter, airflow_log_folder, load, reread_hosts
from winexec.identity import Identity, IdentityError, TaskFacts, for_connection_test, resolve
from winexec.pool import HostPool, task_weight
from winexec.quotas import QuotaReader
from winexec.taskfacts import FactsReader
from winexec.transport import (
    AgentFailure,
    CredentialStore,
    HostFull,
    LaunchAmbiguous,
    LaunchError,
    NoAgent,
    NoShell,
    PollResult,
    PsrpTransport,
    PythonMissing,
    ShellGone,
    TaskSession,
    TicketFailure,
    Transport,
    classify,
    python_missing_reason,
    shell_id_for,
)
from winexec.watchdog import Liveness, judge

if TYPE_CHECKING:
    from airflow.executors import workloads
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancekey import TaskInstanceKey
    from sqlalchemy.orm import Session

#: How long a stop on the way out (scheduler terminating, stray cleanup) waits for the agent's
#: ``exit`` line before deleting the shell; it holds a worker meanwhile.
STOP_WAIT = 5.0
#: Beyond the agent's grace (terminate, then kill the tree), how long the executor keeps polling a
#: stopping task for its ``exit`` line before deleting its shell: the agent must still report.
STOP_SLACK = 15.0
#: Retry delay while no host has a free slot or after a "host full" answer.
FULL_RETRY = 2.0
#: Between attempts to stop an agent left by an ambiguous launch.
STRAY_RETRY = 5.0
#: How often the watchdog sweeps all running tasks.
SWEEP_INTERVAL = 1.0
#: stderr lines of an agent kept for a failure message.
ERROR_TAIL = 5


class Phase(Enum):
    WAITING = "waiting"  # accepted, waiting for a host slot or a retry backoff
    LAUNCHING = "launching"
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"


@dataclass(slots=True)
class TaskRecord:
    """Everything the executor knows about one accepted task instance."""

    key: TaskInstanceKey
    workload: workloads.ExecuteTask | None  # None for a task adopted from a previous scheduler
    identity: Identity
    execution_timeout: float | None
    run_id: str = ""
    #: Made once per accepted workload; every launch attempt of it carries it (``Start.launch_key``),
    #: so the host refuses a retried launch that already reached it, never a re-queue of the try.
    launch_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempt: int = 0
    phase: Phase = Phase.WAITING
    host: HostSpec | None = None
    session: TaskSession | None = None
    busy: bool = False  # a worker job for it is in flight
    excluded: set[str] = field(default_factory=set)
    live: Liveness | None = None
    started: bool = False  # the agent said "started"
    stop_reason: str | None = None
    #: Set once the agent was asked to stop: polls go on until its ``exit`` line or this time.
    stop_until: float | None = None
    revoked: bool = False
    reported: bool = False  # success/fail already in the event buffer
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=ERROR_TAIL))
    last_error: str = ""
    waits_for: str = ""  # why no host takes it now, as last logged
    log_path: str | None = None  # relative task log path (``workload.log_path``)
    weight: int = 1  # host slots it takes (:func:`winexec.pool.task_weight`)

    @property
    def external_id(self) -> str:
        return f"{self.host.name if self.host else ''}|{self.run_id}"


@dataclass
class Stray:
    """An agent that may run on a host with nobody driving it: its launch was ambiguous (the
    command reached the host, then the host went silent). Stopped once the host answers again;
    after ``give_up_at`` it is gone (no start line, or its shell idled out)."""

    host: HostSpec
    identity: Identity
    run_id: str
    give_up_at: float
    next_at: float = 0.0
    busy: bool = False


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: Settings | None = None
        self.pool: HostPool | None = None
        self.tickets: CredentialStore | None = None
        self.transport: Transport = PsrpTransport()  # how hosts are reached (a fake in unit tests)
        self.records: dict[TaskInstanceKey, TaskRecord] = {}
        self._facts: dict[TaskInstanceKey, tuple[TaskFacts, float | None]] = {}
        self._callback_facts: dict[Any, TaskFacts] = {}  # by CallbackKey, read in queue_workload
        self._results: queue.SimpleQueue[res.JobResult] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, TaskInstanceKey]] = []  # launches due
        self._poll_timers: list[tuple[float, int, TaskInstanceKey]] = []  # delayed polls
        self._waiting: set[TaskInstanceKey] = set()
        self._seq = itertools.count()
        self._io: ThreadPoolExecutor | None = None
        self._reader: FactsReader | None = None
        self._refused_kinds: set[str] = set()
        self._last_sweep = 0.0
        self._next_refresh = 0.0
        self._refreshing = False
        self._quotas: QuotaReader | None = None  # the refresh job's alone
        self._closing = False
        self._clock: Callable[[], float] = time.monotonic
        self._principals: set[str] = set()
        self._execution_api: str | None = None
        #: (ti, host or None while searched for, identity, run id or launch key), by task
        self._adopting: dict[TaskInstanceKey, tuple[Any, HostSpec | None, Identity, str]] = {}
        self._adopted: set[TaskInstanceKey] = set()
        self._principals_lock = threading.Lock()
        self._job_started: dict[TaskInstanceKey, float] = {}  # written by workers, read by sweeps
        self._strays: list[Stray] = []
        self.audit: AuditTrail | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Validate ``[winexec]`` once (all problems in one error) and start the I/O workers."""
        settings = self.settings or self._load_settings()
        self.settings = settings
        self.pool = HostPool(
            settings.hosts,
            failure_threshold=settings.host_failure_threshold,
            cooldown=settings.host_cooldown,
        )
        if self.tickets is None:
            self.tickets = _make_ticket_store(settings)
        self._io = ThreadPoolExecutor(max_workers=settings.io_workers, thread_name_prefix="winexec-io")
        self.audit = AuditTrail(audit_path(settings))
        self._next_refresh = self._clock() + settings.host_refresh_interval
        self._apply_drains(self._read_drains())
        self.log.info(
            "winexec%s: %d host(s) %s, %d slot(s), %d I/O worker(s)",
            f" (team {self.team_name})" if self.team_name else "",
            len(settings.hosts),
            ", ".join(str(h) for h in settings.hosts),
            self.pool.total_slots(),
            settings.io_workers,
        )

    def _load_settings(self) -> Settings:
        """``[winexec]``, or a team's own section: its problems then say which team's."""
        from winexec.config import WinexecConfigError

        try:
            return load(airflow_getter(self.team_name))
        except WinexecConfigError as e:
            if not self.team_name:
                raise
            team = self.team_name
            where = f"team {team} ([{team}=winexec] or AIRFLOW__{team.upper()}___WINEXEC__*)"
            raise WinexecConfigError([f"{where}: {p}" for p in e.problems]) from None

    def _s(self) -> Settings:
        if self.settings is None:
            raise RuntimeError("WindowsKerberosExecutor used before start()")
        return self.settings

    def _hosts(self) -> HostPool:
        if self.pool is None:
            raise RuntimeError("WindowsKerberosExecutor used before start()")
        return self.pool

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
        if isinstance(workload, wl.ExecuteCallback):
            super().queue_workload(workload, session)
            self._callback_facts[workload.key] = TaskFacts(
                queue=_default_queue(), dag=self._facts_reader().callback_dag(workload, session)
            )
            return
        super().queue_workload(workload, session)
        ti = getattr(workload, "ti", None)
        if ti is None:
            return
        bundle = getattr(getattr(workload, "bundle_info", None), "name", None)
        found = self._facts_reader().task(ti, session, bundle)
        facts = TaskFacts.from_ti(ti, pool=found.pool, run_as_user=found.run_as_user, dag=found.dag)
        self._facts[ti.key] = (facts, found.execution_timeout)

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
            self._finish_unlaunched(key, getattr(workload, "log_path", None), reason)
        elif kind not in self._refused_kinds:
            self._refused_kinds.add(kind)
            self.log.error("winexec: %s", reason)

    def _process_workloads(self, workload_items: Sequence[workloads.ExecutorWorkload]) -> None:
        """Accept as many tasks as there are free host slots; the rest stay queued for later."""
        from airflow.executors import workloads as wl

        settings = self._s()
        capacity = self._hosts().free_slots() - self._waiting_count()
        for workload in workload_items:
            if isinstance(workload, (wl.TestConnection, wl.ExecuteCallback)):
                self._launch_oneshot(workload)
                continue
            key = workload.ti.key
            if capacity <= 0:
                break  # stays in queued_tasks; offered again next heartbeat
            if key in self.records:
                # The same try again (a sensor's next poke, a resumed deferral) before its previous
                # run here has wrapped up: that run's results must not land on this one's record.
                continue  # stays in queued_tasks; offered again next heartbeat
            self.queued_tasks.pop(key, None)
            facts, timeout = self._facts.pop(key, (TaskFacts.from_ti(workload.ti), None))
            unplaceable, weight = self._unplaceable(workload.ti)
            if unplaceable:
                self.running.add(key)
                self._finish_unlaunched(key, workload.log_path, unplaceable)
                continue
            try:
                ident = resolve(settings, facts)
            except IdentityError as e:
                self.running.add(key)
                reason = f"cannot choose a principal: {e}"
                bundle = facts.dag.bundle if facts.dag else None
                self._trail().record("refused", key, bundle=bundle, outcome="failed", reason=reason)
                self._finish_unlaunched(key, workload.log_path, reason)
                continue
            rec = TaskRecord(
                key=key,
                workload=workload,
                identity=ident,
                execution_timeout=timeout,
                log_path=workload.log_path,
                weight=weight,
                launch_key=_launch_key(getattr(workload.ti, "external_executor_id", None)),
            )
            self.records[key] = rec
            self.running.add(key)
            capacity -= weight
            self._schedule(rec, 0.0)
        self._launch_due()

    def _launch_oneshot(self, workload: Any) -> None:
        """Start a connection test or a DAG callback on a host serving its queue, or leave it
        queued until one has room (:mod:`winexec.oneshot`)."""
        from airflow.executors import workloads as wl

        pool, key, settings = self._hosts(), workload.key, self._s()
        test = isinstance(workload, wl.TestConnection)
        queued: dict[Any, Any] = self.queued_connection_tests if test else self.queued_callbacks
        facts = TaskFacts(queue=workload.queue or _default_queue()) if test else self._callback_facts.get(key)
        facts = facts or TaskFacts(queue=_default_queue())
        queue, ident, reason = facts.queue, None, ""
        if not pool.serves(queue):
            reason = (
                f"no host in [winexec] hosts serves queue {queue!r} (they serve: {pool.queues()}): "
                "add it to a host's queues="
            )
        else:
            try:
                ident = for_connection_test(settings, queue) if test else resolve(settings, facts)
            except IdentityError as e:
                reason = f"cannot choose a principal: {e}"
        if ident is None:
            queued.pop(key, None)
            self._callback_facts.pop(key, None)
            self.log.error("winexec: %s not run: %s", workload.display_name, reason)
            if test:
                self._submit(oneshot.fail_connection_test, key.id, reason)
            self.event_buffer[key] = (workload.failure_state, reason)
            return
        host = pool.acquire(ident.principal, queue=queue)
        if host is None:
            return  # stays queued: offered again next heartbeat
        queued.pop(key, None)
        self._callback_facts.pop(key, None)
        self.running.add(key)
        if not test:
            self.event_buffer[key] = (workload.running_state, None)
        self.log.info(
            "winexec: %s on %s as %s (%s)", workload.display_name, host.name, ident.principal, ident.source
        )
        mode: oneshot.Mode = "--test-connection" if test else "--callback"
        request: dict[str, Any] = {"workload": workload.model_dump(mode="json"), "server": self._server_url()}
        if not test:
            timeout = self._airflow_conf(("callbacks", "callback_execution_timeout"))
            request["timeout"] = timeout.getint("callbacks", "callback_execution_timeout", fallback=0)
        self._submit(self._job_oneshot, workload, host, ident, mode, request)

    def _job_oneshot(
        self,
        workload: Any,
        host: HostSpec,
        ident: Identity,
        mode: oneshot.Mode,
        request: dict[str, Any],
    ) -> None:
        ok, said, answered = oneshot.run_on_host(self._s(), host, ident, self.tickets, mode, request)
        self._results.put(res.OneShotDone(workload, host, ident, ok, said, answered))

    def _on_oneshot(
        self, workload: Any, host: HostSpec, ident: Identity, ok: bool, said: str, answered: bool
    ) -> None:
        pool = self._hosts()
        pool.release(host.name, ident.principal)
        if answered:  # a host that answered is healthy (this may have been its half-open probe)
            pool.launch_succeeded(host.name)
        elif pool.launch_failed(host.name):
            self.log.warning("winexec: host %s taken out for %.0f s after failures", host.name, pool.cooldown)
        (self.log.info if ok else self.log.warning)("winexec: %s: %s", workload.display_name, said)
        self.running.discard(workload.key)
        self.event_buffer[workload.key] = (workload.success_state if ok else workload.failure_state, said)

    def _unplaceable(self, ti: Any) -> tuple[str, int]:
        """Why no configured host could ever run ``ti`` (``""`` if one could), and its weight."""
        pool, queue = self._hosts(), ti.queue
        if not pool.serves(queue):
            return (
                f"no host in [winexec] hosts serves queue {queue!r} (they serve: {pool.queues()}): "
                "add it to a host's queues= or change the task's queue"
            ), 1
        try:
            weight = task_weight(getattr(ti, "pool_slots", 1), getattr(ti, "executor_config", None))
        except ValueError as e:
            return str(e), 1
        if not pool.fits(queue, weight):
            most = max(h.spec.slots for h in pool.active_hosts() if h.spec.serves(queue))
            return (
                f'the task takes {weight} host slots (pool_slots, or executor_config["winexec"]["slots"]) '
                f"but no host serving queue {queue!r} has more than {most}: lower it, or raise a "
                "host's slots= in [winexec] hosts"
            ), weight
        return "", weight

    def _waiting_count(self) -> int:
        return len(self._waiting)

    # -- the loop --------------------------------------------------------------------------
    def sync(self) -> None:
        """Apply what the workers reported, start due launches and polls, sweep the watchdog."""
        if self.settings is None:
            return
        self._drain_results()
        self._launch_due()
        now = self._clock()
        while self._poll_timers and self._poll_timers[0][0] <= now:
            rec = self.records.get(heapq.heappop(self._poll_timers)[2])
            if rec is not None and rec.phase is Phase.RUNNING:
                self._next_job(rec)
        for stray in self._strays:
            if not stray.busy and stray.next_at <= now and not self._closing:
                stray.busy = True
                self._submit(self._job_clean_stray, stray)
        if now - self._last_sweep >= SWEEP_INTERVAL:
            self._last_sweep = now
            self._sweep(now)
            metrics.pool_gauges(self._hosts(), now, [r.live.last_heartbeat for r in self._live_records()])
        if now >= self._next_refresh and not self._refreshing:
            self._refreshing = True
            self._submit(self._job_refresh_hosts, None)
        if self._trail().flush_due():
            self._submit(self._trail().flush)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._io is not None
        self._io.submit(fn, *args)

    def _schedule(self, rec: TaskRecord, delay: float) -> None:
        rec.phase = Phase.WAITING
        self._waiting.add(rec.key)
        heapq.heappush(self._timers, (self._clock() + delay, next(self._seq), rec.key))

    def _launch_due(self) -> None:
        """Start launches whose time has come, as far as hosts have free slots."""
        if self._closing:
            return
        pool = self._hosts()
        now = self._clock()
        postponed: list[tuple[float, int, TaskInstanceKey]] = []
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            rec = self.records.get(entry[2])
            if rec is None or rec.phase is not Phase.WAITING:
                continue
            if rec.revoked:
                self._forget(rec)
                continue
            who = rec.identity.principal
            queue = rec.workload.ti.queue if rec.workload is not None else None
            host = pool.acquire(who, rec.excluded, queue, rec.weight) or (
                pool.acquire(who, queue=queue, weight=rec.weight) if rec.excluded else None
            )
            if host is None and rec.workload is not None and not pool.fits(queue, rec.weight):
                # a host refresh took away every host that could ever run it: waiting is forever
                reason, _ = self._unplaceable(rec.workload.ti)
                self._audit("not_launched", rec, outcome="failed", reason=reason)
                self._finish_unlaunched(rec.key, rec.log_path, reason)
                self._forget(rec)
                continue
            if host is None:
                why = pool.waits(who, queue, rec.weight)
                if why != rec.waits_for:  # said once per change, not every heartbeat
                    rec.waits_for = why
                    self.log.info("winexec: %s waits for a host: %s", rec.key, why)
                postponed.append((now + FULL_RETRY, next(self._seq), rec.key))
                continue
            rec.waits_for = ""
            self._waiting.discard(rec.key)
            rec.host = host
            rec.attempt += 1
            rec.run_id = uuid.uuid4().hex
            rec.phase = Phase.LAUNCHING
            rec.busy = True
            self._submit(self._job_launch, rec.key, host, rec.identity, self._start_message(rec))
        for entry in postponed:
            heapq.heappush(self._timers, entry)

    def _start_message(self, rec: TaskRecord) -> protocol.Start:
        s = self._s()
        assert rec.workload is not None
        return protocol.Start(
            workload=rec.workload.model_dump(mode="json"),
            run_id=rec.run_id,
            launch_key=rec.launch_key,
            heartbeat_interval=s.heartbeat_interval,
            execution_timeout=rec.execution_timeout,
            grace=s.execution_timeout_grace,
            server=self._server_url(),
            slots=rec.host.slots if rec.host is not None else None,
            weight=rec.weight,
        )

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

    # -- worker jobs (I/O threads: touch no record, only report) -----------------------------
    def _job_launch(
        self, key: TaskInstanceKey, host: HostSpec, ident: Identity, start: protocol.Start
    ) -> None:
        s = self._s()
        assert self.tickets is not None
        began = time.monotonic()
        min_life = None
        if start.execution_timeout:
            min_life = start.execution_timeout + start.grace
        try:
            self._ensure_principal(ident.principal)
            session = self.transport.open_session(
                s, host, ident.principal, ident.delegate, self.tickets, start, min_life
            )
        except LaunchError as e:
            self._results.put(res.LaunchFailed(key, e))
        except Exception as e:
            reason = f"launch crashed: {e!r}".replace(start.workload.get("token") or "\0", "***")
            self._results.put(res.LaunchFailed(key, AgentFailure(reason)))
        else:
            metrics.launched(host.name, time.monotonic() - began)
            self._results.put(res.Launched(key, session, self._clock()))

    def _ensure_principal(self, principal: str) -> None:
        """Register a principal first seen at run time (run_as_user, executor_config) with the store."""
        with self._principals_lock:
            if principal in self._principals:
                return
            ensure = getattr(self.tickets, "ensure", None)  # a test's fixed store has none
            if ensure is not None:
                try:
                    ensure(principal, self._s().keytab_for)
                except Exception as e:
                    raise classify(e, HostSpec(name="-"), principal) from e
            self._principals.add(principal)

    def _job_poll(self, key: TaskInstanceKey, session: TaskSession) -> None:
        # When the poll really began, not when it was queued: with many running tasks a poll
        # may wait for a worker, and that wait must not count as the host not answering.
        self._job_started[key] = self._clock()
        s = self._s()
        try:
            result = session.poll(timeout=s.poll_timeout)
        except LaunchError as e:
            self._results.put(res.PollFailed(key, e, self._clock()))
        except Exception as e:
            self._results.put(res.PollFailed(key, AgentFailure(repr(e)), self._clock()))
        else:
            self._results.put(res.Polled(key, result, self._clock()))

    def _job_ask_stop(self, key: TaskInstanceKey, session: TaskSession, reason: str) -> None:
        try:
            session.ask_stop(reason)
        except Exception as e:
            self.log.info("winexec: asking %s to stop on %s: %s", key, session.host.name, str(e))
            self._results.put(res.StopAsked(key, False))
        else:
            self._results.put(res.StopAsked(key, True))

    def _job_disconnect(self, key: TaskInstanceKey, session: TaskSession) -> None:
        self._results.put(res.Disconnected(key, session.disconnect()))

    def _job_reattach(self, key: TaskInstanceKey, host: HostSpec, ident: Identity, run_id: str) -> None:
        s = self._s()
        assert self.tickets is not None
        try:
            self._ensure_principal(ident.principal)
            session = self.transport.reattach_session(
                s, host, ident.principal, ident.delegate, self.tickets, run_id
            )
        except LaunchError as e:
            self._results.put(res.ReattachFailed(key, e))
        except Exception as e:
            self._results.put(res.ReattachFailed(key, AgentFailure(f"reattach crashed: {e!r}")))
        else:
            self._results.put(res.Reattached(key, session, self._clock(), run_id))

    def _job_find_and_reattach(
        self, hosts: list[HostSpec], wanted: dict[TaskInstanceKey, tuple[Identity, str]]
    ) -> None:
        """Ask each host once, as these tasks' principal (``--runs``), which of their launch keys
        run there, and reattach to each run found (one job each)."""
        assert self.tickets is not None
        ident = next(iter(wanted.values()))[0]
        by_launch = {launch_key: key for key, (_, launch_key) in wanted.items()}
        unasked: list[str] = []
        for host in hosts:
            if not by_launch:
                break
            try:
                self._ensure_principal(ident.principal)
                with self.transport.open_channel(
                    self._s(), host, ident.principal, False, self.tickets
                ) as channel:
                    runs = channel.agent("--runs").get("runs") or []
            except Exception as e:  # that host cannot say now: the others may
                self.log.info("winexec: cannot ask %s which runs it has: %s", host.name, str(e))
                unasked.append(host.name)
                continue
            for run in runs:
                key = by_launch.pop(str(run.get("launch_key")), None) if run.get("run_id") else None
                if key is not None:
                    self._submit(self._job_reattach, key, host, wanted[key][0], str(run["run_id"]))
        for launch_key, key in by_launch.items():
            why = f"no host runs its launch {launch_key}"
            if unasked:
                why += f" (could not ask {', '.join(unasked)})"
            self._results.put(res.ReattachFailed(key, AgentFailure(why)))

    def _job_clean_stray(self, stray: Stray) -> None:
        assert self.tickets is not None
        done = False
        try:
            session = self.transport.reattach_session(
                self._s(), stray.host, stray.identity.principal, False, self.tickets, stray.run_id
            )
        except (NoShell, NoAgent):  # no shell, or no agent in it (closed now): nothing runs there
            done = True
        except Exception:  # still silent: later
            done = False
        else:
            session.stop("its launch was ambiguous and the task was failed; not adopted", wait=STOP_WAIT)
            done = True
        self._results.put(res.StrayChecked(stray, done))

    def _job_refresh_hosts(self, _: None) -> None:
        try:
            hosts, problems = reread_hosts(self._s(), team_name=self.team_name)
            if self._quotas is None:
                self._quotas = QuotaReader(self._s(), self.tickets)
            hosts = self._quotas.apply(hosts)
        except Exception as e:
            hosts, problems = (), [f"[winexec] hosts: refresh failed: {e}"]
        self._results.put(res.HostsRead(hosts, problems, self._read_drains()))

    def _read_drains(self) -> dict[str, str] | None:
        """The hosts operators drained (Airflow's database); ``None`` when it cannot be read."""
        try:
            return {host: str(d) for host, d in maintenance.drained().items()}
        except Exception as e:
            self.log.warning(
                "winexec: cannot read drained hosts from Airflow's database (%s: %s); keeping the "
                "drains known so far",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
            return None

    def _apply_drains(self, drains: dict[str, str] | None) -> None:
        if drains is None:
            return
        drained, resumed = self._hosts().set_drained(drains)
        for name in drained:
            why = drains[name]
            self.log.warning("winexec: %s gets no new tasks, %s (its running tasks finish)", name, why)
        for name in resumed:
            self.log.info("winexec: %s resumed: back in placement", name)

    def _job_write_log(self, path: Path, lines: list[str]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            now = datetime.now(timezone.utc).isoformat()
            with open(path, "a", encoding="utf-8") as f:
                for line in lines:
                    entry = {"timestamp": now, "level": "error", "logger": "winexec.executor", "event": line}
                    f.write(json.dumps(entry) + "\n")
        except OSError as e:
            self.log.warning("winexec: cannot write the failure reason to %s: %s", path, str(e))

    # -- results (scheduler thread) ---------------------------------------------------------
    def _drain_results(self) -> None:
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return
            match result:
                case res.HostsRead(hosts, problems, drains):
                    self._on_hosts(hosts, problems, drains)
                case res.OneShotDone(workload, host, ident, ok, said, answered):
                    self._on_oneshot(workload, host, ident, ok, said, answered)
                case res.Reattached() | res.ReattachFailed():
                    self._on_reattach_result(result)
                case res.StrayChecked(stray, done):
                    self._on_stray_checked(stray, done)
                case _:
                    self._on_task_result(result)

    def _on_task_result(self, result: res.TaskResult) -> None:
        self._job_started.pop(result.key, None)
        rec = self.records.get(result.key)
        if rec is None:
            if isinstance(result, res.Launched):
                # forgotten meanwhile (terminate): do not leave the agent running
                self._submit(_stop_quietly, result.session, "no longer wanted")
            return
        rec.busy = False
        match result:
            case res.Launched(_, session, at):
                self._on_launched(rec, session, at)
            case res.LaunchFailed(_, error):
                self._on_launch_failed(rec, error)
            case res.Polled(_, polled, at):
                self._on_polled(rec, polled, at)
            case res.PollFailed(_, error, at):
                self._on_poll_failed(rec, error, at)
            case res.StopAsked(_, True):  # no worker waits out the agent's grace: polled on
                rec.stop_until = self._clock() + self._s().execution_timeout_grace + STOP_SLACK
                self._next_job(rec)
            case res.StopAsked(_, False):  # not taken: delete the shell, or let it idle out
                self._done(rec, stop_session=True)
            case res.Disconnected():
                self.log.info("winexec: %s left running on %s (run %s)", rec.key, _host(rec), rec.run_id)
                rec.session = None
                self._forget(rec)

    def _on_stray_checked(self, stray: Stray, done: bool) -> None:
        stray.busy = False
        if done or self._clock() > stray.give_up_at:
            self._strays.remove(stray)
            self.log.info("winexec: run %s on %s cleaned up", stray.run_id, stray.host.name)
        else:
            stray.next_at = self._clock() + STRAY_RETRY

    def _on_hosts(
        self, hosts: tuple[HostSpec, ...], problems: list[str], drains: dict[str, str] | None
    ) -> None:
        self._refreshing = False
        self._next_refresh = self._clock() + self._s().host_refresh_interval
        if problems:
            for p in problems:
                self.log.error("winexec: %s (keeping the current hosts)", p)
        else:
            added, removed = self._hosts().update(hosts)
            if added or removed:
                self.log.info("winexec: hosts added %s, removed %s (running tasks finish)", added, removed)
        self._apply_drains(drains)

    def _on_launched(self, rec: TaskRecord, session: TaskSession, at: float) -> None:
        assert rec.host is not None
        self._hosts().launch_succeeded(rec.host.name)
        rec.session = session
        rec.phase = Phase.RUNNING
        rec.live = Liveness(last_heartbeat=at, last_poll_ok=at)
        self.log.info(
            "winexec: %s launched on %s as %s (%s), run %s",
            rec.key,
            rec.host.name,
            rec.identity.principal,
            rec.identity.source,
            rec.run_id,
        )
        self._audit("launched", rec, shell=shell_id_for(rec.run_id))
        if not rec.revoked and not rec.reported:
            self.running_state(rec.key, rec.external_id)
        self._next_job(rec)

    def _on_launch_failed(self, rec: TaskRecord, err: LaunchError) -> None:
        assert rec.host is not None
        pool, s = self._hosts(), self._s()
        spec, host = rec.host, rec.host.name
        pool.release(host, rec.identity.principal, rec.weight)
        rec.host = None
        metrics.incr(metrics.LAUNCH_FAILURES, host=host, cause=err.kind)
        rec.last_error = err.reason
        if rec.revoked:
            self._forget(rec)
            return
        if isinstance(err, HostFull):
            pool.host_full(host)
            rec.excluded.add(host)
            rec.attempt -= 1  # a full host is not the task's failed attempt
            metrics.incr(metrics.RETRIES, cause=err.kind)
            self._schedule(rec, FULL_RETRY if len(rec.excluded) >= len(pool.hosts) else 0.0)
            return
        if isinstance(err, LaunchAmbiguous):
            give_up = self._clock() + self._s().keepalive_timeout + protocol.START_LINE_TIMEOUT
            self._strays.append(Stray(spec, rec.identity, rec.run_id, give_up, self._clock() + STRAY_RETRY))
        if err.host_fault:
            if pool.launch_failed(host):
                self.log.warning(
                    "winexec: host %s taken out for %.0f s after failures", host, s.host_cooldown
                )
            rec.excluded.add(host)
        self.log.warning("winexec: launch %d of %s on %s failed: %s", rec.attempt, rec.key, host, err.reason)
        if err.transient and rec.attempt < s.launch_attempts:
            delay = retry_delay(rec.attempt, s.launch_backoff, s.launch_backoff_max)
            metrics.incr(metrics.RETRIES, cause=err.kind)
            self._schedule(rec, delay)
            return
        tries = f" after {rec.attempt} attempt(s)" if rec.attempt > 1 else ""
        where = "" if isinstance(err, TicketFailure) else f" on {host}"
        reason = f"could not start the task{where}{tries}: {err.reason}"
        self._audit("not_launched", rec, host=host, outcome="failed", reason=reason)
        self._finish_unlaunched(rec.key, rec.log_path, reason)
        self._forget(rec)

    def _on_polled(self, rec: TaskRecord, result: PollResult, at: float) -> None:
        assert rec.live is not None and rec.host is not None
        got_heartbeat = False
        outcome: protocol.Exit | None = None
        for msg in result.messages:
            if isinstance(msg, protocol.Heartbeat):
                got_heartbeat = True
            elif isinstance(msg, protocol.Started):
                got_heartbeat = True
                rec.started = True
                self._audit("started", rec, host_user=msg.user, pid=msg.pid, delegated=msg.delegated)
                if rec.execution_timeout is not None:
                    # the agent times the task from its execute(); this is the backstop behind it,
                    # allowing start_timeout for the task process to get there
                    s = self._s()
                    slack = s.execution_timeout_grace + 2 * s.heartbeat_interval + s.poll_timeout
                    slack += s.start_timeout
                    rec.live.deadline = at + rec.execution_timeout + slack
                self.log.info(
                    "winexec: %s started on %s pid %s as %s (delegated=%s)",
                    rec.key,
                    msg.host,
                    msg.pid,
                    msg.user,
                    msg.delegated,
                )
            elif isinstance(msg, protocol.Log):
                self.log.log(
                    _level(msg.level), "winexec agent %s %s: %s", rec.host.name, rec.run_id, msg.line
                )
            elif isinstance(msg, protocol.Exit):
                outcome = msg
        for line in result.foreign:
            self.log.info("winexec agent %s %s output: %s", rec.host.name, rec.run_id, line[:1000])
        for line in result.errors:
            rec.errors.append(line[:500])
            self.log.warning("winexec agent %s %s error: %s", rec.host.name, rec.run_id, line[:1000])
        if got_heartbeat:
            rec.live.heartbeat(at)
        elif not result.reattached:
            rec.live.polled(at)
        if outcome is not None:
            self._on_exit(rec, outcome)
            return
        if result.finished:
            self._on_vanished(rec)
            return
        if self._stop_overdue(rec, at):
            return
        self._next_job(rec)

    def _on_poll_failed(self, rec: TaskRecord, err: LaunchError, at: float) -> None:
        assert rec.live is not None and rec.host is not None
        rec.live.poll_failed(no_ticket=err.reason if isinstance(err, TicketFailure) else None)
        rec.last_error = err.reason
        if isinstance(err, ShellGone):
            # the agent died with its shell (host rebooted): no heartbeat will ever come
            reason = f"{err.reason}; the task's try ended there"
            self.log.error("winexec: %s failed: %s", rec.key, reason)
            if not rec.revoked and not rec.reported:
                self._write_reason(rec, [f"winexec: {reason}"], only_if_exists=rec.started)
                self._fail(rec, reason)
            self._done(rec, stop_session=True)
            return
        if rec.live.poll_failures in (1, 10) or rec.live.poll_failures % 100 == 0:
            self.log.warning("winexec: polling %s on %s failed: %s", rec.key, rec.host.name, err.reason)
        # the first retry comes soon (a dropped connection is repaired by reattaching, a rebooted
        # host is told by its missing shell), later ones back off -- by at most a quarter of
        # hung_after, so that an outage shorter than that does not look like one
        if rec.stop_until is not None:  # asked to stop, then lost: delete the shell, or let it idle out
            self._done(rec, stop_session=True)
            return
        cap = min(10.0, self._s().hung_after / 4)
        self._next_job(rec, delay=backoff(rec.live.poll_failures, 0.5, cap))

    def _on_exit(self, rec: TaskRecord, msg: protocol.Exit) -> None:
        if rec.stop_reason is not None:
            self.log.info(
                "winexec: %s stopped (%s): agent says %s %s", rec.key, rec.stop_reason, msg.state, msg.reason
            )
        if rec.revoked or rec.reported:
            self._done(rec, stop_session=True)
            return
        if msg.state == "full":
            # The host's own admission said no: its slots are taken, e.g. by another scheduler
            # sharing the pool. Like a WinRM quota fault: elsewhere or later, no attempt used.
            session, rec.session = rec.session, None
            if session is not None and not session.closed:
                self._submit(_close_quietly, session)
            self._on_launch_failed(rec, HostFull(f"{_host(rec)}: {msg.reason}"))
            return
        if msg.state == "duplicate":
            # An earlier attempt of this very launch (same launch key) reached that host after
            # all: that run drives the task instance; failing it here would fail its work.
            self.log.warning("winexec: %s not started on %s: %s", rec.key, _host(rec), msg.reason)
            rec.reported = True
            self._done(rec, stop_session=True)
            return
        if msg.state == "success":
            rec.reported = True
            self._audit("ended", rec, outcome="success", reason=msg.reason or None)
            self.success(rec.key, rec.external_id)
        else:
            reason = msg.reason or f"task ended {msg.state}"
            if msg.state == "failed":
                self.log.info("winexec: %s failed on %s (exit code %s)", rec.key, _host(rec), msg.code)
            else:
                self.log.error("winexec: %s ended %s on %s: %s", rec.key, msg.state, _host(rec), reason)
                if not rec.started:
                    self._write_reason(
                        rec, [f"winexec: the agent on {_host(rec)} did not run the task: {reason}"]
                    )
            self._fail(rec, reason)
        self._done(rec, stop_session=True)

    def _stop_overdue(self, rec: TaskRecord, now: float) -> bool:
        """A stopping task whose agent did not report in time: delete its shell (and tree)."""
        if rec.stop_until is None or now < rec.stop_until:
            return False
        self.log.warning("winexec: %s did not report its stop on %s; deleting its shell", rec.key, _host(rec))
        self._done(rec, stop_session=True)
        return True

    def _on_vanished(self, rec: TaskRecord) -> None:
        """The pipeline ended without an ``exit`` line: Python missing, or the agent died."""
        s = self._s()
        assert rec.host is not None
        missing = python_missing_reason(list(rec.errors), rec.host, s.python)
        if missing:
            self._hosts().launch_failed(rec.host.name)
            reason = PythonMissing(missing).reason
        else:
            tail = "; ".join(rec.errors) or "no error output"
            what = "before starting the task" if not rec.started else "without reporting an outcome"
            reason = f"the agent on {rec.host.name} exited {what}: {tail}"
        if not rec.revoked and not rec.reported:
            self.log.error("winexec: %s failed: %s", rec.key, reason)
            self._write_reason(rec, [f"winexec: {reason}"], only_if_exists=rec.started)
            self._fail(rec, reason)
        self._done(rec, stop_session=True)

    # -- next step for a record ---------------------------------------------------------------
    def _next_job(self, rec: TaskRecord, delay: float = 0.0) -> None:
        """Queue the next worker job for a running record: stop if asked, else poll (every poll is
        a request to the task's shell, which keeps it from its IdleTimeOut)."""
        if rec.busy or rec.session is None:
            return
        now = self._clock()
        if self._closing and rec.stop_reason is None:
            # scheduler shutting down: leave the agent running in a disconnected shell for the
            # next scheduler to adopt (the host deletes it if none does within keepalive_timeout)
            rec.busy = True
            self._submit(self._job_disconnect, rec.key, rec.session)
            return
        if rec.stop_reason is not None and rec.stop_until is None:
            rec.phase = Phase.STOPPING
            rec.busy = True
            self._submit(self._job_ask_stop, rec.key, rec.session, rec.stop_reason)
            return
        if delay > 0:
            # e.g. a failing host: poll again later, without holding a worker while waiting
            heapq.heappush(self._poll_timers, (now + delay, next(self._seq), rec.key))
            return
        rec.busy = True
        self._submit(self._job_poll, rec.key, rec.session)

    def request_stop(self, rec: TaskRecord, reason: str) -> None:
        """Stop a task on its host (watchdog, revoke): the next job for it is the stop."""
        if rec.stop_reason is not None:
            return
        rec.stop_reason = reason
        if rec.phase is Phase.RUNNING and not rec.busy:
            self._next_job(rec)

    def _sweep(self, now: float) -> None:
        """The watchdog over all running tasks: fail hung or overdue ones now, stop them next."""
        if len(self._facts) > len(self.queued_tasks):  # facts of workloads the scheduler took back
            self._facts = {k: v for k, v in self._facts.items() if k in self.queued_tasks}
        s = self._s()
        hung_after, start_timeout, keepalive_timeout = s.hung_after, s.start_timeout, s.keepalive_timeout
        for rec in list(self.records.values()):
            if rec.phase is not Phase.RUNNING or rec.live is None or rec.stop_reason is not None:
                continue
            stuck = self._job_started.get(rec.key) if rec.busy else None
            verdict = judge(
                rec.live,
                now,
                hung_after,
                _host(rec),
                in_flight_since=stuck,
                start_timeout=start_timeout,
                keepalive_timeout=keepalive_timeout,
            )
            if verdict is None:
                continue
            metrics.incr(metrics.HUNG_STOPPED, verdict=verdict.kind)
            self.log.error("winexec: %s is %s: %s; stopping it", rec.key, verdict.kind, verdict.reason)
            if not rec.revoked and not rec.reported:
                self._write_reason(rec, [f"winexec: {verdict.reason}"], only_if_exists=rec.started)
                self._fail(rec, verdict.reason)
            self.request_stop(rec, verdict.reason)

    def _fail(self, rec: TaskRecord, reason: str) -> None:
        rec.reported = True
        self._audit("ended", rec, outcome="failed", reason=reason)
        self.fail(rec.key, reason)

    def _trail(self) -> AuditTrail:
        if self.audit is None:
            raise RuntimeError("WindowsKerberosExecutor used before start()")
        return self.audit

    def _audit(self, event: str, rec: TaskRecord, **fields: Any) -> None:
        """One audit record about ``rec``: who it runs as, chosen how, where, and ``fields``."""
        ident = rec.identity
        about: dict[str, Any] = {
            "bundle": getattr(getattr(rec.workload, "bundle_info", None), "name", None),
            "principal": ident.principal,
            "source": ident.source,
            "grant": ident.grant,
            "delegated": ident.delegate,
            "host": rec.host.name if rec.host else None,
            "run": rec.run_id or None,
        }
        self._trail().record(event, rec.key, **{**about, **fields})

    # -- endings ------------------------------------------------------------------------------
    def _done(self, rec: TaskRecord, stop_session: bool = False) -> None:
        if stop_session and rec.session is not None and not rec.session.closed:
            self._submit(_close_quietly, rec.session, rec.log_path if rec.started else None)
        rec.session = None
        self._forget(rec)

    def _forget(self, rec: TaskRecord) -> None:
        rec.phase = Phase.DONE
        self._waiting.discard(rec.key)
        if rec.host is not None:
            self._hosts().release(rec.host.name, rec.identity.principal, rec.weight)
            rec.host = None
        self.records.pop(rec.key, None)
        self.running.discard(rec.key)

    def _finish_unlaunched(self, key: TaskInstanceKey, log_path: str | None, reason: str) -> None:
        """The task never ran: fail it and put the reason where its log will show it."""
        self.log.error("winexec: %s failed: %s", key, reason)
        path = _log_file(log_path)
        if path is not None:
            self._submit(self._job_write_log, path, [f"winexec: {reason}"])
        self.fail(key, reason)

    def _write_reason(self, rec: TaskRecord, lines: list[str], only_if_exists: bool = False) -> None:
        """Append to the task's log file on this machine.

        When the task did run, its log lives on the Windows host and Airflow shows it from there
        unless a local file exists; so then we only append to a file that already exists (a
        shared log folder) and never create one that would hide the host's log.
        """
        path = _log_file(rec.log_path)
        if path is None or (only_if_exists and not path.exists()):
            return
        self._submit(self._job_write_log, path, lines)

    def end(self) -> None:
        """Stop launching and detach from every running task, leaving it running on its host.

        Each agent keeps running in a disconnected WinRM shell named by its run id; the next
        scheduler reattaches to it in :meth:`try_adopt_task_instances`. A shell nobody
        reattaches to is deleted by its host after ``keepalive_timeout`` (its IdleTimeOut), and
        the task's processes with it.
        Queued-but-unlaunched tasks are simply not started.
        """
        self._closing = True
        if self.settings is None or self._io is None:
            return
        s = self._s()
        for rec in list(self.records.values()):
            if rec.phase is Phase.WAITING:
                self._forget(rec)
            elif rec.phase is Phase.RUNNING and not rec.busy:
                self._next_job(rec)  # the disconnect
        waves = -(-len(self.records) // max(1, s.io_workers))  # disconnects run io_workers at a time
        deadline = self._clock() + (s.connect_timeout + s.read_timeout) * max(1, waves)
        while self.records and self._clock() < deadline:
            self._drain_results()
            for rec in list(self.records.values()):
                if rec.phase is Phase.RUNNING and not rec.busy:
                    self._next_job(rec)
            time.sleep(0.05)
        if self.records:
            self.log.warning("winexec: %d task(s) not detached cleanly at shutdown", len(self.records))
        self._io.shutdown(wait=False, cancel_futures=True)
        self._trail().flush()
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
        self._closing = True
        if self.settings is None or self._io is None:
            return
        for rec in list(self.records.values()):
            if rec.session is not None:
                self._submit(_stop_quietly, rec.session, "scheduler terminating")
                rec.session = None
            self._forget(rec)
        self._io.shutdown(wait=True, cancel_futures=False)
        self._trail().flush()
        self._close_tickets()

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """Stop the task on its host and forget it, without reporting a state."""
        key = ti.key
        self.queued_tasks.pop(key, None)
        self._facts.pop(key, None)
        rec = self.records.get(key)
        self.running.discard(key)
        if rec is None:
            return
        rec.revoked = True
        if rec.phase is Phase.WAITING:
            self._forget(rec)
        elif rec.phase is Phase.RUNNING:
            self.request_stop(rec, "revoked by the scheduler")
        elif rec.phase is Phase.LAUNCHING:
            rec.stop_reason = "revoked by the scheduler"  # the stop follows the launch

    def try_adopt_task_instances(self, tis: Sequence[TaskInstance]) -> Sequence[TaskInstance]:
        """Reattach to the agents a previous scheduler left running; hand back the rest.

        The external executor id ``<host>|<run_id>`` names the host and the run, and the run id
        is the id of the WinRM shell the agent runs in, so the shell can be found and connected
        to again as the task's principal. An id without ``|`` is the one the scheduler assigned
        at queuing (the workload's launch key): the previous scheduler died before it saved
        where the run went, so every host is asked (``--runs``) for a live run of that key.

        This waits for the reattach attempts (a connect and a read timeout per round of
        ``io_workers``, per host where a run is searched for): adoption happens when a scheduler
        takes over, not on every heartbeat. Whatever could not be reattached is returned for the scheduler
        to reset.
        """
        if self.settings is None or self._io is None or self._closing:
            return tis
        s, pool = self._s(), self._hosts()
        pending: dict[TaskInstanceKey, TaskInstance] = {}
        searches: dict[str, dict[TaskInstanceKey, tuple[Identity, str]]] = {}
        for ti in tis:
            try:
                ext = str(getattr(ti, "external_executor_id", None) or "")
            except Exception:
                continue
            host_name, sep, run_id = ext.partition("|")
            if not ext or ti.key in self.records or (sep and (not run_id or host_name not in pool)):
                continue
            try:
                ident = resolve(s, self._facts_reader().orm_ti(ti))
            except Exception as e:  # adoption must never take the scheduler down
                self.log.warning("winexec: cannot adopt %s: %s", ti.key, str(e))
                continue
            pending[ti.key] = ti
            if sep:
                host = pool[host_name].spec
                self._adopting[ti.key] = (ti, host, ident, run_id)
                self._submit(self._job_reattach, ti.key, host, ident, run_id)
            else:
                self._adopting[ti.key] = (ti, None, ident, ext)
                searches.setdefault(ident.principal, {})[ti.key] = (ident, ext)
        hosts = [h.spec for h in pool.active_hosts()]
        for wanted in searches.values():  # one question per host and principal, not per task
            self._submit(self._job_find_and_reattach, hosts, wanted)
        waves = -(-len(pending) // max(1, s.io_workers))  # reattaches run io_workers at a time
        per_wave = (s.connect_timeout + s.read_timeout) * (1 + (len(pool.active_hosts()) if searches else 0))
        deadline = self._clock() + per_wave * max(1, waves)
        while any(k in self._adopting for k in pending) and self._clock() < deadline:
            time.sleep(0.05)
            self._drain_results()
        adopted = {k for k in pending if k in self._adopted}
        self._adopted -= adopted
        for k in pending:
            if k not in adopted:
                self._adopting.pop(k, None)  # a late answer closes the session
        if pending:
            self.log.info("winexec: adopted %d of %d orphaned task(s)", len(adopted), len(tis))
        return [ti for ti in tis if ti.key not in adopted]

    def _facts_reader(self) -> FactsReader:
        if self._reader is None:
            self._reader = FactsReader(self._s().grants)
        return self._reader

    def _on_reattach_result(self, result: res.Reattached | res.ReattachFailed) -> None:
        key = result.key
        pending = self._adopting.pop(key, None)
        if isinstance(result, res.ReattachFailed):
            if pending is not None:
                self.log.warning("winexec: cannot reattach to %s: %s", key, result.error.reason)
            return
        session, at, run_id = result.session, result.at, result.run_id
        if pending is None or self._closing:
            self._submit(_stop_quietly, session, "not adopted")  # too late: the scheduler resets it
            return
        ti, searched, ident, _ = pending
        host = session.host
        try:
            weight = task_weight(getattr(ti, "pool_slots", 1), getattr(ti, "executor_config", None))
        except ValueError:
            weight = 1  # it runs already: count it, whatever its setting says
        claimed = self._hosts().claim(host.name, ident.principal, weight)
        log_path: str | None = None
        try:
            from airflow.utils.helpers import log_filename_template_renderer

            log_path = log_filename_template_renderer()(ti=ti)
        except Exception:
            log_path = None
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
            log_path=log_path,
            weight=weight,
        )
        rec.live = Liveness(last_heartbeat=at, last_poll_ok=at, heard=True)
        self.records[key] = rec
        self.running.add(key)
        self._adopted.add(key)
        if searched is None:  # found by its pre-assigned id: now Airflow learns where it runs
            self.running_state(key, rec.external_id)
        self.log.info("winexec: adopted %s: reattached to run %s on %s", key, run_id, host.name)
        self._next_job(rec)

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

    def _live_records(self) -> list[Any]:
        """Running records the watchdog has timing for (for the heartbeat-lag metric)."""
        return [r for r in self.records.values() if r.live is not None and r.phase is Phase.RUNNING]

    # -- introspection for tests and the CLI --------------------------------------------------
    def describe(self) -> dict[str, Any]:
        phases: dict[str, int] = {}
        for r in self.records.values():
            phases[r.phase.value] = phases.get(r.phase.value, 0) + 1
        return {
            "phases": phases,
            "hosts": self._hosts().describe() if self.pool else [],
            "strays": [f"{x.host.name}|{x.run_id}" for x in self._strays],
            "waiting": {str(r.key): r.waits_for for r in self.records.values() if r.waits_for},
        }


def _host(rec: TaskRecord) -> str:
    return rec.host.name if rec.host else "?"


def _level(name: str) -> int:
    import logging

    level = getattr(logging, name.upper(), None)
    return level if isinstance(level, int) else logging.INFO


def _stop_quietly(session: TaskSession, reason: str) -> None:
    """Stop an agent no record follows any more (it never raises), waiting ``STOP_WAIT`` at most."""
    session.stop(reason, wait=STOP_WAIT)


def _close_quietly(session: TaskSession, log_path: str | None = None) -> None:
    """Close a finished task's shell; first copy its log here if only the host has it (tasklog)."""
    if log_path:
        from winexec.tasklog import collect_log

        collect_log(session, log_path)
    session.close()


def _launch_key(pre_assigned: str | None) -> str:
    """The workload's launch key: the id Airflow saved with QUEUED (``pre_assigns_external_executor_id``),
    unless it is an old ``<host>|<run_id>`` kept from an earlier launch; else a fresh one."""
    if pre_assigned and "|" not in pre_assigned:
        return str(pre_assigned)
    return uuid.uuid4().hex


def _default_queue() -> str:
    """The queue a connection test without one belongs to, as for a task without one."""
    from airflow.configuration import conf

    return conf.get("operators", "default_queue", fallback="default")


def _log_file(log_path: str | None) -> Path | None:
    base = airflow_log_folder() if log_path else None
    return base / log_path if base is not None and log_path else None


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

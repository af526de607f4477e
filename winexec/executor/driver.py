"""The scheduler thread's side of running tasks: place, launch, poll, judge, stop, end.

The driver applies the I/O workers' results to the record book, decides with
:mod:`winexec.executor.policy`, and tells Airflow through the executor's own reporting calls.
Nothing here waits on the network: every round trip is a job for :class:`HostJobs`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from winexec import metrics, protocol
from winexec.config import airflow_log_folder
from winexec.executor import policy
from winexec.executor import results as res
from winexec.executor.jobs import HostJobs, close_quietly, stop_quietly, write_log
from winexec.executor.records import Phase, RecordBook, Stray, TaskRecord
from winexec.transport import HostFull, LaunchAmbiguous, LaunchError, PollResult, TicketFailure, shell_id_for
from winexec.watchdog import Liveness, judge

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey

    from winexec.audit import AuditTrail
    from winexec.config import Settings
    from winexec.pool import HostPool

#: Beyond the agent's grace (terminate, then kill the tree), how long the executor keeps polling a
#: stopping task for its ``exit`` line before deleting its shell: the agent must still report.
STOP_SLACK = 15.0
#: Between attempts to stop an agent left by an ambiguous launch.
STRAY_RETRY = 5.0


class Airflow(Protocol):
    """What the driver needs of ``BaseExecutor``: its running set and its reporting calls."""

    running: set[Any]

    def running_state(self, key: TaskInstanceKey, info: Any = None) -> None: ...
    def success(self, key: TaskInstanceKey, info: Any = None) -> None: ...
    def fail(self, key: TaskInstanceKey, info: Any = None) -> None: ...


class TaskDriver:
    """Moves each record through its phases; one instance per started executor."""

    def __init__(
        self,
        settings: Settings,
        pool: HostPool,
        book: RecordBook,
        jobs: HostJobs,
        trail: AuditTrail,
        airflow: Airflow,
        log: Any,
        clock: Callable[[], float],
        server_url: Callable[[], str | None],
    ) -> None:
        self.s = settings
        self.pool = pool
        self.book = book
        self.jobs = jobs
        self.trail = trail
        self.airflow = airflow
        self.log = log
        self.clock = clock
        self.server_url = server_url
        self.closing = False  # end() or terminate(): no new launches, disconnect the rest

    # -- placing ------------------------------------------------------------------------------
    def accept(self, rec: TaskRecord) -> None:
        self.book.add(rec)
        self.airflow.running.add(rec.key)
        self.book.launch_at(rec, self.clock())

    def launch_due(self) -> None:
        """Start launches whose time has come, as far as hosts have free slots."""
        if self.closing:
            return
        pool, now = self.pool, self.clock()
        for rec in self.book.due_launches(now):
            if rec.revoked:
                self.forget(rec)
                continue
            who, queue = rec.identity.principal, rec.queue
            host = pool.acquire(who, rec.excluded, queue, rec.weight) or (
                pool.acquire(who, queue=queue, weight=rec.weight) if rec.excluded else None
            )
            if host is None and rec.workload is not None and not pool.fits(queue, rec.weight):
                # a host refresh took away every host that could ever run it: waiting is forever
                reason, _ = policy.unplaceable(pool, rec.workload.ti)
                self.audit("not_launched", rec, outcome="failed", reason=reason)
                self.finish_unlaunched(rec.key, rec.log_path, reason)
                self.forget(rec)
                continue
            if host is None:
                why = pool.waits(who, queue, rec.weight)
                if why != rec.waits_for:  # said once per change, not every heartbeat
                    rec.waits_for = why
                    self.log.info("winexec: %s waits for a host: %s", rec.key, why)
                self.book.launch_at(rec, now + policy.FULL_RETRY)
                continue
            rec.waits_for = ""
            rec.host = host
            rec.attempt += 1
            rec.run_id = uuid.uuid4().hex
            self.book.set_phase(rec, Phase.LAUNCHING)
            rec.busy = True
            self.jobs.submit(self.jobs.launch, rec.key, host, rec.identity, self.start_message(rec))

    def start_message(self, rec: TaskRecord) -> protocol.Start:
        s = self.s
        assert rec.workload is not None
        return protocol.Start(
            workload=rec.workload.model_dump(mode="json"),
            run_id=rec.run_id,
            launch_key=rec.launch_key,
            heartbeat_interval=s.heartbeat_interval,
            execution_timeout=rec.execution_timeout,
            grace=s.execution_timeout_grace,
            server=self.server_url(),
            slots=rec.host.slots if rec.host is not None else None,
            weight=rec.weight,
        )

    # -- results ------------------------------------------------------------------------------
    def on_result(self, result: res.TaskResult) -> None:
        self.book.job_ended(result.key)
        rec = self.book.get(result.key)
        if rec is None:
            if isinstance(result, res.Launched):
                # forgotten meanwhile (terminate): do not leave the agent running
                self.jobs.submit(stop_quietly, result.session, "no longer wanted")
            return
        rec.busy = False
        match result:
            case res.Launched(_, session, at):
                self.on_launched(rec, session, at)
            case res.LaunchFailed(_, error):
                self.on_launch_failed(rec, error)
            case res.Polled(_, polled, at):
                self.on_polled(rec, polled, at)
            case res.PollFailed(_, error, at):
                self.on_poll_failed(rec, error)
            case res.StopAsked(_, True):  # no worker waits out the agent's grace: polled on
                rec.stop_until = self.clock() + self.s.execution_timeout_grace + STOP_SLACK
                self.next_job(rec)
            case res.StopAsked(_, False):  # not taken: delete the shell, or let it idle out
                self.done(rec, stop_session=True)
            case res.Disconnected():
                self.log.info("winexec: %s left running on %s (run %s)", rec.key, rec.host_name, rec.run_id)
                rec.session = None
                self.forget(rec)

    def on_launched(self, rec: TaskRecord, session: Any, at: float) -> None:
        assert rec.host is not None
        self.pool.launch_succeeded(rec.host.name)
        rec.session = session
        self.book.set_phase(rec, Phase.RUNNING)
        rec.live = Liveness(last_heartbeat=at, last_poll_ok=at)
        self.log.info(
            "winexec: %s launched on %s as %s (%s), run %s",
            rec.key,
            rec.host.name,
            rec.identity.principal,
            rec.identity.source,
            rec.run_id,
        )
        self.audit("launched", rec, shell=shell_id_for(rec.run_id))
        if not rec.settled:
            self.airflow.running_state(rec.key, rec.external_id)
        self.next_job(rec)

    def on_launch_failed(self, rec: TaskRecord, err: LaunchError) -> None:
        assert rec.host is not None
        pool, spec, host = self.pool, rec.host, rec.host.name
        pool.release(host, rec.identity.principal, rec.weight)
        rec.host = None
        metrics.incr(metrics.LAUNCH_FAILURES, host=host, cause=err.kind)
        rec.last_error = err.reason
        if rec.revoked:
            self.forget(rec)
            return
        if isinstance(err, HostFull):
            pool.host_full(host)
            rec.excluded.add(host)
        if isinstance(err, LaunchAmbiguous):
            give_up = self.clock() + self.s.keepalive_timeout + protocol.START_LINE_TIMEOUT
            self.book.strays.append(
                Stray(spec, rec.identity, rec.run_id, give_up, self.clock() + STRAY_RETRY)
            )
        if err.host_fault:
            if pool.launch_failed(host):
                self.log.warning(
                    "winexec: host %s taken out for %.0f s after failures", host, self.s.host_cooldown
                )
            rec.excluded.add(host)
        if not isinstance(err, HostFull):
            self.log.warning(
                "winexec: launch %d of %s on %s failed: %s", rec.attempt, rec.key, host, err.reason
            )
        match policy.after_launch_failure(err, rec.attempt, host, len(rec.excluded), len(pool.hosts), self.s):
            case policy.Relaunch(delay, uses_attempt):
                if not uses_attempt:  # a full host is not the task's failed attempt
                    rec.attempt -= 1
                metrics.incr(metrics.RETRIES, cause=err.kind)
                self.book.launch_at(rec, self.clock() + delay)
            case policy.GiveUp(reason):
                self.audit("not_launched", rec, host=host, outcome="failed", reason=reason)
                self.finish_unlaunched(rec.key, rec.log_path, reason)
                self.forget(rec)

    def on_polled(self, rec: TaskRecord, result: PollResult, at: float) -> None:
        assert rec.live is not None and rec.host is not None
        got_heartbeat = False
        outcome: protocol.Exit | None = None
        for msg in result.messages:
            if isinstance(msg, protocol.Heartbeat):
                got_heartbeat = True
            elif isinstance(msg, protocol.Started):
                got_heartbeat = True
                rec.started = True
                self.audit("started", rec, host_user=msg.user, pid=msg.pid, delegated=msg.delegated)
                if rec.execution_timeout is not None:
                    rec.live.deadline = policy.backstop_deadline(at, rec.execution_timeout, self.s)
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
            self.on_exit(rec, outcome)
        elif result.finished:
            self.on_vanished(rec)
        elif not self.stop_overdue(rec, at):
            self.next_job(rec)

    def on_poll_failed(self, rec: TaskRecord, err: LaunchError) -> None:
        assert rec.live is not None and rec.host is not None
        rec.live.poll_failed(no_ticket=err.reason if isinstance(err, TicketFailure) else None)
        rec.last_error = err.reason
        decision = policy.after_poll_failure(
            err, rec.live.poll_failures, rec.stop_until is not None, self.s.hung_after
        )
        if not isinstance(decision, policy.EndRun) or decision.reason is None:
            if policy.worth_logging(rec.live.poll_failures):
                self.log.warning("winexec: polling %s on %s failed: %s", rec.key, rec.host.name, err.reason)
        match decision:
            case policy.EndRun(reason) if reason is not None:  # the agent died with its shell
                self.log.error("winexec: %s failed: %s", rec.key, reason)
                if not rec.settled:
                    self.write_reason(rec, [f"winexec: {reason}"], only_if_exists=rec.started)
                    self.fail(rec, reason)
                self.done(rec, stop_session=True)
            case policy.EndRun():  # asked to stop, then lost: delete the shell, or let it idle out
                self.done(rec, stop_session=True)
            case policy.PollAgain(delay):
                self.next_job(rec, delay=delay)

    def on_exit(self, rec: TaskRecord, msg: protocol.Exit) -> None:
        if rec.stop_reason is not None:
            self.log.info(
                "winexec: %s stopped (%s): agent says %s %s", rec.key, rec.stop_reason, msg.state, msg.reason
            )
        if rec.settled:
            self.done(rec, stop_session=True)
            return
        verdict = policy.exit_verdict(msg)
        match verdict.outcome:
            case "full":  # the host's own admission said no: elsewhere or later, no attempt used
                session, rec.session = rec.session, None
                if session is not None and not session.closed:
                    self.jobs.submit(close_quietly, session)
                self.on_launch_failed(rec, HostFull(f"{rec.host_name}: {verdict.reason}"))
                return
            case "duplicate":  # an earlier attempt of this launch reached that host and drives the try
                self.log.warning("winexec: %s not started on %s: %s", rec.key, rec.host_name, verdict.reason)
                rec.reported = True
            case "success":
                rec.reported = True
                self.audit("ended", rec, outcome="success", reason=verdict.reason or None)
                self.airflow.success(rec.key, rec.external_id)
            case _:
                if verdict.unexpected:
                    self.log.error(
                        "winexec: %s ended %s on %s: %s", rec.key, msg.state, rec.host_name, verdict.reason
                    )
                    if not rec.started:
                        note = f"winexec: the agent on {rec.host_name} did not run the task: {verdict.reason}"
                        self.write_reason(rec, [note])
                else:
                    self.log.info("winexec: %s failed on %s (exit code %s)", rec.key, rec.host_name, msg.code)
                self.fail(rec, verdict.reason)
        self.done(rec, stop_session=True)

    def stop_overdue(self, rec: TaskRecord, now: float) -> bool:
        """A stopping task whose agent did not report in time: delete its shell (and tree)."""
        if rec.stop_until is None or now < rec.stop_until:
            return False
        self.log.warning(
            "winexec: %s did not report its stop on %s; deleting its shell", rec.key, rec.host_name
        )
        self.done(rec, stop_session=True)
        return True

    def on_vanished(self, rec: TaskRecord) -> None:
        """The pipeline ended without an ``exit`` line: Python missing, or the agent died."""
        assert rec.host is not None
        reason, python_missing = policy.vanished(list(rec.errors), rec.host, self.s.python, rec.started)
        if python_missing:
            self.pool.launch_failed(rec.host.name)
        if not rec.settled:
            self.log.error("winexec: %s failed: %s", rec.key, reason)
            self.write_reason(rec, [f"winexec: {reason}"], only_if_exists=rec.started)
            self.fail(rec, reason)
        self.done(rec, stop_session=True)

    def on_stray_checked(self, stray: Stray, done: bool) -> None:
        stray.busy = False
        if done or self.clock() > stray.give_up_at:
            self.book.strays.remove(stray)
            self.log.info("winexec: run %s on %s cleaned up", stray.run_id, stray.host.name)
        else:
            stray.next_at = self.clock() + STRAY_RETRY

    # -- the next step ------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Due polls and stray cleanups (each heartbeat)."""
        for rec in self.book.due_polls(now):
            self.next_job(rec, due=True)
        for stray in self.book.strays:
            if not stray.busy and stray.next_at <= now and not self.closing:
                stray.busy = True
                self.jobs.submit(self.jobs.clean_stray, stray)

    def next_job(self, rec: TaskRecord, delay: float = 0.0, due: bool = False) -> None:
        """Queue the next worker job for a running record: stop if asked, else poll (every poll is
        a request to the task's shell, which keeps it from its IdleTimeOut).

        A session with a ``poll_gap`` (a warm run) is polled here, on the scheduler thread, once
        that gap has passed (``due``): its poll reads memory only, what its agent's reader thread
        queued, so it needs no worker."""
        if rec.busy or rec.session is None:
            return
        if self.closing and rec.stop_reason is None:
            # scheduler shutting down: leave the agent running in a disconnected shell for the
            # next scheduler to adopt (the host deletes it if none does within keepalive_timeout)
            rec.busy = True
            self.jobs.submit(self.jobs.disconnect, rec.key, rec.session)
            return
        if rec.stop_reason is not None and rec.stop_until is None:
            self.book.set_phase(rec, Phase.STOPPING)
            rec.busy = True
            self.jobs.submit(self.jobs.ask_stop, rec.key, rec.session, rec.stop_reason)
            return
        gap = rec.session.poll_gap
        if delay > 0 or (gap > 0 and not due):
            # e.g. a failing host: poll again later, without holding a worker while waiting
            self.book.poll_at(rec, self.clock() + max(delay, gap))
            return
        if gap > 0:
            self._poll_here(rec)
            return
        rec.busy = True
        self.jobs.submit(self.jobs.poll, rec.key, rec.session)

    def _poll_here(self, rec: TaskRecord) -> None:
        assert rec.session is not None
        try:
            result = rec.session.poll(timeout=0)
        except LaunchError as e:
            self.on_poll_failed(rec, e)
        else:
            self.on_polled(rec, result, self.clock())

    def request_stop(self, rec: TaskRecord, reason: str) -> None:
        """Stop a task on its host (watchdog, revoke): the next job for it is the stop."""
        if rec.stop_reason is not None:
            return
        rec.stop_reason = reason
        if rec.phase is Phase.RUNNING and not rec.busy:
            self.next_job(rec)

    def sweep(self, now: float) -> None:
        """The watchdog over all running tasks: fail hung or overdue ones now, stop them next."""
        s = self.s
        for rec in self.book.values():
            if rec.phase is not Phase.RUNNING or rec.live is None or rec.stop_reason is not None:
                continue
            verdict = judge(
                rec.live,
                now,
                s.hung_after,
                rec.host_name,
                in_flight_since=self.book.job_began_at(rec.key) if rec.busy else None,
                start_timeout=s.start_timeout,
                keepalive_timeout=s.keepalive_timeout,
            )
            if verdict is None:
                continue
            metrics.incr(metrics.HUNG_STOPPED, verdict=verdict.kind)
            self.log.error("winexec: %s is %s: %s; stopping it", rec.key, verdict.kind, verdict.reason)
            if not rec.settled:
                self.write_reason(rec, [f"winexec: {verdict.reason}"], only_if_exists=rec.started)
                self.fail(rec, verdict.reason)
            self.request_stop(rec, verdict.reason)

    # -- endings ------------------------------------------------------------------------------
    def fail(self, rec: TaskRecord, reason: str) -> None:
        rec.reported = True
        self.audit("ended", rec, outcome="failed", reason=reason)
        self.airflow.fail(rec.key, reason)

    def audit(self, event: str, rec: TaskRecord, **fields: Any) -> None:
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
        self.trail.record(event, rec.key, **{**about, **fields})

    def done(self, rec: TaskRecord, stop_session: bool = False) -> None:
        if stop_session and rec.session is not None and not rec.session.closed:
            self.jobs.submit(close_quietly, rec.session, rec.log_path if rec.started else None)
        rec.session = None
        self.forget(rec)

    def forget(self, rec: TaskRecord) -> None:
        self.book.set_phase(rec, Phase.DONE)
        if rec.host is not None:
            self.pool.release(rec.host.name, rec.identity.principal, rec.weight)
            rec.host = None
        self.airflow.running.discard(rec.key)

    def finish_unlaunched(self, key: TaskInstanceKey, log_path: str | None, reason: str) -> None:
        """The task never ran: fail it and put the reason where its log will show it."""
        self.log.error("winexec: %s failed: %s", key, reason)
        path = log_file(log_path)
        if path is not None:
            self.jobs.submit(write_log, path, [f"winexec: {reason}"], self.log)
        self.airflow.fail(key, reason)

    def write_reason(self, rec: TaskRecord, lines: list[str], only_if_exists: bool = False) -> None:
        """Append to the task's log file on this machine.

        When the task did run, its log lives on the Windows host and Airflow shows it from there
        unless a local file exists; so then we only append to a file that already exists (a
        shared log folder) and never create one that would hide the host's log.
        """
        path = log_file(rec.log_path)
        if path is None or (only_if_exists and not path.exists()):
            return
        self.jobs.submit(write_log, path, lines, self.log)


def log_file(log_path: str | None) -> Path | None:
    """The task's log file under Airflow's log folder here, or ``None``."""
    base = airflow_log_folder() if log_path else None
    return base / log_path if base is not None and log_path else None


def _level(name: str) -> int:
    level = getattr(logging, name.upper(), None)
    return level if isinstance(level, int) else logging.INFO

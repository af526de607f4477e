"""The I/O workers' side: every network round trip the executor makes, off the scheduler loop.

A bounded pool of threads runs these jobs, one job per task at a time. A job touches no task
record: it reports one typed result (:mod:`winexec.executor.results`) through a queue the
scheduler thread drains on each heartbeat.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winexec import maintenance, metrics, oneshot, protocol
from winexec.config import HostSpec, Settings, reread_hosts
from winexec.executor import results as res
from winexec.executor.records import RecordBook, Stray
from winexec.quotas import QuotaReader
from winexec.transport import (
    AgentFailure,
    CredentialStore,
    LaunchError,
    NoAgent,
    NoShell,
    TaskSession,
    Transport,
    classify,
)

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey

    from winexec.identity import Identity

#: How long a stop on the way out (scheduler terminating, stray cleanup) waits for the agent's
#: ``exit`` line before deleting the shell; it holds a worker meanwhile.
STOP_WAIT = 5.0


class HostJobs:
    """The worker pool and the jobs it runs; results go to :attr:`results`."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        tickets: CredentialStore,
        book: RecordBook,
        clock: Callable[[], float],
        log: Any,
        team_name: str | None = None,
    ) -> None:
        self.log = log  # the executor's
        self.settings = settings
        self.transport = transport
        self.tickets = tickets
        self.book = book
        self.clock = clock
        self.team_name = team_name
        self.results: queue.SimpleQueue[res.JobResult] = queue.SimpleQueue()
        self._io = ThreadPoolExecutor(max_workers=settings.io_workers, thread_name_prefix="winexec-io")
        self._principals: set[str] = set()
        self._principals_lock = threading.Lock()
        self._quotas: QuotaReader | None = None  # the refresh job's alone

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._io.submit(fn, *args)

    def shutdown(self, wait: bool) -> None:
        self._io.shutdown(wait=wait, cancel_futures=not wait)

    def drain(self) -> Iterator[res.JobResult]:
        """The results reported so far, each taken off the queue as it is handed out."""
        while True:
            try:
                yield self.results.get_nowait()
            except queue.Empty:
                return

    # -- one task's jobs ----------------------------------------------------------------------
    def launch(self, key: TaskInstanceKey, host: HostSpec, ident: Identity, start: protocol.Start) -> None:
        began = time.monotonic()
        min_life = start.execution_timeout + start.grace if start.execution_timeout else None
        try:
            self.ensure_principal(ident.principal)
            session = self.transport.open_session(
                self.settings, host, ident.principal, ident.delegate, self.tickets, start, min_life
            )
        except LaunchError as e:
            self.results.put(res.LaunchFailed(key, e))
        except Exception as e:
            reason = f"launch crashed: {e!r}".replace(start.workload.get("token") or "\0", "***")
            self.results.put(res.LaunchFailed(key, AgentFailure(reason)))
        else:
            metrics.launched(host.name, time.monotonic() - began)
            self.results.put(res.Launched(key, session, self.clock()))

    def ensure_principal(self, principal: str) -> None:
        """Register a principal first seen at run time (run_as_user, executor_config) with the store."""
        with self._principals_lock:
            if principal in self._principals:
                return
            ensure = getattr(self.tickets, "ensure", None)  # a test's fixed store has none
            if ensure is not None:
                try:
                    ensure(principal, self.settings.keytab_for)
                except Exception as e:
                    raise classify(e, HostSpec(name="-"), principal) from e
            self._principals.add(principal)

    def poll(self, key: TaskInstanceKey, session: TaskSession) -> None:
        # When the poll really began, not when it was queued: with many running tasks a poll
        # may wait for a worker, and that wait must not count as the host not answering.
        self.book.job_began(key, self.clock())
        try:
            result = session.poll(timeout=self.settings.poll_timeout)
        except LaunchError as e:
            self.results.put(res.PollFailed(key, e, self.clock()))
        except Exception as e:
            self.results.put(res.PollFailed(key, AgentFailure(repr(e)), self.clock()))
        else:
            self.results.put(res.Polled(key, result, self.clock()))

    def ask_stop(self, key: TaskInstanceKey, session: TaskSession, reason: str) -> None:
        try:
            session.ask_stop(reason)
        except Exception as e:
            self.log.info("winexec: asking %s to stop on %s: %s", key, session.host.name, str(e))
            self.results.put(res.StopAsked(key, False))
        else:
            self.results.put(res.StopAsked(key, True))

    def disconnect(self, key: TaskInstanceKey, session: TaskSession) -> None:
        self.results.put(res.Disconnected(key, session.disconnect()))

    def reattach(self, key: TaskInstanceKey, host: HostSpec, ident: Identity, run_id: str) -> None:
        try:
            self.ensure_principal(ident.principal)
            session = self.transport.reattach_session(
                self.settings, host, ident.principal, ident.delegate, self.tickets, run_id
            )
        except LaunchError as e:
            self.results.put(res.ReattachFailed(key, e))
        except Exception as e:
            self.results.put(res.ReattachFailed(key, AgentFailure(f"reattach crashed: {e!r}")))
        else:
            self.results.put(res.Reattached(key, session, self.clock(), run_id))

    def find_and_reattach(
        self, hosts: list[HostSpec], wanted: dict[TaskInstanceKey, tuple[Identity, str]]
    ) -> None:
        """Ask each host once, as these tasks' principal (``--runs``), which of their launch keys
        run there, and reattach to each run found (one job each)."""
        ident = next(iter(wanted.values()))[0]
        by_launch = {launch_key: key for key, (_, launch_key) in wanted.items()}
        unasked: list[str] = []
        for host in hosts:
            if not by_launch:
                break
            try:
                self.ensure_principal(ident.principal)
                opened = self.transport.open_channel(
                    self.settings, host, ident.principal, False, self.tickets
                )
                with opened as channel:
                    runs = channel.agent("--runs").get("runs") or []
            except Exception as e:  # that host cannot say now: the others may
                self.log.info("winexec: cannot ask %s which runs it has: %s", host.name, str(e))
                unasked.append(host.name)
                continue
            for run in runs:
                key = by_launch.pop(str(run.get("launch_key")), None) if run.get("run_id") else None
                if key is not None:
                    self.submit(self.reattach, key, host, wanted[key][0], str(run["run_id"]))
        for launch_key, key in by_launch.items():
            why = f"no host runs its launch {launch_key}"
            if unasked:
                why += f" (could not ask {', '.join(unasked)})"
            self.results.put(res.ReattachFailed(key, AgentFailure(why)))

    def clean_stray(self, stray: Stray) -> None:
        done = False
        try:
            session = self.transport.reattach_session(
                self.settings, stray.host, stray.identity.principal, False, self.tickets, stray.run_id
            )
        except (NoShell, NoAgent):  # no shell, or no agent in it (closed now): nothing runs there
            done = True
        except Exception:  # still silent: later
            done = False
        else:
            session.stop("its launch was ambiguous and the task was failed; not adopted", wait=STOP_WAIT)
            done = True
        self.results.put(res.StrayChecked(stray, done))

    def oneshot(
        self, workload: Any, host: HostSpec, ident: Identity, mode: oneshot.Mode, request: dict[str, Any]
    ) -> None:
        ok, said, answered = oneshot.run_on_host(self.settings, host, ident, self.tickets, mode, request)
        self.results.put(res.OneShotDone(workload, host, ident, ok, said, answered))

    # -- the pool's --------------------------------------------------------------------------
    def refresh_hosts(self) -> None:
        try:
            hosts, problems = reread_hosts(self.settings, team_name=self.team_name)
            if self._quotas is None:
                self._quotas = QuotaReader(self.settings, self.tickets)
            hosts = self._quotas.apply(hosts)
        except Exception as e:
            hosts, problems = (), [f"[winexec] hosts: refresh failed: {e}"]
        self.results.put(res.HostsRead(hosts, problems, read_drains(self.log)))


def read_drains(log: Any) -> dict[str, str] | None:
    """The hosts operators drained (Airflow's database); ``None`` when it cannot be read."""
    try:
        return {host: str(d) for host, d in maintenance.drained().items()}
    except Exception as e:
        log.warning(
            "winexec: cannot read drained hosts from Airflow's database (%s: %s); keeping the "
            "drains known so far",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
        return None


def write_log(path: Path, lines: list[str], log: Any) -> None:
    """Append ``lines`` to a task's log file here, as Airflow's structured log records."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        now = datetime.now(timezone.utc).isoformat()
        with open(path, "a", encoding="utf-8") as f:
            for line in lines:
                entry = {"timestamp": now, "level": "error", "logger": "winexec.executor", "event": line}
                f.write(json.dumps(entry) + "\n")
    except OSError as e:
        log.warning("winexec: cannot write the failure reason to %s: %s", path, str(e))


def stop_quietly(session: TaskSession, reason: str) -> None:
    """Stop an agent no record follows any more (it never raises), waiting ``STOP_WAIT`` at most."""
    session.stop(reason, wait=STOP_WAIT)


def close_quietly(session: TaskSession, log_path: str | None = None) -> None:
    """Close a finished task's shell; first copy its log here if only the host has it (tasklog)."""
    if log_path:
        from winexec.tasklog import collect_log

        collect_log(session, log_path)
    session.close()

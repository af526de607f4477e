"""One task's PSRP session: open a shell as the task's principal, start the agent, stream, stop.

Transport only: nothing here knows Airflow. Every method does network I/O and is called from the
executor's I/O worker threads, never from the scheduler loop; one session is used by one worker
at a time (the executor guarantees it), so a session needs no lock.

The workload, token included, reaches the agent only as PSRP pipeline input (the agent's
stdin): the command is the fixed ``<python> -m winexec.agent``, so no task field is ever part of
a command line or a script. The input is one line and then ``EndOfPipelineInput``: Windows
PowerShell 5.1 starts a native command only once its input has ended, and closes its stdin
after writing it, so nothing more can be said to the agent that way. Everything after the start
travels otherwise (docs/windows-host-setup.md, section 6):

- the shell is opened with ``max_runspaces=2``: a second pipeline (a stop request, a log page, a
  status query) runs beside the agent's instead of waiting for it to end;
- a stop is ``--stop RUN_ID`` in that second runspace (the agent polls its run's stop file);
- the executor-gone watchdog is the shell's own IdleTimeOut (``keepalive_timeout``): a shell no
  request reached for that long is deleted by the host, with every process in it;
- the client session (``wsmv:SessionId``) is the run id, so any client of this run -- a new TCP
  connection, a fresh logon, a restarted scheduler -- is the session the shell belongs to: it
  Disconnects the shell (a connected shell refuses Connect) and Connects again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, get_args

from winexec import protocol
from winexec.backoff import backoff
from winexec.config import HostSpec, Settings
from winexec.transport import wsman
from winexec.transport.channel import HostChannel
from winexec.transport.errors import (
    AgentFailure,
    AuthDenied,
    FaultCode,
    HostUnreachable,
    LaunchAmbiguous,
    LaunchError,
    NoAgent,
    NoShell,
    PythonMissing,
    ShellGone,
    TicketFailure,
    WorkloadTooLarge,
    classify,
    never_sent,
)
from winexec.transport.wsman import PSRP_URI_PREFIX, CredentialStore, shell_id_for

log = logging.getLogger(__name__)

#: The largest ``start`` line sent to an agent. A real workload is a few KiB; one this big means
#: an oversized field (e.g. the trace context carrier), which would cost the host's WinRM service
#: that much memory per launch. Refused before any network I/O, as a permanent failure of that task only.
MAX_START_BYTES = 1024 * 1024
#: The agent's pipeline and one more (stop, log page, status query) run side by side.
RUNSPACES = 2

#: Tries to find the run's shell after an ambiguous launch failure before calling it ambiguous.
SETTLE_ATTEMPTS = 5
#: How long settling an ambiguous launch looks for the agent's record before it sends the input
#: again: the agent claims its run within seconds of getting its input.
INPUT_PROBE = 20.0
#: A session logs on again this long (at most a quarter of its ticket's life) before its ticket ends.
RELOGON_BEFORE = 300.0


@dataclass
class PollResult:
    """What one poll brought back."""

    messages: list[protocol.Message] = field(default_factory=list)
    #: stdout lines that are not protocol messages (logged by the executor, never parsed further)
    foreign: list[str] = field(default_factory=list)
    #: error-stream records (stderr of the agent, PowerShell errors)
    errors: list[str] = field(default_factory=list)
    #: the pipeline ended (completed, failed or stopped); no more output will come
    finished: bool = False
    #: the pipeline failed (PowerShell could not run the command, or it was stopped)
    failed: bool = False
    #: the connection broke and the session reattached: this poll read nothing, which says
    #: nothing about the agent's silence
    reattached: bool = False


class TaskSession:
    """The PSRP session that runs one agent: ``open`` → ``poll``/``send`` … → ``stop``/``close``."""

    #: seconds between polls: none, a poll is itself a Receive that waits on the host
    poll_gap = 0.0

    def __init__(
        self,
        settings: Settings,
        host: HostSpec,
        principal: str,
        delegate: bool,
        credential: Any,
        tickets: CredentialStore | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.principal = principal
        self.delegate = delegate
        self._credential = credential
        #: where fresh credentials come from: a session logs on again with a renewed TGT before
        #: its Kerberos context expires, and after a broken connection
        self._tickets = tickets
        self._logon_at = time.time()
        self._relogon_checked_at = 0.0
        self._pool: Any = None
        self._ps: Any = None
        self.opened_at: float | None = None
        self.closed = False
        #: the run this session drives (set by ``open``/``reattach``); a broken connection is
        #: repaired by reattaching to the run's shell with a fresh client
        self.run_id: str | None = None
        self.reconnects = 0
        self.exited = False  # the agent's exit line came through
        self._heard_at = time.monotonic()  # when the agent last said anything
        self._record_checked_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def _wsman(self) -> Any:
        """A connection as this run's client session (module docstring)."""
        session_id = shell_id_for(self.run_id) if self.run_id else None
        return wsman.connect(self.settings, self.host, self._credential, self.delegate, session_id)

    def channel(self) -> HostChannel | None:
        """Agent commands beside the agent, in this run's open shell (no new logon)."""
        if self._pool is None or self.closed:
            return None
        return HostChannel.in_shell(self.settings, self.host, self.principal, self._pool)

    def _runspace_pool(self, connection: Any) -> Any:
        from pypsrp.powershell import RunspacePool

        s = self.settings
        return RunspacePool(
            connection,
            configuration_name=self.host.configuration,
            max_runspaces=RUNSPACES,
            idle_timeout=math.ceil(s.keepalive_timeout) or None,
        )

    def open(self, start: protocol.Start) -> None:
        """Open the shell as the principal and start the agent with ``start`` as its whole input.

        The shell's id is the run id, so a later scheduler can find this run's shell again
        (:func:`reattach`) from the task's external executor id alone.
        """
        from pypsrp.powershell import PowerShell

        s, h = self.settings, self.host
        self.run_id = start.run_id
        try:
            self._pool = pool = self._runspace_pool(self._wsman())
            shell_id = shell_id_for(start.run_id)
            if shell_id:
                pool.id = pool.shell.id = shell_id
            pool.open()
        except Exception as e:
            self._abandon()
            raise classify(e, h, self.principal) from e
        sent: list[bool] = []

        def the_input() -> Iterator[list[str]]:
            sent.append(True)  # the Command was answered; the input's Send comes next
            yield [start.to_line().rstrip("\n")]  # then EndOfPipelineInput, in the same Send

        try:
            ps = PowerShell(self._pool)
            ps.add_cmdlet(s.python).add_argument("-m").add_argument("winexec.agent")
            self._ps = ps
            ps.begin_invoke(input=the_input())
        except Exception as e:
            self._settle(classify(e, h, self.principal), start, input_sent=bool(sent) and not never_sent(e))
        self.opened_at = time.monotonic()

    def _settle(self, err: LaunchError, start: protocol.Start, input_sent: bool) -> None:
        """The agent's command may have reached the host before ``err``: find out before anyone
        launches this try again (elsewhere, that would run it twice).

        Reattach to the run's shell (its id is the run id). A pipeline there means the launch
        got through. Its input may still be missing (Windows PowerShell 5.1 then has not started
        the agent): surely so when the Command's answer was lost or the input's Send never
        connected; when the Send broke off, the agent's record on the host says (``--status``,
        beside it, for up to ``INPUT_PROBE`` s). Missing input is sent now and the agent starts;
        the session goes on. No pipeline there, or no shell while the input surely never
        arrived: nothing started, ``err`` stands and the launch may be retried anywhere. No shell
        after the input may have arrived (the host rebooted mid-launch): :class:`ShellGone`, the
        try ends. The host silent: :class:`LaunchAmbiguous`.
        """
        if not isinstance(err, (HostUnreachable, AuthDenied, AgentFailure)):  # a real answer: nothing started
            self._abandon()
            raise err
        self._pool = self._ps = None
        last: LaunchError = err
        for attempt in range(SETTLE_ATTEMPTS):
            if attempt:
                time.sleep(backoff(attempt, 0.5, 4.0))  # 0.5, 1, 2, 4 s: a blip passes
            try:
                self.reattach(start.run_id)
                if input_sent and not self._agent_claimed():
                    input_sent = False
                if not input_sent:
                    self._send_input(start)
                    input_sent = True
            except NoShell:
                if input_sent:
                    # the shell existed (it answered the pool's open) and is gone now: the host
                    # rebooted or deleted it, maybe after the agent got its input and started
                    raise ShellGone(
                        f"the WinRM shell of this run vanished from {self.host.name} during the "
                        f"launch ({err.reason}), after the agent's input may have reached it: the "
                        "task may have started there and died with the shell, so this try is not "
                        "started again"
                    ) from None
                raise err from None  # nothing runs there
            except NoAgent:
                raise err from None  # nothing runs there; reattach closed what it found
            except LaunchError as e:
                last = e
            except Exception as e:
                last = classify(e, self.host, self.principal)
            else:
                self.closed = False
                log.warning(
                    "launch on %s: %s; the agent's pipeline was there, reattached", self.host.name, err.reason
                )
                return
            self.closed = False
        self.closed = True
        raise LaunchAmbiguous(
            f"{self.host.name} stopped answering after the agent's command was sent ({err.reason}; "
            f"then {last.reason}): whether the task started there is unknown, so it is not started "
            "again anywhere, which could run this try twice"
        ) from None

    def _agent_claimed(self) -> bool:
        """Whether the run's agent has claimed its run on the host (so it got its input)."""
        channel = self.channel()
        deadline = time.monotonic() + INPUT_PROBE
        while channel is not None and self.run_id:
            if channel.agent("--status", None, self.run_id).get("found"):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)
        return False

    def _send_input(self, start: protocol.Start) -> None:
        """The agent's whole input: the start line and EndOfPipelineInput, as ``open`` sends it."""
        from pypsrp.messages import EndOfPipelineInput, PipelineInput

        pool, ps = self._pool, self._ps
        frags = pool._fragmenter.fragment_multiple(
            [PipelineInput(data=start.to_line().rstrip("\n")), EndOfPipelineInput()], pool.id, ps.id
        )
        for frag in frags:
            pool.shell.send("stdin", frag, command_id=ps._command_id)

    def ask_stop(self, reason: str) -> None:
        """Ask the agent to stop its task (``--stop`` beside it, in this shell's other runspace)."""
        channel = self.channel()
        if channel is None or not self.run_id:
            return
        channel.agent("--stop", {"reason": reason}, self.run_id, "--wait", "0")

    def _reconnect(self, err: LaunchError) -> bool:
        """After a broken connection, reattach to the run's shell with a fresh client.

        pypsrp cannot go on over a connection that broke mid-request (its message encryption
        belonged to that connection), but the shell and the agent in it live on on the host, as
        on Windows. Output the agent wrote meanwhile is buffered there and comes with the next
        poll. Returns whether the session works again; raises :class:`ShellGone` when the host
        answers but the run's shell is no longer there (rebooted).
        """
        # a broken connection shows as "unreachable", or -- on a new TCP connection, where the
        # host no longer knows the old security context -- as a 401 ("auth") or an undecryptable
        # answer ("agent"); a fresh client logs on again. Quota, ticket and shell-gone answers
        # are real answers.
        broken = (HostUnreachable, AuthDenied, AgentFailure, TicketFailure)
        if not isinstance(err, broken) or not self.run_id or self.closed:
            return False
        self._fresh_credential()  # an expired context needs a new logon; raises if none can be had
        e = self._reattach_or_keep(self.run_id)
        if e is not None:
            if isinstance(e, NoShell):
                raise ShellGone(
                    f"the WinRM shell of this run is gone from {self.host.name} (the host rebooted or "
                    "the shell was closed), and the task's processes with it"
                ) from e
            log.info("reconnecting to run %s on %s failed: %s", self.run_id, self.host.name, e.reason)
            return False
        self.reconnects += 1
        log.warning("run %s on %s: connection lost (%s); reattached", self.run_id, self.host.name, err.reason)
        return True

    def _reattach_or_keep(self, run_id: str) -> LaunchError | None:
        """Reattach to the run's shell with a fresh client; on failure the session stays as it was
        (reattach gave up on its own new client, not on the session) and the error is returned."""
        old = (self._pool, self._ps)
        self._pool = self._ps = None
        try:
            self.reattach(run_id)
        except LaunchError as e:
            self.closed = False
            self._pool, self._ps = old
            return e
        return None

    def _fresh_credential(self) -> bool:
        """Take the principal's current TGT from the store; whether it is newer than the one in use."""
        if self._tickets is None:
            return False
        cred = wsman.credential(self._tickets, self.principal, self.host)
        newer = getattr(cred, "expires_at", 0.0) > getattr(self._credential, "expires_at", 0.0) + 1
        self._credential = cred
        return newer

    def _relogon_if_due(self) -> None:
        """Log on again with the renewed TGT before this session's Kerberos context expires.

        The context lasts as long as the ticket it was made with, and both ends refuse it after
        that; a new logon then needs the KDC. Done while the KDC answers (the store renews at
        half-life), a KDC outage later does not cut the session off. Best effort: on failure the
        session goes on as it was, and a broken connection is repaired as usual.
        """
        expires = getattr(self._credential, "expires_at", None)
        now = time.time()
        if self._tickets is None or expires is None or now - self._relogon_checked_at < 5:
            return
        self._relogon_checked_at = now
        left = expires - now
        if left > min(RELOGON_BEFORE, 0.25 * max(0.0, expires - self._logon_at)):
            return
        previous, newer = self._credential, False
        try:
            newer = self._fresh_credential()
            e = self._reattach_or_keep(self.run_id) if newer and self.run_id else None
        except LaunchError as err:
            e = err
        if not newer or e is not None:
            self._credential = previous
            if e is not None:
                log.info("run %s on %s: logging on again failed: %s", self.run_id, self.host.name, e.reason)
            return
        self._logon_at = now
        log.info("run %s on %s: logged on again with a renewed ticket", self.run_id, self.host.name)

    def poll(self, timeout: int) -> PollResult:
        """One WS-Man Receive (waits up to ``timeout`` s on the host when there is no output)."""
        from pypsrp.complex_objects import PSInvocationState

        self._relogon_if_due()
        ps = self._ps
        result = PollResult()
        if ps is None:
            result.finished = True
            return result
        try:
            if ps.state == PSInvocationState.RUNNING:
                ps.poll_invoke(timeout=timeout)
        except Exception as e:
            err = classify(e, self.host, self.principal)
            if not self._reconnect(err):
                raise err from e
            result.reattached = True  # what the agent wrote meanwhile comes with the next poll
            return result
        self._drain(result)
        now = time.monotonic()
        if result.messages:
            self._heard_at = now
        if ps.state != PSInvocationState.RUNNING:
            result.finished = True
            result.failed = ps.state in (PSInvocationState.FAILED, PSInvocationState.STOPPED)
            if self.reconnects and not self.exited:
                self._add_recorded_exit(result)
        elif self.reconnects and not self.exited:
            # After a reconnect the pipeline's end may have been lost too: an agent silent for
            # two heartbeats may have finished. Its record says so (checked now and then).
            quiet = 2 * self.settings.heartbeat_interval
            if now - self._heard_at > quiet and now >= self._record_checked_at + quiet:
                self._record_checked_at = now
                self._add_recorded_exit(result)
        return result

    def _add_recorded_exit(self, result: PollResult) -> None:
        recorded = self._recorded_exit()
        if recorded is not None:
            result.messages.append(recorded)

    def _recorded_exit(self) -> protocol.Exit | None:
        """The run's outcome from its record on the host, when its ``exit`` line was lost.

        The answer to a Receive that carried the line can die with a broken connection (the
        host had already handed it out); the agent's run marker on the host still says how the
        run ended. None when there is no finished record; a host that cannot be asked right now
        raises (:class:`LaunchError`), and the poll that asked is retried.
        """
        if not self.run_id:
            return None
        try:  # a shell of its own: the run's may be the very thing that just broke
            with HostChannel(self.settings, self.host, self.principal, False, self._credential) as channel:
                st = channel.agent("--status", None, self.run_id)
        except (AgentFailure, PythonMissing) as e:  # the host answered: it keeps no such record
            log.info("no record of run %s on %s: %s", self.run_id, self.host.name, e.reason)
            return None
        if (
            not st.get("found")
            or not st.get("finished")
            or st.get("state") not in get_args(protocol.ExitState)
        ):
            return None
        state: protocol.ExitState = st["state"]
        log.warning(
            "run %s on %s: exit line lost with a connection; the host's record says %s",
            self.run_id,
            self.host.name,
            state,
        )
        self.exited = True
        return protocol.Exit(
            run_id=self.run_id,
            state=state,
            code=st.get("exit_code"),
            reason=f"task instance {st.get('ti_state')}, exit code {st.get('exit_code')} (from the "
            "host's record of the run: its exit line was lost with a broken connection)",
            ti_state=st.get("ti_state"),
        )

    def _drain(self, result: PollResult) -> None:
        ps = self._ps
        out, ps.output[:] = list(ps.output), []
        for item in out:
            for line in _lines(item):
                try:
                    msg = protocol.parse_line(line)
                except protocol.ProtocolError:
                    result.foreign.append(line)
                else:
                    result.messages.append(msg)
                    self.exited = self.exited or isinstance(msg, protocol.Exit)
        errors, ps.streams.error[:] = list(ps.streams.error), []
        for rec in errors:
            result.errors.append(_error_text(rec))

    def stop(self, reason: str, wait: float = 5.0) -> PollResult:
        """Ask the agent to stop (it kills the task's tree and reports), then delete the shell.

        Collects what the agent said while stopping, up to ``wait`` seconds, so its ``exit``
        line is not lost. Never raises: a host that is gone is as stopped as it gets.
        """
        from pypsrp.complex_objects import PSInvocationState

        collected = PollResult()
        ps = self._ps
        if ps is not None and ps.state == PSInvocationState.RUNNING:
            try:
                self.ask_stop(reason)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    r = self.poll(timeout=1)
                    collected.messages += r.messages
                    collected.foreign += r.foreign
                    collected.errors += r.errors
                    if r.finished or any(isinstance(m, protocol.Exit) for m in r.messages):
                        break
            except Exception as e:
                # str(): a log record must not keep the error, and its frames, alive
                log.info("stopping on %s: %s", self.host.name, str(e))
        self.close()
        return collected

    def close(self) -> None:
        """Stop the pipeline if still running and delete the shell. Never raises."""
        if self.closed:
            return
        self.closed = True
        from pypsrp.complex_objects import PSInvocationState

        ps, pool = self._ps, self._pool
        if ps is not None and ps.state == PSInvocationState.RUNNING:
            try:
                ps.stop()
            except Exception as e:
                log.debug("pipeline stop on %s: %s", self.host.name, str(e))
        if pool is not None:
            try:
                pool.close()
            except Exception as e:
                log.debug("closing shell on %s: %s", self.host.name, str(e))
        self._ps = None
        self._pool = None

    def disconnect(self) -> bool:
        """Detach from the shell but leave it and the agent running, for a later :func:`reattach`.

        Returns whether the host acknowledged; never raises.
        """
        if self.closed or self._pool is None:
            return False
        self.closed = True
        try:
            self._pool.disconnect()
            return True
        except Exception as e:
            log.info("disconnecting from %s: %s", self.host.name, str(e))
            return False
        finally:
            self._ps = None
            self._pool = None

    def reattach(self, run_id: str) -> None:
        """Take the shell of ``run_id`` over as its client session and resume its agent's pipeline.

        A shell whose client broke off (a dropped connection, a killed scheduler) is still
        connected to that session, and Connect to a connected shell faults (MS-WSMV 3.1.4.17):
        as the same session (the run id) this client Disconnects it first, then Connects.
        """
        from pypsrp.exceptions import WSManFaultError
        from pypsrp.powershell import RunspacePool

        wanted = shell_id_for(run_id)
        self.run_id = run_id
        try:
            connection = self._wsman()
            pools = RunspacePool.get_runspace_pools(connection)
            pool = next((p for p in pools if wanted and str(p.id).upper() == wanted), None)
            if pool is None:
                raise NoShell(f"no shell of run {run_id} on {self.host.name} (it ended or was never there)")
            pool.shell.resource_uri = f"{PSRP_URI_PREFIX}{self.host.configuration}"  # its endpoint's
            try:
                wsman.disconnect_shell(connection, pool)
            except WSManFaultError as e:
                if e.code != FaultCode.SHELL_DISCONNECTED:
                    raise
            pool.connect()
            pipelines = pool.create_disconnected_power_shells()
            if not pipelines:
                self._pool = pool
                raise NoAgent(f"the shell of run {run_id} on {self.host.name} runs no agent any more")
            ps = pipelines[0]
            ps.connect_async()
            self._pool, self._ps = pool, ps
            self.opened_at = time.monotonic()
        except Exception as e:
            self._abandon()
            raise classify(e, self.host, self.principal) from e

    def _abandon(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def reattach_session(
    settings: Settings,
    host: HostSpec,
    principal: str,
    delegate: bool,
    tickets: CredentialStore,
    run_id: str,
) -> TaskSession:
    """A session on the still-running agent of ``run_id`` (left by :meth:`TaskSession.disconnect`)."""
    session = TaskSession(
        settings, host, principal, delegate, wsman.credential(tickets, principal, host), tickets
    )
    session.reattach(run_id)
    return session


def _lines(item: Any) -> list[str]:
    text = item if isinstance(item, str) else str(item)
    return [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]


def _error_text(rec: Any) -> str:
    for attr in ("message", "reason"):
        value = getattr(rec, attr, None)
        if value:
            return str(value)
    return str(rec)


def check_size(start: protocol.Start) -> None:
    """Refuse, before any network I/O, a start line no host should be sent."""
    size = len(start.to_line())
    if size > MAX_START_BYTES:
        raise WorkloadTooLarge(
            f"the workload is {size} bytes as JSON, more than winexec sends to a host "
            f"({MAX_START_BYTES} bytes): a field of the task instance (its context carrier, ids) or of its "
            "bundle info is oversized"
        )


def open_session(
    settings: Settings,
    host: HostSpec,
    principal: str,
    delegate: bool,
    tickets: CredentialStore,
    start: protocol.Start,
    min_lifetime: float | None = None,
) -> TaskSession:
    """Get the principal's credential, open a session on ``host`` and start the agent."""
    check_size(start)
    cred = wsman.credential(tickets, principal, host, min_lifetime)
    session = TaskSession(settings, host, principal, delegate, cred, tickets)
    session.open(start)
    return session

"""Warm agents: one WinRS ``cmd`` shell per (host, principal), its agent fed start lines live.

Windows PowerShell 5.1 hands a native command its input only once the input has ended
(windows-facts 1.1), so a PSRP pipeline can never give a running process a second task. A WinRS
``cmd`` shell can: WS-Man ``Send`` "is used to pipe input to a running command" (MS-WSMV
3.1.4.13), each Send delivered as it comes, the stream ending only with ``End="true"``. So each
(host, principal) gets one shell, opened as that principal with its delegated ticket, running
``python -m winexec.agent --warm``; a task is one ``start`` line sent to it, a stop one ``stop``
line. One reader thread per agent long-polls its output (one Receive per host and principal,
not per task) and hands each line to the task it names; a task's ``poll`` reads only that.

A warm agent serves a task only while its delegated ticket outlives the task's expected run
(``execution_timeout`` plus grace, else :data:`MIN_TICKET_LEFT`); otherwise a new one is opened
beside it, and the old one is given end of input: it finishes its runs and exits. An agent idle
for ``keepalive_timeout`` is retired the same way. Its own shell's IdleTimeOut is the host's
guard if the executor vanishes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from winexec import protocol
from winexec.transport import wsman
from winexec.transport.channel import HostChannel, open_channel
from winexec.transport.errors import (
    AgentFailure,
    LaunchAmbiguous,
    LaunchError,
    classify,
    never_sent,
)
from winexec.transport.session import PollResult, check_size

if TYPE_CHECKING:
    from winexec.config import HostSpec, Settings
    from winexec.transport.wsman import CredentialStore

log = logging.getLogger("winexec.transport.warm")

#: A warm agent takes no task unless its delegated ticket has this long left, or more.
MIN_TICKET_LEFT = 600.0
#: A reader whose Receive fails tries again after this long (a partitioned host).
RECEIVE_RETRY = 1.0


class WarmAgent:
    """One warm agent on one host as one principal, and the runs it has been sent."""

    def __init__(
        self, settings: Settings, host: HostSpec, principal: str, delegate: bool, credential: Any
    ) -> None:
        self.settings, self.host, self.principal, self.delegate = settings, host, principal, delegate
        self._credential = credential
        self.expires_at: float = float(getattr(credential, "expires_at", time.time() + 10 * 3600))
        self.retiring = False
        self.ended: LaunchError | None = None  # why it can take no more (its command ended, ...)
        self.failing: LaunchError | None = None  # the last Receive's failure, while it lasts
        self.last_used = time.monotonic()
        self.heard_at = time.monotonic()
        self._runs: dict[str, deque[protocol.Message]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._shell: Any = None
        self._sender: Any = None
        self._command_id: str | None = None
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Open the shell and start the agent; raises a classified :class:`LaunchError`."""
        from pypsrp.shell import WinRS

        s = self.settings
        session_id = str(uuid.uuid4()).upper()
        try:
            receiver = wsman.connect(s, self.host, self._credential, self.delegate, session_id)
            shell = WinRS(receiver, idle_time_out=int(s.keepalive_timeout) or None)
            shell.open()
            self._shell = shell
            # Sends go on a connection of their own (the same client session, facts 6.4), so a
            # start line never waits behind the reader's long-poll.
            sender = WinRS(wsman.connect(s, self.host, self._credential, self.delegate, session_id))
            sender.id, sender._selector_set, sender.opened = shell.id, shell._selector_set, True
            self._sender = sender
            python = f'"{s.python}"' if " " in s.python else s.python
            args = ["-m", "winexec.agent", "--warm", "--runners", str(s.warm_runners)]
            answer = shell.command(python, args)
            self._command_id = answer.findtext(
                "{http://schemas.microsoft.com/wbem/wsman/1/windows/shell}CommandResponse/"
                "{http://schemas.microsoft.com/wbem/wsman/1/windows/shell}CommandId"
            )
        except Exception as e:
            self.close()
            raise classify(e, self.host, self.principal) from e
        self._reader = threading.Thread(
            target=self._read, name=f"winexec-warm-{self.host.name}-{self.principal}", daemon=True
        )
        self._reader.start()

    def serves(self, min_lifetime: float | None, now: float | None = None) -> bool:
        left = self.expires_at - (time.time() if now is None else now)
        need = max(MIN_TICKET_LEFT, (min_lifetime or 0) + 60)
        return not (self.retiring or self.ended) and left > need

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._runs)

    def retire(self) -> None:
        """No more tasks: end its input; it finishes its runs and exits (its reader then closes)."""
        if self.retiring:
            return
        self.retiring = True
        try:
            self._send(b"", end=True)
        except Exception as e:
            log.info("retiring the warm agent on %s as %s: %s", self.host.name, self.principal, str(e))
        if not self.active:
            self.close()

    def close(self) -> None:
        """Delete the shell (and with it the agent and whatever still runs in it). Never raises."""
        shell, self._shell = self._shell, None
        self.ended = self.ended or AgentFailure("the warm agent was closed")
        if shell is None:
            return
        # The Delete goes on the sending connection: the reader may be in a Receive on its own.
        closer = self._sender or shell
        try:
            with self._send_lock:
                closer.close()
        except Exception as e:
            log.debug("closing the warm shell on %s: %s", self.host.name, str(e))
        self._sender = None

    # -- runs ------------------------------------------------------------------------------
    def submit(self, start: protocol.Start) -> WarmSession:
        session = WarmSession(self, start.run_id)
        with self._lock:
            self._runs[start.run_id] = deque()
        try:
            self._send(start.to_line().encode("ascii"))
        except Exception as e:
            self.forget(start.run_id)
            err = classify(e, self.host, self.principal)
            if never_sent(e):
                raise err from e
            # The line may have reached the agent: that try must not start anywhere else, and
            # this agent, whose input may now hold half a line, takes no more (its runs go on).
            self.retiring = True
            raise LaunchAmbiguous(f"the start line's Send to the warm agent broke off: {err.reason}") from e
        self.last_used = time.monotonic()
        return session

    def stop_run(self, run_id: str, reason: str) -> None:
        self._send(protocol.Stop(run_id=run_id, reason=reason).to_line().encode("ascii"))

    def take(self, run_id: str) -> list[protocol.Message]:
        with self._lock:
            q = self._runs.get(run_id)
            if not q:
                return []
            out = list(q)
            q.clear()
            return out

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            idle = not self._runs
        self.last_used = time.monotonic()
        if idle and self.retiring:
            self.close()

    def knows(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._runs

    def _send(self, data: bytes, end: bool = False) -> None:
        sender = self._sender
        if sender is None:
            raise AgentFailure("the warm agent's shell is closed")
        with self._send_lock:
            sender.send("stdin", data, command_id=self._command_id, end=end or None)

    # -- the reader ------------------------------------------------------------------------
    def _read(self) -> None:
        from pypsrp.shell import CommandState

        pending = b""
        while self._shell is not None:
            try:
                state, code, streams = self._shell.receive(
                    "stdout stderr", self._command_id, timeout=self.settings.poll_timeout
                )
            except Exception as e:
                if getattr(e, "code", None) == 2150858793:  # OperationTimeout: no output meanwhile
                    self.failing = None
                    continue
                if self._shell is None:
                    return
                self.failing = classify(e, self.host, self.principal)
                time.sleep(RECEIVE_RETRY)
                continue
            self.failing = None
            pending += streams.get("stdout", b"")
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._dispatch(line)
            for err_line in streams.get("stderr", b"").decode(errors="replace").splitlines():
                log.warning("warm agent on %s as %s: %s", self.host.name, self.principal, err_line)
            if state == CommandState.DONE:
                self.ended = AgentFailure(f"the warm agent exited with code {code} before its runs ended")
                self.close()
                return

    def _dispatch(self, raw: bytes) -> None:
        try:
            msg = protocol.parse_line(raw)
        except protocol.ProtocolError:
            if raw.strip():
                log.info("warm agent on %s: %s", self.host.name, raw[:200].decode(errors="replace"))
            return
        self.heard_at = time.monotonic()
        run_id = getattr(msg, "run_id", None)
        with self._lock:
            q = self._runs.get(run_id) if run_id else None
            if q is not None:
                q.append(msg)
                return
        if isinstance(msg, protocol.Log):
            log.info("warm agent on %s as %s: %s", self.host.name, self.principal, msg.line)


class WarmSession:
    """One task's run in a warm agent, with the interface of a :class:`TaskSession`."""

    #: seconds between polls: a poll reads what the agent's reader queued, so it returns at once
    poll_gap = 0.5

    def __init__(self, agent: WarmAgent, run_id: str) -> None:
        self.agent = agent
        self.host = agent.host
        self.principal = agent.principal
        self.run_id = run_id
        self.opened_at = time.monotonic()
        self.closed = False
        self.exited = False
        self.reconnects = 0

    def channel(self) -> HostChannel | None:
        """Agent commands beside it (reading a log): a PSRP shell of their own."""
        a = self.agent
        return HostChannel(a.settings, a.host, a.principal, False, a._credential)

    def poll(self, timeout: int) -> PollResult:
        """What the agent's reader brought for this run: memory only, never waits (the driver
        polls again after :attr:`poll_gap`)."""
        a = self.agent
        result = PollResult(messages=a.take(self.run_id))
        if any(isinstance(m, protocol.Exit) for m in result.messages):
            self.exited = True
        elif not result.messages:
            if a.ended is not None:
                result.finished = result.failed = True
                result.errors.append(a.ended.reason)
            elif a.failing is not None:
                raise a.failing
        return result

    def ask_stop(self, reason: str) -> None:
        self.agent.stop_run(self.run_id, reason)

    def stop(self, reason: str, wait: float = 5.0) -> PollResult:
        """Ask the agent to stop this run and collect what it says, up to ``wait`` s. An agent
        that says nothing at all meanwhile is hung: its shell goes, with every run in it (they
        are as silent as it is). Never raises."""
        collected = PollResult()
        a = self.agent
        try:
            self.ask_stop(reason)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not self.exited:
                r = self.poll(timeout=1)
                collected.messages += r.messages
                collected.errors += r.errors
                if r.finished:
                    break
        except Exception as e:
            log.info("stopping on %s: %s", self.host.name, str(e))
        if not self.exited and time.monotonic() - a.heard_at > wait:
            log.warning(
                "the warm agent on %s as %s is silent; deleting its shell", self.host.name, self.principal
            )
            a.ended = AgentFailure("the warm agent stopped answering and its shell was deleted")
            a.close()
        self.close()
        return collected

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.agent.forget(self.run_id)

    def disconnect(self) -> bool:
        """The run goes on in its agent; nothing on the wire to leave (the shell stays)."""
        self.closed = True
        return False


class WarmTransport:
    """Launches each task as a start line to its principal's warm agent on the host."""

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], list[WarmAgent]] = {}
        self._lock = threading.Lock()

    def open_session(
        self,
        settings: Settings,
        host: HostSpec,
        principal: str,
        delegate: bool,
        tickets: CredentialStore,
        start: protocol.Start,
        min_lifetime: float | None = None,
    ) -> WarmSession:
        check_size(start)
        agent = self._agent(settings, host, principal, delegate, tickets, min_lifetime)
        return agent.submit(start)

    def _agent(
        self,
        settings: Settings,
        host: HostSpec,
        principal: str,
        delegate: bool,
        tickets: CredentialStore,
        min_lifetime: float | None,
    ) -> WarmAgent:
        key = (host.name, principal)
        with self._lock:
            agents = self._agents.setdefault(key, [])
            for old in [a for a in agents if not a.serves(min_lifetime)]:
                old.retire()
            agents[:] = [a for a in agents if a.ended is None]
            for a in agents:
                if a.serves(min_lifetime) and a.delegate == delegate:
                    return a
            cred = wsman.credential(tickets, principal, host, max(MIN_TICKET_LEFT, min_lifetime or 0) + 60)
            agent = WarmAgent(settings, host, principal, delegate, cred)
            agent.open()  # under the lock: one shell per (host, principal), never two racing
            agents.append(agent)
            return agent

    def retire_idle(self, idle_for: float) -> None:
        """Retire agents that ran nothing for ``idle_for`` seconds (the executor's sync)."""
        now = time.monotonic()
        with self._lock:
            for agents in self._agents.values():
                for a in agents:
                    if not a.active and now - a.last_used > idle_for:
                        a.retire()
                agents[:] = [a for a in agents if a.ended is None]

    def close(self) -> None:
        with self._lock:
            for agents in self._agents.values():
                for a in agents:
                    a.retire()

    def shells(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return {k: len(v) for k, v in self._agents.items() if v}

    @staticmethod
    def reattach_session(*args: Any, **kwargs: Any) -> Any:
        from winexec.transport.session import reattach_session

        return reattach_session(*args, **kwargs)

    open_channel = staticmethod(open_channel)

"""Is a running task alive? Heartbeats and deadlines, judged without trusting remote clocks.

The agent writes a heartbeat every ``heartbeat_interval``; the executor sees them only when a
poll of the task returns, and with many running tasks and a bounded worker pool a task may be
polled seldom. So silence is measured between *polls*, not against the wall clock: a poll that
ends at ``E`` returns everything the agent wrote up to about ``E``. If polls keep succeeding and
none since the one that ended at ``E_hb`` carried a heartbeat, the agent has been silent for at
least ``E_last - E_hb``; past ``missed_heartbeats * heartbeat_interval`` the task is hung. A
slow poll cycle therefore never fakes a hang. When polls fail (host gone), there is no such
evidence, and the wall-clock time since the last heartbeat decides -- unless the polls fail for want of a
Kerberos ticket (the KDC is away): that is this side's fault, not the host's, and the task is
given the keepalive timeout on top (after which its host has deleted the idle shell).

Also the deadline: a task outliving ``execution_timeout + grace`` is stopped from here even if
the agent, which enforces the timeout first, did not manage to.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Liveness:
    """The timing facts the watchdog needs about one running task (monotonic seconds)."""

    #: end of the last poll that returned a heartbeat (or started/launch time)
    last_heartbeat: float
    #: end of the last poll that succeeded, with or without output
    last_poll_ok: float
    #: polls that failed since ``last_poll_ok``
    poll_failures: int = 0
    #: stop the task at this time (``None``: no execution timeout, or the task has not started)
    deadline: float | None = None
    #: whether the agent has been heard from at all (it needs a while to start Python)
    heard: bool = False
    #: why the last polls failed when the fault is on this side (no Kerberos ticket: the KDC is
    #: away), not the host's; ``None`` otherwise
    no_ticket: str | None = None

    def heartbeat(self, at: float) -> None:
        self.heard = True
        self.last_heartbeat = at
        self.polled(at)

    def polled(self, at: float) -> None:
        self.last_poll_ok = at
        self.poll_failures = 0
        self.no_ticket = None

    def poll_failed(self, no_ticket: str | None = None) -> None:
        self.poll_failures += 1
        self.no_ticket = no_ticket


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # "hung" | "timeout"
    reason: str


def judge(
    live: Liveness,
    now: float,
    hung_after: float,
    host: str,
    in_flight_since: float | None = None,
    start_timeout: float = 0.0,
    keepalive_timeout: float = 0.0,
) -> Verdict | None:
    """``None`` while the task looks alive; else why it must be stopped and failed.

    ``in_flight_since``: when the task's current network job (a poll) started, if one is in
    flight; a poll that has hung longer than ``hung_after`` counts as failed polls do.
    ``start_timeout``: until the agent's first heartbeat, silence is allowed this long instead
    (starting Python and importing the Task SDK takes seconds on a busy host).
    ``keepalive_timeout``: while polls fail for want of a ticket (the KDC is away) the host is
    not to blame and the task may well be running; it is given up only once its host, reached by
    no request for that long, has deleted the task's shell and its processes too.
    """
    if not live.heard:
        hung_after = max(hung_after, start_timeout)
    if live.no_ticket is not None and live.poll_failures:
        silent = now - live.last_heartbeat
        if silent > hung_after + keepalive_timeout:
            return Verdict(
                "hung",
                f"no news from {host} for {silent:.0f} s: no Kerberos ticket to reach it ({live.no_ticket}); "
                f"its host ends the task after {keepalive_timeout:g} s without requests",
            )
        return None
    if live.deadline is not None and now > live.deadline:
        return Verdict("timeout", f"task outlived its execution_timeout plus grace on {host}")
    silent_polled = live.last_poll_ok - live.last_heartbeat
    if silent_polled > hung_after:
        return Verdict("hung", f"no heartbeat from {host} for {silent_polled:.0f} s")
    silent = now - live.last_heartbeat
    if silent > hung_after:
        if live.poll_failures:
            return Verdict(
                "hung",
                f"no heartbeat from {host} for {silent:.0f} s ({live.poll_failures} failed polls: "
                "host unreachable)",
            )
        if in_flight_since is not None and now - in_flight_since > hung_after:
            return Verdict("hung", f"no heartbeat from {host} for {silent:.0f} s (host not answering)")
    return None

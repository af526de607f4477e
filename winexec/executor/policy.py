"""What a launch failure, an agent's exit, a failed poll or a vanished pipeline mean for a task.

Pure functions of what happened and the settings: no records, no threads, no I/O. The driver
applies what they decide, and ``tests/test_policy.py`` checks them one case at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from winexec.backoff import backoff, retry_delay
from winexec.pool import HostPool, task_weight
from winexec.transport import (
    HostFull,
    LaunchError,
    PythonMissing,
    ShellGone,
    TicketFailure,
    python_missing_reason,
)

if TYPE_CHECKING:
    from winexec import protocol
    from winexec.config import HostSpec, Settings

#: Retry delay while no host has a free slot or after a "host full" answer.
FULL_RETRY = 2.0


@dataclass(frozen=True)
class Relaunch:
    """Place the task again after ``delay`` s; ``uses_attempt``: it counts against
    ``launch_attempts`` (a full host does not)."""

    delay: float
    uses_attempt: bool = True


@dataclass(frozen=True)
class GiveUp:
    """Fail the task, never launched, with ``reason``."""

    reason: str


def after_launch_failure(
    err: LaunchError, attempt: int, host: str, excluded: int, hosts: int, settings: Settings
) -> Relaunch | GiveUp:
    """Launch ``attempt`` on ``host`` failed with ``err``; ``excluded`` of ``hosts`` hosts are
    already known not to take the task (this one included when it is to blame)."""
    if isinstance(err, HostFull):
        return Relaunch(FULL_RETRY if excluded >= hosts else 0.0, uses_attempt=False)
    if err.transient and attempt < settings.launch_attempts:
        return Relaunch(retry_delay(attempt, settings.launch_backoff, settings.launch_backoff_max))
    tries = f" after {attempt} attempt(s)" if attempt > 1 else ""
    where = "" if isinstance(err, TicketFailure) else f" on {host}"
    return GiveUp(f"could not start the task{where}{tries}: {err.reason}")


@dataclass(frozen=True)
class ExitVerdict:
    """What an agent's ``exit`` line means.

    ``outcome``: ``"success"`` or ``"failed"`` for Airflow; ``"full"``: the host's own
    admission refused the run (placed again elsewhere, as a WinRM quota fault); ``"duplicate"``:
    an earlier attempt of this launch runs there and drives the try (nothing to report).
    ``unexpected``: the agent ended otherwise than the task's own success or failure.
    """

    outcome: str
    reason: str
    unexpected: bool = False


def exit_verdict(msg: protocol.Exit) -> ExitVerdict:
    if msg.state in ("full", "duplicate"):
        return ExitVerdict(msg.state, msg.reason)
    if msg.state == "success":
        return ExitVerdict("success", msg.reason)
    return ExitVerdict("failed", msg.reason or f"task ended {msg.state}", unexpected=msg.state != "failed")


@dataclass(frozen=True)
class PollAgain:
    delay: float


@dataclass(frozen=True)
class EndRun:
    """The run is over: fail the task with ``reason`` (``None``: nothing to report, only close)."""

    reason: str | None


def after_poll_failure(
    err: LaunchError, failures: int, stopping: bool, hung_after: float
) -> PollAgain | EndRun:
    """A poll failed for the ``failures``-th time in a row.

    The run's shell gone means its agent died with it: the try ended there. A stopping task
    whose host went away is left to its shell's IdleTimeOut. Otherwise the first retry comes
    soon (a dropped connection is repaired by reattaching, a rebooted host is told by its
    missing shell), later ones back off -- by at most a quarter of ``hung_after``, so that an
    outage shorter than that does not look like one.
    """
    if isinstance(err, ShellGone):
        return EndRun(f"{err.reason}; the task's try ended there")
    if stopping:
        return EndRun(None)
    return PollAgain(backoff(failures, 0.5, min(10.0, hung_after / 4)))


def worth_logging(failures: int) -> bool:
    """Poll failures in a row are logged at the first, the tenth and every hundredth."""
    return failures in (1, 10) or failures % 100 == 0


def vanished(errors: list[str], host: HostSpec, python: str, started: bool) -> tuple[str, bool]:
    """Why a pipeline ended without an ``exit`` line, and whether it is the host's Python that
    is missing (then the host is to blame)."""
    missing = python_missing_reason(errors, host, python)
    if missing:
        return PythonMissing(missing).reason, True
    tail = "; ".join(errors) or "no error output"
    what = "before starting the task" if not started else "without reporting an outcome"
    return f"the agent on {host.name} exited {what}: {tail}", False


def backstop_deadline(at: float, execution_timeout: float, settings: Settings) -> float:
    """When a started task is overdue on this machine's clock: the agent times the task from its
    execute(); this allows for its grace, two heartbeats, a poll and the task process's start."""
    s = settings
    slack = s.execution_timeout_grace + 2 * s.heartbeat_interval + s.poll_timeout + s.start_timeout
    return at + execution_timeout + slack


def unplaceable(pool: HostPool, ti: Any) -> tuple[str, int]:
    """Why no configured host could ever run ``ti`` (``""`` if one could), and its weight."""
    queue = ti.queue
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

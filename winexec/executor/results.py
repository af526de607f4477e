"""What the executor's I/O workers report to the scheduler loop: one frozen type per outcome.

Workers do the slow part (a WinRM round trip, a KDC exchange) and touch no task record; the
loop reads these from a queue on each heartbeat and applies them. A result that concerns one
task carries its key; the loop drops it if the task is no longer there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey

    from winexec.config import HostSpec
    from winexec.identity import Identity
    from winexec.transport import LaunchError, PollResult, TaskSession


@dataclass(frozen=True)
class Launched:
    key: TaskInstanceKey
    session: TaskSession
    at: float


@dataclass(frozen=True)
class LaunchFailed:
    key: TaskInstanceKey
    error: LaunchError


@dataclass(frozen=True)
class Polled:
    key: TaskInstanceKey
    result: PollResult
    at: float


@dataclass(frozen=True)
class PollFailed:
    key: TaskInstanceKey
    error: LaunchError
    at: float


@dataclass(frozen=True)
class StopAsked:
    """``taken``: the host took the stop request (else the shell is deleted)."""

    key: TaskInstanceKey
    taken: bool


@dataclass(frozen=True)
class Disconnected:
    key: TaskInstanceKey
    answer: Any  # what ``TaskSession.disconnect`` said


@dataclass(frozen=True)
class Reattached:
    key: TaskInstanceKey
    session: TaskSession
    at: float
    run_id: str


@dataclass(frozen=True)
class ReattachFailed:
    key: TaskInstanceKey
    error: LaunchError


@dataclass(frozen=True)
class StrayChecked:
    """``done``: nothing of the stray run is left on its host."""

    stray: Any
    done: bool


@dataclass(frozen=True)
class HostsRead:
    hosts: tuple[HostSpec, ...]
    problems: list[str]
    drains: dict[str, str] | None


@dataclass(frozen=True)
class OneShotDone:
    workload: Any
    host: HostSpec
    identity: Identity
    ok: bool
    said: str
    answered: bool


#: The results about one task (they carry its key).
TaskResult = Launched | LaunchFailed | Polled | PollFailed | StopAsked | Disconnected
JobResult = TaskResult | Reattached | ReattachFailed | StrayChecked | HostsRead | OneShotDone

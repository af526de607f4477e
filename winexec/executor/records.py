"""The record book: everything the executor knows about its tasks, owned by the scheduler thread.

One :class:`TaskRecord` per accepted task instance; which ones wait for a host is derived from
their phase (:meth:`RecordBook.set_phase` is the one place a phase changes); the timers of due
launches and delayed polls are here too. The only piece I/O workers write is when their job for
a task began (:meth:`RecordBook.job_began`), under its own lock.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.executors import workloads
    from airflow.models.taskinstancekey import TaskInstanceKey

    from winexec.config import HostSpec
    from winexec.identity import Identity, TaskFacts
    from winexec.transport import TaskSession
    from winexec.watchdog import Liveness

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

    @property
    def host_name(self) -> str:
        return self.host.name if self.host else "?"

    @property
    def queue(self) -> str | None:
        return self.workload.ti.queue if self.workload is not None else None

    @property
    def settled(self) -> bool:
        """Airflow has its outcome already, or no longer wants one."""
        return self.revoked or self.reported


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


class RecordBook:
    """The records by task key, which of them wait, and when each is due for its next step."""

    def __init__(self) -> None:
        self._records: dict[TaskInstanceKey, TaskRecord] = {}
        self._waiting: set[TaskInstanceKey] = set()
        self._launches: list[tuple[float, int, TaskInstanceKey]] = []
        self._polls: list[tuple[float, int, TaskInstanceKey]] = []
        self._seq = itertools.count()
        self._began: dict[TaskInstanceKey, float] = {}
        self._began_lock = threading.Lock()
        #: what queue_workload read from the DB, until the workload is taken (by task / callback)
        self.facts: dict[TaskInstanceKey, tuple[TaskFacts, float | None]] = {}
        self.callback_facts: dict[Any, TaskFacts] = {}
        self.strays: list[Stray] = []

    # -- the records ------------------------------------------------------------------------
    def add(self, rec: TaskRecord) -> None:
        self._records[rec.key] = rec
        self.set_phase(rec, rec.phase)

    def get(self, key: TaskInstanceKey) -> TaskRecord | None:
        return self._records.get(key)

    def __getitem__(self, key: TaskInstanceKey) -> TaskRecord:
        return self._records[key]

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def values(self) -> list[TaskRecord]:
        """A copy: callers end records while they walk it."""
        return list(self._records.values())

    def set_phase(self, rec: TaskRecord, phase: Phase) -> None:
        rec.phase = phase
        if phase is Phase.WAITING:
            self._waiting.add(rec.key)
        else:
            self._waiting.discard(rec.key)
        if phase is Phase.DONE:
            self._records.pop(rec.key, None)
            self.job_ended(rec.key)

    @property
    def waiting(self) -> int:
        """How many accepted tasks wait for a host (their slots are spoken for)."""
        return len(self._waiting)

    def last_heartbeats(self) -> list[float]:
        """When each running task last beat (for the heartbeat-lag metric)."""
        return [r.live.last_heartbeat for r in self._records.values() if r.live and r.phase is Phase.RUNNING]

    def phases(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._records.values():
            out[r.phase.value] = out.get(r.phase.value, 0) + 1
        return out

    # -- timers ------------------------------------------------------------------------------
    def launch_at(self, rec: TaskRecord, when: float) -> None:
        """``rec`` waits for a host from ``when`` on."""
        self.set_phase(rec, Phase.WAITING)
        heapq.heappush(self._launches, (when, next(self._seq), rec.key))

    def due_launches(self, now: float) -> Iterator[TaskRecord]:
        """Waiting records whose launch time has come, in order, each taken off its timer as it
        is handed out; one not launched now goes back with :meth:`launch_at`."""
        while self._launches and self._launches[0][0] <= now:
            rec = self._records.get(heapq.heappop(self._launches)[2])
            if rec is not None and rec.phase is Phase.WAITING:
                yield rec

    def poll_at(self, rec: TaskRecord, when: float) -> None:
        heapq.heappush(self._polls, (when, next(self._seq), rec.key))

    def due_polls(self, now: float) -> Iterator[TaskRecord]:
        while self._polls and self._polls[0][0] <= now:
            rec = self._records.get(heapq.heappop(self._polls)[2])
            if rec is not None and rec.phase is Phase.RUNNING:
                yield rec

    # -- written by I/O workers ----------------------------------------------------------------
    def job_began(self, key: TaskInstanceKey, at: float) -> None:
        """A worker's job for ``key`` really began (not when it was queued for a worker)."""
        with self._began_lock:
            self._began[key] = at

    def job_ended(self, key: TaskInstanceKey) -> None:
        with self._began_lock:
            self._began.pop(key, None)

    def job_began_at(self, key: TaskInstanceKey) -> float | None:
        with self._began_lock:
            return self._began.get(key)

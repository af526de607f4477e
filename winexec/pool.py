"""The Windows hosts: slots, health and placement. Pure bookkeeping, no network.

Used only from the scheduler thread (``sync``/``heartbeat``); workers report outcomes through the
executor's queues, so nothing here needs a lock.

* Placement: the least-loaded (running/slots) healthy host with room for the task's weight (its
  slots, :func:`task_weight`); ties go to the host that was used least recently, so load spreads
  evenly.
* Circuit breaker per host: ``failure_threshold`` consecutive launch failures attributed to the
  host open it for ``cooldown`` seconds; afterwards one probe launch may use it (half-open); the
  probe's success closes the circuit, its failure re-opens it.
* "Host full" (a WinRM quota fault) is not a failure: the host is skipped for ``full_backoff``
  seconds and the launch tries another host.
* Hosts come and go with the configuration: a removed host gets no new tasks, its running tasks
  finish and release their slots, then it is forgotten.
* A drained host (:mod:`winexec.maintenance`) gets no new tasks either, but stays configured:
  tasks it would serve wait, saying who drained it and why, instead of failing.
* WinRM's own quotas: every task holds one shell as its principal, so a host takes no more of
  one principal's tasks than its MaxShellsPerUser leaves (one shell kept back for reading a log
  or a status), and no task of a principal new to it once MaxConcurrentUsers principals run
  there. :meth:`HostPool.waits` says which limit a task waits for.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from winexec.config import HostSpec

Circuit = Literal["closed", "open", "half-open"]


def task_weight(pool_slots: int | None, executor_config: dict[str, Any] | None) -> int:
    """How many host slots a task takes: ``executor_config={"winexec": {"slots": N}}``, else
    Airflow's ``pool_slots`` (a task heavy on a host is usually heavy on its pool too).

    Raises ``ValueError`` with the fix for a value that is not a whole number of slots.
    """
    section = (executor_config or {}).get("winexec")
    if isinstance(section, dict) and "slots" in section:
        value = section["slots"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f'executor_config["winexec"]["slots"] must be a whole number >= 1, not {value!r}'
            )
        return value
    return max(1, int(pool_slots or 1))


@dataclass
class HostState:
    spec: HostSpec
    running: int = 0
    consecutive_failures: int = 0
    open_until: float | None = None  # circuit open (out of placement) until then
    probing: bool = False  # half-open: a probe launch is in flight
    full_until: float = 0.0  # host said "full" (quota): skip until then
    removed: bool = False
    drained: str = ""  # an operator's drain, as it reads ("drained by ... at ...: comment")
    last_used: float = 0.0
    launches: int = 0
    failures: int = 0
    by_principal: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return self.spec.name

    def circuit(self, now: float) -> Circuit:
        if self.open_until is None:
            return "closed"
        return "open" if now < self.open_until else "half-open"

    @property
    def free(self) -> int:
        return max(0, self.spec.slots - self.running)

    def quota_for(self, principal: str) -> str | None:
        """The WinRM quota that keeps ``principal``'s next task off this host now, if any."""
        shells = self.spec.shells_per_user - 1  # one kept back: a log read, a status query
        if self.by_principal[principal] >= shells:
            return f"MaxShellsPerUser ({self.spec.shells_per_user}, {shells} for tasks) for {principal}"
        users = +self.by_principal
        if principal not in users and len(users) >= self.spec.users:
            return f"MaxConcurrentUsers ({self.spec.users}: {', '.join(sorted(users))})"
        return None


class HostPool:
    """Slots and health of the configured hosts; see the module docstring for the rules."""

    def __init__(
        self,
        hosts: Iterable[HostSpec],
        *,
        failure_threshold: int = 3,
        cooldown: float = 60.0,
        full_backoff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.full_backoff = full_backoff
        self._clock = clock
        self._hosts: dict[str, HostState] = {}
        self.update(hosts)

    # -- queries ---------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._hosts

    def __getitem__(self, name: str) -> HostState:
        return self._hosts[name]

    @property
    def hosts(self) -> list[HostState]:
        return list(self._hosts.values())

    def active_hosts(self) -> list[HostState]:
        return [h for h in self._hosts.values() if not h.removed]

    def free_slots(self) -> int:
        """Slots placement could hand out right now (healthy, not removed, not full)."""
        now = self._clock()
        return sum(h.free for h in self._hosts.values() if self._placeable(h, now))

    def total_slots(self) -> int:
        return sum(h.spec.slots for h in self._hosts.values() if not h.removed)

    def _placeable(self, h: HostState, now: float) -> bool:
        if h.removed or h.drained or h.free <= 0 or now < h.full_until:
            return False
        circuit = h.circuit(now)
        if circuit == "open":
            return False
        return not (circuit == "half-open" and h.probing)

    # -- placement -------------------------------------------------------------------------
    def serves(self, queue: str | None) -> bool:
        """Whether some configured host takes tasks of ``queue`` (busy or not)."""
        return any(h.spec.serves(queue) for h in self._hosts.values() if not h.removed)

    def queues(self) -> str:
        """What the configured hosts serve, for a task whose queue none does."""
        named = sorted({q for h in self._hosts.values() if not h.removed for q in h.spec.queues})
        return ", ".join(named) or "every queue"

    def fits(self, queue: str | None, weight: int) -> bool:
        """Whether some configured host serving ``queue`` has ``weight`` slots at all."""
        return any(
            h.spec.serves(queue) and h.spec.slots >= weight for h in self._hosts.values() if not h.removed
        )

    def acquire(
        self, principal: str = "", exclude: Iterable[str] = (), queue: str | None = None, weight: int = 1
    ) -> HostSpec | None:
        """Reserve ``weight`` slots for a task of ``principal`` and ``queue`` on the best host
        serving that queue (not in ``exclude``); ``None`` when none has room (:meth:`waits` says why)."""
        now = self._clock()
        skip = set(exclude)
        best: HostState | None = None
        best_key: tuple[float, int, float, str] | None = None
        for h in self._hosts.values():
            if h.name in skip or not h.spec.serves(queue) or not self._placeable(h, now):
                continue
            if h.free < weight:
                continue
            if h.quota_for(principal):
                continue
            key = (h.running / h.spec.slots, h.running, h.last_used, h.name)
            if best_key is None or key < best_key:
                best, best_key = h, key
        if best is None:
            return None
        if best.circuit(now) == "half-open":
            best.probing = True
        best.running += weight
        best.by_principal[principal] += 1
        best.last_used = now
        best.launches += 1
        return best.spec

    def waits(self, principal: str, queue: str | None = None, weight: int = 1) -> str:
        """Why no host takes ``principal``'s task of ``queue`` now: each host serving the queue
        and what it waits for."""
        now = self._clock()
        why = []
        for h in self._hosts.values():
            if h.removed or not h.spec.serves(queue):
                continue
            if h.drained:
                why.append(f"{h.name}: {h.drained}")
            elif quota := h.quota_for(principal):
                why.append(f"{h.name}: {quota}")
            elif h.free <= 0:
                why.append(f"{h.name}: all {h.spec.slots} slot(s) taken")
            elif h.free < weight:
                why.append(f"{h.name}: {h.free} of {h.spec.slots} slot(s) free, the task takes {weight}")
            elif now < h.full_until:
                why.append(f"{h.name}: said it was full (a WinRM quota)")
            elif h.circuit(now) != "closed":
                why.append(f"{h.name}: out of placement after {h.consecutive_failures} failed launch(es)")
        return "; ".join(why) or "no hosts configured"

    def claim(self, name: str, principal: str = "", weight: int = 1) -> HostSpec | None:
        """Count a task already running on ``name`` (adopted), even beyond its slots."""
        h = self._hosts.get(name)
        if h is None:
            return None
        h.running += weight
        h.by_principal[principal] += 1
        return h.spec

    def release(self, name: str, principal: str = "", weight: int = 1) -> None:
        """A task placed on ``name`` is gone (finished, failed, or its launch was abandoned)."""
        h = self._hosts.get(name)
        if h is None:
            return
        h.running = max(0, h.running - weight)
        h.by_principal[principal] -= 1
        if h.by_principal[principal] <= 0:
            del h.by_principal[principal]
        if h.removed and h.running == 0:
            del self._hosts[name]

    # -- health ----------------------------------------------------------------------------
    def launch_succeeded(self, name: str) -> None:
        h = self._hosts.get(name)
        if h is None:
            return
        h.consecutive_failures = 0
        h.open_until = None
        h.probing = False

    def launch_failed(self, name: str) -> bool:
        """A launch failed because of the host; returns True when this opened its circuit."""
        h = self._hosts.get(name)
        if h is None:
            return False
        now = self._clock()
        h.failures += 1
        h.consecutive_failures += 1
        was_probe = h.probing
        h.probing = False
        if was_probe or h.consecutive_failures >= self.failure_threshold:
            opened = h.open_until is None or now >= h.open_until
            h.open_until = now + self.cooldown
            return opened
        return False

    def host_full(self, name: str) -> None:
        """The host refused for quota reasons: skip it for a while, it is not unhealthy."""
        h = self._hosts.get(name)
        if h is None:
            return
        h.full_until = self._clock() + self.full_backoff
        h.probing = False

    # -- configuration ---------------------------------------------------------------------
    def update(self, hosts: Iterable[HostSpec]) -> tuple[list[str], list[str]]:
        """Make ``hosts`` the configured set; returns (added, removed) host names.

        A host still in the list keeps its health and load; its new spec (slots, address) applies
        to the next launches. A host gone from the list is drained, not dropped.
        """
        specs = {h.name: h for h in hosts}
        added, removed = [], []
        for name, spec in specs.items():
            state = self._hosts.get(name)
            if state is None:
                self._hosts[name] = HostState(spec=spec)
                added.append(name)
            else:
                if state.removed:
                    added.append(name)
                state.spec = spec
                state.removed = False
        for name, state in list(self._hosts.items()):
            if name in specs or state.removed:
                continue
            removed.append(name)
            if state.running == 0:
                del self._hosts[name]
            else:
                state.removed = True
        return added, removed

    def set_drained(self, drains: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """Make ``drains`` (host name -> why) the drained hosts; returns (drained, resumed) names."""
        drained, resumed = [], []
        for h in self._hosts.values():
            why = drains.get(h.name, "")
            if why and not h.drained:
                drained.append(h.name)
            elif h.drained and not why:
                resumed.append(h.name)
            h.drained = why
        return drained, resumed

    def describe(self) -> list[dict[str, object]]:
        """Per-host status for logs and the CLI."""
        now = self._clock()
        return [
            {
                "host": h.name,
                "running": h.running,
                "slots": h.spec.slots,
                "circuit": h.circuit(now),
                "removed": h.removed,
                "drained": h.drained,
                "consecutive_failures": h.consecutive_failures,
            }
            for h in self._hosts.values()
        ]

"""Every metric winexec emits, by name, and the one-line helpers the executor and tickets call.

Metrics go through Airflow's ``Stats`` (statsd, Datadog or OpenTelemetry, as ``[metrics]`` says),
so they land next to the scheduler's own. Names are fixed strings; what varies (host, cause,
verdict) goes in tags, so a plain statsd backend still gets one series per name. The helpers never
raise: a broken metrics backend must not stop a launch or a ticket renewal. The ticket layer runs
without Airflow too (tools, tests), so ``Stats`` is imported on first use and missing means off.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from winexec.pool import HostPool

log = logging.getLogger(__name__)

PREFIX = "winexec"
#: gauge per host (tag ``host``): configured slots, slots in use, slots placement could use now
HOST_SLOTS = f"{PREFIX}.host.slots"
HOST_SLOTS_USED = f"{PREFIX}.host.slots_used"
HOST_SLOTS_FREE = f"{PREFIX}.host.slots_free"
#: gauges over the whole pool (no tags)
SLOTS_TOTAL = f"{PREFIX}.slots.total"
SLOTS_FREE = f"{PREFIX}.slots.free"
#: counter per launch that reached the agent (tag ``host``)
LAUNCHES = f"{PREFIX}.launches"
#: counter per failed launch attempt (tags ``host``, ``cause`` = the LaunchError kind)
LAUNCH_FAILURES = f"{PREFIX}.launch_failures"
#: timing from taking a host slot to the agent running, in milliseconds (tag ``host``)
LAUNCH_LATENCY = f"{PREFIX}.launch_latency"
#: counter per launch retried after a failure (tag ``cause``)
RETRIES = f"{PREFIX}.retries"
#: counter per task the watchdog stopped (tag ``verdict``: hung / timeout)
HUNG_STOPPED = f"{PREFIX}.tasks_stopped"
#: counters of the ticket layer (tag ``principal``)
TICKET_RENEWALS = f"{PREFIX}.tickets.renewals"
TICKET_ACQUISITIONS = f"{PREFIX}.tickets.acquisitions"
TICKET_RENEWAL_FAILURES = f"{PREFIX}.tickets.renewal_failures"
#: gauge, seconds: the longest any running task has gone without a heartbeat reaching us
HEARTBEAT_LAG = f"{PREFIX}.heartbeat_lag"

ALL = (
    HOST_SLOTS,
    HOST_SLOTS_USED,
    HOST_SLOTS_FREE,
    SLOTS_TOTAL,
    SLOTS_FREE,
    LAUNCHES,
    LAUNCH_FAILURES,
    LAUNCH_LATENCY,
    RETRIES,
    HUNG_STOPPED,
    TICKET_RENEWALS,
    TICKET_ACQUISITIONS,
    TICKET_RENEWAL_FAILURES,
    HEARTBEAT_LAG,
)


def _stats() -> Any:
    """Airflow's ``Stats`` if this process runs Airflow; the ticket layer alone never imports it.

    (Importing Airflow takes seconds; a renewal thread must not pay that in a process that has
    no metrics backend anyway.)
    """
    if "airflow" not in sys.modules:
        return None
    try:
        from airflow.observability.stats import Stats
    except ImportError:
        return None
    return Stats


def incr(name: str, **tags: str) -> None:
    stats = _stats()
    if stats is None:
        return
    try:
        stats.incr(name, tags=tags or None)
    except Exception as e:  # never let metrics break the caller
        log.debug("metric %s: %s", name, str(e))


def gauge(name: str, value: float, **tags: str) -> None:
    stats = _stats()
    if stats is None:
        return
    try:
        stats.gauge(name, value, tags=tags or None)
    except Exception as e:
        log.debug("metric %s: %s", name, str(e))


def timing(name: str, seconds: float, **tags: str) -> None:
    """A duration; Airflow's backends take a ``timedelta`` (sent as milliseconds)."""
    from datetime import timedelta

    stats = _stats()
    if stats is None:
        return
    try:
        stats.timing(name, timedelta(seconds=max(0.0, seconds)), tags=tags or None)
    except Exception as e:
        log.debug("metric %s: %s", name, str(e))


def launched(host: str, seconds: float) -> None:
    """An agent is running on ``host``; ``seconds`` from the launch job's start (ticket, shell, agent)."""
    incr(LAUNCHES, host=host)
    timing(LAUNCH_LATENCY, seconds, host=host)


def pool_gauges(pool: HostPool, now: float, last_heartbeats: Iterable[float]) -> None:
    """Slot gauges per host and for the pool, and the heartbeat lag of the running tasks."""
    free_total = 0
    for h in pool.active_hosts():
        gauge(HOST_SLOTS, h.spec.slots, host=h.name)
        gauge(HOST_SLOTS_USED, h.running, host=h.name)
        gauge(HOST_SLOTS_FREE, h.free, host=h.name)
        free_total += h.free
    gauge(SLOTS_TOTAL, pool.total_slots())
    gauge(SLOTS_FREE, free_total)
    lag = max((now - t for t in last_heartbeats), default=0.0)
    gauge(HEARTBEAT_LAG, round(max(0.0, lag), 3))

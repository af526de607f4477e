"""winexec's metrics as Airflow's ``Stats`` delivers them to its backend.

``statsd`` is not installed here, so a recording backend is installed through Stats' own
``initialize(factory=...)`` hook; everything in front of it (Stats, the ticket layer against a real
KDC, a real host pool) is the real thing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from winexec import metrics
from winexec.config import HostSpec
from winexec.pool import HostPool
from winexec.sim.kdc import Realm
from winexec.tickets import TicketStore


class Recorder:
    """A Stats backend that keeps every call: ``(kind, name, value, tags)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, str]]] = []

    def incr(self, stat: str, count: int = 1, rate: float = 1, *, tags: Any = None) -> None:
        self.calls.append(("c", stat, count, dict(tags or {})))

    def decr(self, stat: str, count: int = 1, rate: float = 1, *, tags: Any = None) -> None:
        self.calls.append(("c", stat, -count, dict(tags or {})))

    def gauge(
        self, stat: str, value: float, rate: float = 1, delta: bool = False, *, tags: Any = None
    ) -> None:
        self.calls.append(("g", stat, value, dict(tags or {})))

    def timing(self, stat: str, dt: Any, *, tags: Any = None) -> None:
        ms = dt.total_seconds() * 1000 if isinstance(dt, timedelta) else dt
        self.calls.append(("ms", stat, ms, dict(tags or {})))

    def timer(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def values(self, name: str) -> list[tuple[Any, dict[str, str]]]:
        return [(v, t) for _, n, v, t in self.calls if n == name]


@pytest.fixture
def stats() -> Iterator[Recorder]:
    from airflow._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.observability import stats as airflow_stats

    rec = Recorder()
    airflow_stats.initialize(factory=lambda: rec, export_legacy_names=False)  # type: ignore[arg-type,return-value]
    try:
        yield rec
    finally:
        airflow_stats.initialize(factory=NoStatsLogger, export_legacy_names=False)


def test_pool_gauges_and_launch_metrics(stats: Recorder) -> None:
    pool = HostPool([HostSpec("win01.corp.example", slots=4), HostSpec("win02.corp.example", slots=2)])
    assert pool.acquire() is not None and pool.acquire() is not None
    now = time.monotonic()
    metrics.pool_gauges(pool, now, [now - 3.5, now - 1.0])
    metrics.launched("win01.corp.example", 0.25)
    metrics.incr(metrics.RETRIES, cause="unreachable")
    metrics.incr(metrics.HUNG_STOPPED, verdict="hung")
    win01, win02 = {"host": "win01.corp.example"}, {"host": "win02.corp.example"}
    assert stats.values(metrics.HOST_SLOTS) == [(4, win01), (2, win02)]
    assert stats.values(metrics.HOST_SLOTS_USED) == [(1, win01), (1, win02)]
    assert stats.values(metrics.HOST_SLOTS_FREE) == [(3, win01), (1, win02)]
    assert stats.values(metrics.SLOTS_TOTAL) == [(6, {})] and stats.values(metrics.SLOTS_FREE) == [(4, {})]
    ((lag, _),) = stats.values(metrics.HEARTBEAT_LAG)
    assert 3.4 <= lag < 4.5
    assert stats.values(metrics.LAUNCHES) == [(1, win01)]
    assert stats.values(metrics.LAUNCH_LATENCY) == [(250.0, win01)]
    assert stats.values(metrics.RETRIES) == [(1, {"cause": "unreachable"})]
    assert stats.values(metrics.HUNG_STOPPED) == [(1, {"verdict": "hung"})]


def test_ticket_renewals_and_failures_are_counted(
    stats: Recorder, short_realm: Realm, tmp_path: Path
) -> None:
    principal = short_realm.principal("svc")
    keytab = short_realm.add_principal("svc")
    with TicketStore({principal: keytab}, safety_margin=5) as store:
        store.get(principal, min_lifetime=30)
        entry = store._entry(principal)
        with entry.lock:
            store._refresh(entry, need=10)  # what the renewal thread does when the ticket is due
    assert store.renewals >= 1
    missing = tmp_path / "gone.keytab"
    missing.write_bytes(keytab.read_bytes())
    missing.chmod(0o600)
    broken = TicketStore({principal: missing})
    missing.unlink()
    with pytest.raises(Exception, match="does not exist"):
        broken.start()
    broken.close()
    who = {"principal": principal}
    assert stats.values(metrics.TICKET_ACQUISITIONS) == [(1, who)]
    assert stats.values(metrics.TICKET_RENEWALS) == [(1, who)] * store.renewals
    assert stats.values(metrics.TICKET_RENEWAL_FAILURES) == [(1, who)]


def test_every_name_is_a_valid_statsd_name() -> None:
    from airflow._shared.observability.metrics.validators import stat_name_default_handler

    for name in metrics.ALL:
        assert stat_name_default_handler(name) == name
    assert len(set(metrics.ALL)) == len(metrics.ALL)

"""Host pool: placement, slots, circuit breaker, "host full", refresh. No network."""

from __future__ import annotations

from collections import Counter

import pytest

from winexec.config import HostSpec
from winexec.pool import HostPool, task_weight


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _hosts(*spec: tuple[str, int]) -> list[HostSpec]:
    return [HostSpec(name, slots=slots) for name, slots in spec]


def test_least_loaded_spreads_evenly() -> None:
    clock = Clock()
    pool = HostPool(_hosts(("a", 2), ("b", 2), ("c", 2)), clock=clock)
    placed = []
    for _ in range(6):
        clock.t += 1
        h = pool.acquire()
        assert h is not None
        placed.append(h.name)
    assert Counter(placed) == {"a": 2, "b": 2, "c": 2}
    assert pool.acquire() is None and pool.free_slots() == 0


def test_least_loaded_is_relative_to_slots() -> None:
    pool = HostPool(_hosts(("big", 8), ("small", 2)), clock=Clock())
    names = [pool.acquire().name for _ in range(5)]  # type: ignore[union-attr]
    assert names.count("big") == 4 and names.count("small") == 1


def test_release_frees_a_slot() -> None:
    pool = HostPool(_hosts(("a", 1)), clock=Clock())
    assert pool.acquire() is not None and pool.acquire() is None
    pool.release("a")
    assert pool.acquire() is not None


def test_exclude() -> None:
    pool = HostPool(_hosts(("a", 4), ("b", 4)), clock=Clock())
    assert pool.acquire(exclude={"a"}).name == "b"  # type: ignore[union-attr]
    assert pool.acquire(exclude={"a", "b"}) is None


def test_circuit_opens_after_threshold_and_probes_after_cooldown() -> None:
    clock = Clock()
    pool = HostPool(_hosts(("a", 4), ("b", 4)), failure_threshold=3, cooldown=60, clock=clock)
    for i in range(3):
        assert pool.acquire(exclude={"b"}).name == "a"  # type: ignore[union-attr]
        pool.release("a")
        opened = pool.launch_failed("a")
        assert opened is (i == 2)
    assert pool["a"].circuit(clock.t) == "open"
    assert pool.acquire(exclude={"b"}) is None
    assert pool.free_slots() == 4  # only b's
    clock.t += 61
    assert pool["a"].circuit(clock.t) == "half-open"
    probe = pool.acquire(exclude={"b"})
    assert probe is not None and probe.name == "a"
    assert pool.acquire(exclude={"b"}) is None  # one probe at a time
    pool.launch_succeeded("a")
    assert pool["a"].circuit(clock.t) == "closed"
    assert pool.acquire(exclude={"b"}).name == "a"  # type: ignore[union-attr]


def test_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    pool = HostPool(_hosts(("a", 4)), failure_threshold=2, cooldown=30, clock=clock)
    pool.launch_failed("a")
    pool.launch_failed("a")
    clock.t += 31
    assert pool.acquire() is not None
    pool.release("a")
    assert pool.launch_failed("a") is True
    assert pool["a"].circuit(clock.t) == "open"
    clock.t += 29
    assert pool.acquire() is None
    clock.t += 2
    assert pool.acquire() is not None


def test_success_resets_consecutive_failures() -> None:
    pool = HostPool(_hosts(("a", 4)), failure_threshold=3, clock=Clock())
    pool.launch_failed("a")
    pool.launch_failed("a")
    pool.launch_succeeded("a")
    pool.launch_failed("a")
    pool.launch_failed("a")
    assert pool["a"].circuit(0) == "closed"


def test_host_full_is_skipped_briefly_not_failed() -> None:
    clock = Clock()
    pool = HostPool(_hosts(("a", 4), ("b", 4)), full_backoff=5, clock=clock)
    pool.host_full("a")
    assert {pool.acquire().name for _ in range(3)} == {"b"}  # type: ignore[union-attr]
    assert pool["a"].consecutive_failures == 0
    clock.t += 6
    assert pool.acquire().name == "a"  # type: ignore[union-attr]


def test_refresh_adds_removes_and_drains() -> None:
    pool = HostPool(_hosts(("a", 2), ("b", 2)), clock=Clock())
    assert pool.acquire(exclude={"a"}).name == "b"  # type: ignore[union-attr]
    added, removed = pool.update(_hosts(("a", 2), ("c", 2)))
    assert added == ["c"] and removed == ["b"]
    assert "b" in pool and pool["b"].removed  # still running a task: drained, not dropped
    for _ in range(4):
        assert pool.acquire().name in {"a", "c"}  # type: ignore[union-attr]
    assert pool.acquire() is None
    pool.release("b")
    assert "b" not in pool
    assert pool.total_slots() == 4


def test_refresh_keeps_health_and_applies_new_slots() -> None:
    clock = Clock()
    pool = HostPool(_hosts(("a", 1)), failure_threshold=1, clock=clock)
    pool.launch_failed("a")
    pool.update(_hosts(("a", 3)))
    assert pool["a"].circuit(clock.t) == "open" and pool["a"].spec.slots == 3


def test_removed_then_readded_host_is_placeable_again() -> None:
    pool = HostPool(_hosts(("a", 1), ("b", 1)), clock=Clock())
    pool.acquire(exclude={"b"})
    pool.update(_hosts(("b", 1)))
    assert pool["a"].removed
    added, _ = pool.update(_hosts(("a", 2), ("b", 1)))
    assert added == ["a"] and not pool["a"].removed
    assert pool.acquire(exclude={"b"}).name == "a"  # type: ignore[union-attr]


def test_unknown_host_events_are_ignored() -> None:
    pool = HostPool(_hosts(("a", 1)), clock=Clock())
    pool.release("zz")
    pool.launch_failed("zz")
    pool.launch_succeeded("zz")
    pool.host_full("zz")
    assert [h["host"] for h in pool.describe()] == ["a"]


def test_a_host_takes_no_more_of_a_principals_tasks_than_its_shell_quota_allows() -> None:
    """Each task holds a WinRM shell as its principal; one is kept back for a log read."""
    pool = HostPool([HostSpec("a", slots=10, max_shells_per_user=3)], clock=Clock())
    assert pool.acquire("alice") is not None and pool.acquire("alice") is not None
    assert pool.acquire("alice") is None  # a third shell would leave none for reading a log
    assert "a: MaxShellsPerUser (3, 2 for tasks) for alice" in pool.waits("alice")
    assert pool.acquire("bob") is not None  # another principal's shells are counted apart
    pool.release("a", "alice")
    assert pool.acquire("alice") is not None


def test_a_host_takes_no_new_principal_once_its_user_quota_is_reached() -> None:
    pool = HostPool([HostSpec("a", slots=10, max_users=2), HostSpec("b", slots=1)], clock=Clock())
    assert pool.acquire("alice", exclude={"b"}).name == "a"  # type: ignore[union-attr]
    assert pool.acquire("bob", exclude={"b"}).name == "a"  # type: ignore[union-attr]
    assert pool.acquire("carol", exclude={"b"}) is None
    assert pool.acquire("alice", exclude={"b"}) is not None  # a principal already there may add more
    assert pool.acquire("carol").name == "b"  # type: ignore[union-attr]
    assert pool.waits("dave") == "a: MaxConcurrentUsers (2: alice, bob); b: all 1 slot(s) taken"
    pool.release("a", "bob")
    assert pool.acquire("dave", exclude={"b"}).name == "a"  # type: ignore[union-attr]


def test_a_queue_places_only_on_the_hosts_that_serve_it() -> None:
    pool = HostPool(
        [
            HostSpec("win01.t", slots=2, queues=frozenset({"default"})),
            HostSpec("ssis01.t", slots=1, queues=frozenset({"ssis"})),
        ]
    )
    assert pool.serves("ssis") and pool.serves("default") and not pool.serves("gpu")
    assert HostPool([HostSpec("any.t")]).serves("gpu")  # no queues=: every queue
    first = pool.acquire("p", queue="ssis")
    assert first is not None and first.name == "ssis01.t"
    assert pool.acquire("p", queue="ssis") is None  # win01 has room but no SSIS
    assert pool.waits("p", "ssis") == "ssis01.t: all 1 slot(s) taken"
    default = [pool.acquire("p", queue="default"), pool.acquire("p", queue="default")]
    assert [h.name for h in default if h] == ["win01.t", "win01.t"]  # never the SSIS host
    only_ssis = HostPool([HostSpec("ssis01.t", queues=frozenset({"ssis"}))])
    assert not only_ssis.serves("default") and only_ssis.queues() == "ssis"


def test_a_drained_host_gets_no_new_task_and_its_running_ones_keep_their_slots() -> None:
    pool = HostPool(_hosts(("a", 2), ("b", 2)), clock=Clock())
    assert pool.acquire("p") is not None and pool["a"].running == 1  # a is placed on first
    why = "drained by ops@admin01 at 2026-12-03T16:00:00+00:00: patch Tuesday"
    assert pool.set_drained({"a": why}) == (["a"], [])
    assert pool.set_drained({"a": why}) == ([], [])  # said once, not every refresh
    placed = [pool.acquire("p"), pool.acquire("p")]
    assert [h.name for h in placed if h] == ["b", "b"] and pool.acquire("p") is None
    assert pool.free_slots() == 0 and pool["a"].running == 1  # a's task still holds its slot
    assert pool.waits("p") == f"a: {why}; b: all 2 slot(s) taken"
    assert pool.serves(None)  # drained is not gone: its tasks wait, they do not fail
    pool.release("a", "p")
    assert pool.acquire("p") is None  # a free slot on a drained host is still not placed on
    assert pool.set_drained({}) == ([], ["a"])
    back = pool.acquire("p")
    assert back is not None and back.name == "a"
    assert [d["drained"] for d in pool.describe()] == ["", ""]


def test_a_heavy_task_takes_its_weight_in_slots_where_they_are_free() -> None:
    pool = HostPool(_hosts(("a", 4), ("b", 2)), clock=Clock())
    assert pool.fits(None, 4) and not pool.fits(None, 5)
    assert pool.acquire("p") is not None and pool.acquire("p") is not None  # one on a, one on b
    heavy = pool.acquire("p", weight=3)
    assert heavy is not None and heavy.name == "a" and pool["a"].running == 4  # b has 1 free: no room
    assert pool.acquire("p", weight=2) is None
    assert pool.waits("p", weight=2) == "a: all 4 slot(s) taken; b: 1 of 2 slot(s) free, the task takes 2"
    pool.release("a", "p", 3)
    assert pool["a"].running == 1 and pool["a"].by_principal["p"] == 1
    assert pool.claim("b", "p", 2) is not None and pool["b"].running == 3  # adopted: counted as it is


def test_a_tasks_weight_is_its_executor_config_slots_else_its_pool_slots() -> None:
    assert task_weight(1, None) == 1 and task_weight(3, None) == 3 and task_weight(0, {}) == 1
    assert task_weight(1, {"winexec": {"slots": 4, "principal": "x@T"}}) == 4
    assert task_weight(5, {"winexec": {"principal": "x@T"}}) == 5
    for bad in (0, "2", 1.5, True):
        with pytest.raises(
            ValueError, match=r'executor_config\["winexec"\]\["slots"\] must be a whole number >= 1'
        ):
            task_weight(1, {"winexec": {"slots": bad}})

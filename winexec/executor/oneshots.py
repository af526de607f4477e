"""Connection tests and DAG callbacks: placed on a host serving their queue, as the principal
that connection's or DAG's tasks would use, and run there as one-shot agent modes
(:mod:`winexec.oneshot`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from winexec import oneshot
from winexec.executor import results as res
from winexec.identity import IdentityError, TaskFacts, for_connection_test, resolve

if TYPE_CHECKING:
    from winexec.executor.driver import TaskDriver


class Airflow(Protocol):
    """What placing one-shots needs of ``BaseExecutor``."""

    running: set[Any]
    event_buffer: dict[Any, Any]
    queued_connection_tests: dict[Any, Any]
    queued_callbacks: dict[Any, Any]


class OneShots:
    def __init__(
        self,
        driver: TaskDriver,
        airflow: Airflow,
        default_queue: Callable[[], str],
        callback_timeout: Callable[[], int],
    ) -> None:
        self.driver = driver
        self.airflow = airflow
        self.default_queue = default_queue
        self.callback_timeout = callback_timeout  # [callbacks] callback_execution_timeout, 0: none

    def launch(self, workload: Any) -> None:
        """Start a connection test or a DAG callback on a host serving its queue, or leave it
        queued until one has room."""
        from airflow.executors import workloads as wl

        d, af, key = self.driver, self.airflow, workload.key
        test = isinstance(workload, wl.TestConnection)
        queued = af.queued_connection_tests if test else af.queued_callbacks
        facts = (
            TaskFacts(queue=workload.queue or self.default_queue())
            if test
            else d.book.callback_facts.get(key)
        )
        facts = facts or TaskFacts(queue=self.default_queue())
        queue, ident, reason = facts.queue, None, ""
        if not d.pool.serves(queue):
            reason = (
                f"no host in [winexec] hosts serves queue {queue!r} (they serve: {d.pool.queues()}): "
                "add it to a host's queues="
            )
        else:
            try:
                ident = for_connection_test(d.s, queue) if test else resolve(d.s, facts)
            except IdentityError as e:
                reason = f"cannot choose a principal: {e}"
        if ident is None:
            queued.pop(key, None)
            d.book.callback_facts.pop(key, None)
            d.log.error("winexec: %s not run: %s", workload.display_name, reason)
            if test:
                d.jobs.submit(oneshot.fail_connection_test, key.id, reason)
            af.event_buffer[key] = (workload.failure_state, reason)
            return
        host = d.pool.acquire(ident.principal, queue=queue)
        if host is None:
            return  # stays queued: offered again next heartbeat
        queued.pop(key, None)
        d.book.callback_facts.pop(key, None)
        af.running.add(key)
        if not test:
            af.event_buffer[key] = (workload.running_state, None)
        d.log.info(
            "winexec: %s on %s as %s (%s)", workload.display_name, host.name, ident.principal, ident.source
        )
        mode: oneshot.Mode = "--test-connection" if test else "--callback"
        request: dict[str, Any] = {"workload": workload.model_dump(mode="json"), "server": d.server_url()}
        if not test:
            request["timeout"] = self.callback_timeout()
        d.jobs.submit(d.jobs.oneshot, workload, host, ident, mode, request)

    def on_done(self, result: res.OneShotDone) -> None:
        d, workload = self.driver, result.workload
        d.pool.release(result.host.name, result.identity.principal)
        if result.answered:  # a host that answered is healthy (this may have been its half-open probe)
            d.pool.launch_succeeded(result.host.name)
        elif d.pool.launch_failed(result.host.name):
            d.log.warning(
                "winexec: host %s taken out for %.0f s after failures", result.host.name, d.pool.cooldown
            )
        (d.log.info if result.ok else d.log.warning)("winexec: %s: %s", workload.display_name, result.said)
        self.airflow.running.discard(workload.key)
        state = workload.success_state if result.ok else workload.failure_state
        self.airflow.event_buffer[workload.key] = (state, result.said)

"""Workloads that are not tasks, run on the Windows hosts: Airflow connection tests
(``TestConnection``) and DAG callbacks (``ExecuteCallback``, e.g. a ``DeadlineAlert``'s
``SyncCallback``).

Each one is a single agent command in its own WinRM shell: ``--test-connection`` or ``--callback``.
It runs on a host that serves its queue, as the principal the executor chose. Neither needs what a
task needs: there are no heartbeats, no adoption and no log to copy. The agent bounds each one, with
``[connection_test] timeout`` or the scheduler's ``[callbacks] callback_execution_timeout`` (0,
Airflow's default: no limit, as in Airflow). Each reports its own result to Airflow, through the
Execution API for a test and through the executor's event for a callback. When a connection test
cannot start, this module writes the reason onto its row. Otherwise the scheduler's reaper would
fail the test later with a generic message.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from winexec.config import HostSpec, Settings
from winexec.identity import Identity

log = logging.getLogger(__name__)

Mode = Literal["--test-connection", "--callback"]
_COULD_NOT: dict[Mode, str] = {
    "--test-connection": "could not run the connection test on",
    "--callback": "could not run the callback on",
}


def run_on_host(
    settings: Settings,
    host: HostSpec,
    ident: Identity,
    tickets: Any,
    mode: Mode,
    request: dict[str, Any],
) -> tuple[bool, str, bool]:
    """Run the workload: (whether it succeeded, what happened, whether the host answered at all,
    which is what its health in placement learns from); never raises."""
    from winexec.transport import LaunchError, classify, open_channel

    workload = dict(request.get("workload") or {})
    try:
        with open_channel(settings, host, ident.principal, ident.delegate, tickets) as channel:
            answer = channel.agent(mode, request)
    except Exception as e:
        err = e if isinstance(e, LaunchError) else classify(e, host, ident.principal)
        reason = f"{_COULD_NOT[mode]} {host.name} as {ident.principal}: {err.reason}"
        if mode == "--test-connection":
            fail_connection_test(str(workload.get("connection_test_id")), reason)
        return False, reason, False
    state, message = str(answer.get("state")), str(answer.get("message") or "")
    said = f"{state} on {answer.get('where') or host.name}" + (f": {message}" if message else "")
    if mode == "--test-connection" and state not in ("success", "failed"):  # no result was reported
        reason = f"the connection test on {host.name} as {ident.principal} ended: {said}"
        fail_connection_test(str(workload.get("connection_test_id")), reason)
    return state == "success", said, True


def fail_connection_test(test_id: str, reason: str) -> None:
    """Write ``reason`` onto the test's row as its failure, unless it already has a result."""
    try:
        from airflow.models.connection_test import (
            TERMINAL_STATES,
            ConnectionTestRequest,
            ConnectionTestState,
        )
        from airflow.utils.session import create_session

        with create_session() as session:
            ct = session.get(ConnectionTestRequest, uuid.UUID(test_id), with_for_update=True)
            if ct is not None and ct.state not in TERMINAL_STATES:
                ct.state = ConnectionTestState.FAILED
                ct.result_message = reason[:2000]
    except Exception as e:  # the reaper fails it later; the reason is in the scheduler log
        log.warning("winexec: cannot record the failure of connection test %s: %s", test_id, str(e))

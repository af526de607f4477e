"""``python -m winexec.agent --test-connection``: one Airflow connection test, run on this host as
this principal. stdin: ``{"workload": <TestConnection, token included>, "server": <Execution API>}``.

A SQL Server with Windows authentication, a file share or an AD-joined service answers the Windows
identity that asks it. So only a test run here, as the principal the connection's tasks use,
shows whether those tasks will get through. The Task SDK's ``supervise_connection_test`` does the
work: it fetches the connection once through the Execution API, runs the hook's
``test_connection`` and reports the result. This module adds what that function lacks on Windows,
a timeout. Its ``TimeoutPosix`` needs ``SIGALRM``, which Windows does not have, so it runs the test
without one. Here a timer reports the failure itself, ``grace`` seconds past the test's own
timeout, and ends the process. The WinRM shell's job then takes whatever the hook started.

The answer (one JSON line) says what the SDK reported, so the executor can log it. The token
stays in this process's memory; it and the connection's password are scrubbed from every text
sent back.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import uuid
from typing import Any
from urllib.parse import quote

#: Seconds past the test's own timeout before the agent gives up on it (the SDK's timer, where it
#: has one, fires first).
GRACE = 5.0


def run(request: dict[str, Any], grace: float = GRACE) -> dict[str, Any]:
    """Run the test; the answer's ``state`` is what was reported to Airflow (or ``unknown``)."""
    from airflow.sdk.api.client import Client, ConnectionTestOperations
    from airflow.sdk.api.datamodels._generated import ConnectionTestState
    from airflow.sdk.execution_time.connection_test_supervisor import supervise_connection_test

    from winexec.agent.hostinfo import computer_name, user_name

    wl = dict(request.get("workload") or {})
    token = str(wl.get("token") or "")
    try:
        test_id = uuid.UUID(str(wl["connection_test_id"]))
        connection_id = str(wl["connection_id"])
        timeout = int(wl["timeout"])
    except (KeyError, TypeError, ValueError) as e:
        return {"state": "error", "message": f"invalid TestConnection workload: {type(e).__name__}: {e}"}
    server = str(request.get("server") or "")
    where = f"{computer_name()} as {user_name()}"

    secrets = [token] if token else []  # and the connection's password, once it is fetched

    def scrub(text: object) -> str:
        out = str(text)
        for secret in secrets:
            out = out.replace(secret, "***")
        return out

    reported: dict[str, str] = {}
    original, fetch = ConnectionTestOperations.update_state, ConnectionTestOperations.get_connection

    def get_connection(self: Any, connection_test_id: uuid.UUID) -> Any:
        found = fetch(self, connection_test_id)
        if found.password:  # a hook's message may quote it, raw or in a URI
            secrets.extend({found.password, quote(found.password, safe="")})
        return found

    def update_state(self: Any, id: uuid.UUID, state: Any, result_message: str | None = None) -> None:
        reported.update(state=str(getattr(state, "value", state)), message=scrub(result_message or ""))
        original(self, id, state, result_message)

    def give_up() -> None:
        message = f"connection test {connection_id!r} did not finish within {timeout} s on {where}"
        with contextlib.suppress(Exception):
            client = Client(base_url=server, token=token)
            client.connection_tests.update_state(test_id, ConnectionTestState.FAILED, message)
        _answer({"state": "failed", "message": message, "where": where, "timed_out": True})
        os._exit(1)

    timer = threading.Timer(timeout + grace, give_up)
    timer.daemon = True
    ConnectionTestOperations.update_state = update_state  # type: ignore[method-assign]
    ConnectionTestOperations.get_connection = get_connection  # type: ignore[method-assign]
    timer.start()
    try:
        supervise_connection_test(
            connection_test_id=test_id,
            connection_id=connection_id,
            timeout=timeout,
            token=token,
            server=server,
        )
    except Exception as e:  # it catches its own; this is the Execution API failing the report
        return {"state": "error", "message": scrub(f"{type(e).__name__}: {e}"), "where": where}
    finally:
        timer.cancel()
        ConnectionTestOperations.update_state = original  # type: ignore[method-assign]
        ConnectionTestOperations.get_connection = fetch  # type: ignore[method-assign]
    return {"state": reported.get("state", "unknown"), "message": reported.get("message", ""), "where": where}


def _answer(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=True, sort_keys=True) + "\n")
    sys.stdout.flush()


def main() -> dict[str, Any]:
    """The mode's entry: SDK logs to stderr (stdout carries the one answer line)."""
    from airflow.sdk.log import configure_logging

    from winexec.agent import compat
    from winexec.agent.hostlog import read_request

    compat.install()
    configure_logging(json_output=True, output=sys.stderr.buffer)
    return run(read_request() or {})

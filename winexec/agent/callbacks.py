"""``python -m winexec.agent --callback``: one DAG callback (a ``DeadlineAlert``'s ``SyncCallback``),
run on this host as this principal. stdin: ``{"workload": <ExecuteCallback, token included>,
"server": <Execution API>}``.

The Task SDK's ``supervise_callback`` supervises the callback. It brings the API client, the
callback's log, ``[callbacks] callback_execution_timeout`` (the scheduler's, sent with the request),
and the Connections and Variables the callback asks for. Its ``CallbackSubprocess`` forks, and
Windows cannot fork. So in this process the SDK uses :class:`WinexecCallbackSubprocess` instead: the
callback runs in a fresh interpreter (:mod:`winexec.agent.callback_runner`) inside a
:class:`~winexec.agent.containment.Containment`, on loopback TCP. Tasks run the same way
(:mod:`winexec.agent.coordinator`).

The answer (one JSON line) says how the callback ended. The token stays in this process's memory.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from types import SimpleNamespace
from typing import Any

import attrs
import structlog
from airflow.sdk.coordinators._subprocess import PopenTracker, _ResourceTracker
from airflow.sdk.execution_time import callback_supervisor
from airflow.sdk.execution_time.callback_supervisor import CallbackSubprocess

from winexec.agent import compat
from winexec.agent.containment import Containment
from winexec.agent.coordinator import ContainedKill, spawn

#: Seconds the callback process has to connect back (interpreter start and the SDK's imports).
STARTUP_TIMEOUT = 60.0


@attrs.define(kw_only=True)
class WinexecCallbackSubprocess(ContainedKill, CallbackSubprocess):
    """``CallbackSubprocess`` whose child is a ``Popen`` in a :class:`Containment`, not a fork."""

    containment: Containment = attrs.field(factory=Containment)

    @classmethod
    def start(  # type: ignore[override]
        cls,
        *,
        id: str,
        callback_path: str,
        callback_kwargs: dict[str, Any],
        dag_rel_path: Any,
        bundle_info: Any = None,
        client: Any,
        logger: Any = None,
        **kwargs: Any,
    ) -> WinexecCallbackSubprocess:
        bundle = {
            "name": getattr(bundle_info, "name", None),
            "version": getattr(bundle_info, "version", None),
        }
        spec = {
            "callback_path": callback_path,
            "callback_kwargs": callback_kwargs,
            "dag_rel_path": str(dag_rel_path or ""),
            "bundle_info": bundle,
        }
        command = [sys.executable, "-m", "winexec.agent.callback_runner"]
        containment = Containment()
        try:
            with _ResourceTracker(timeout=STARTUP_TIMEOUT) as tracker:
                stdin = (json.dumps(spec, default=str) + "\n").encode()
                child = spawn(tracker, command, containment, STARTUP_TIMEOUT, stdin=stdin)
                socks = child.socks
                self = cls(
                    id=uuid.UUID(str(id)),
                    pid=child.proc.pid,
                    process=PopenTracker(child.proc),
                    process_log=logger or structlog.get_logger(logger_name="callback").bind(),
                    start_time=time.monotonic(),
                    stdin=socks[child.comm_server],
                    client=client,
                    containment=containment,
                    **kwargs,
                )
                self._register_pipe_readers(
                    *tracker.untrack(
                        child.stdout, child.stderr, socks[child.comm_server], socks[child.logs_server]
                    ),
                    data=child.drained,
                )
                for server in tracker.untrack(child.comm_server, child.logs_server, child.proc):
                    if hasattr(server, "getsockname"):
                        server.close()  # both connected: nothing else may connect
        except BaseException:
            containment.kill()
            raise
        return self

    def wait(self) -> int:
        try:
            return super().wait()
        finally:
            self.containment.kill()  # nothing the callback started outlives it
            self.containment.close()


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Run the callback under the SDK's supervisor; the answer's ``state`` is how it ended."""
    from winexec.agent.hostinfo import computer_name, user_name
    from winexec.protocol import host_path

    wl = dict(request.get("workload") or {})
    token = str(wl.get("token") or "")
    where = f"{computer_name()} as {user_name()}"
    try:
        callback = dict(wl["callback"])
        data = dict(callback.get("data") or {})
        bundle = wl.get("bundle_info") or {}
    except (KeyError, TypeError, ValueError) as e:
        return {"state": "error", "message": f"invalid ExecuteCallback workload: {type(e).__name__}: {e}"}
    timeout = int(request.get("timeout") or 0)
    if timeout > 0:  # the scheduler's setting, not whatever this host's airflow.cfg says
        os.environ["AIRFLOW__CALLBACKS__CALLBACK_EXECUTION_TIMEOUT"] = str(timeout)
    callback_supervisor.CallbackSubprocess = WinexecCallbackSubprocess  # type: ignore[misc]
    try:
        code = callback_supervisor.supervise_callback(
            id=str(callback["id"]),
            callback_path=str(data.get("path") or ""),
            callback_kwargs=dict(data.get("kwargs") or {}),
            dag_rel_path=str(wl.get("dag_rel_path") or ""),  # type: ignore[arg-type]
            log_path=host_path(wl["log_path"]) if wl.get("log_path") else None,
            bundle_info=SimpleNamespace(name=bundle.get("name"), version=bundle.get("version")),
            token=token,
            server=str(request.get("server") or ""),
        )
    except Exception as e:  # the SDK raises when the callback's process exits non-zero
        text = f"{type(e).__name__}: {e}"
        return {"state": "failed", "message": text.replace(token, "***") if token else text, "where": where}
    finally:
        callback_supervisor.CallbackSubprocess = CallbackSubprocess  # type: ignore[misc]
    return {"state": "success" if code == 0 else "failed", "message": f"exit code {code}", "where": where}


def main() -> dict[str, Any]:
    """The mode's entry: the SDK's logs go to stderr (stdout carries the one answer line)."""
    from airflow.sdk.log import configure_logging

    from winexec.agent.hostlog import read_request

    compat.install()
    configure_logging(json_output=True, output=sys.stderr.buffer)
    return run(read_request() or {})

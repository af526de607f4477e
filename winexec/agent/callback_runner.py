"""The callback process: ``python -m winexec.agent.callback_runner --comm HOST:PORT --logs HOST:PORT``,
with the callback (path, kwargs, DAG file, bundle) as one JSON line on stdin.

Does for a ``Popen`` child what the forked child of the SDK's ``CallbackSubprocess`` does:
structured logs over the ``--logs`` socket, the supervisor's comms (Connections, Variables) over
``--comm``, the DAG bundle on ``sys.path``, then the SDK's own ``execute_callback``. Exit status
0 when the callback succeeded. Like :mod:`winexec.agent.runner` for tasks, it exists because
Windows cannot fork.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from winexec.agent.runner import connect, exit_now, log_to_supervisor


def _bundle_path(bundle: dict[str, Any], log: Any) -> str | None:
    """The DAG bundle's folder, on ``sys.path`` (as the SDK's forked child does it)."""
    if not bundle.get("name"):
        return None
    try:
        # the task runner's own bundle manager (it is core's, which the agent names only through the SDK)
        from airflow.sdk.execution_time.task_runner import DagBundlesManager

        found = DagBundlesManager().get_bundle(name=bundle["name"], version=bundle.get("version"))
        found.initialize()
        path = str(found.path)
    except Exception:
        log.warning("Failed to initialize DAG bundle for callback", bundle_name=bundle["name"], exc_info=True)
        return None
    if path not in sys.path:
        sys.path.append(path)
    return path


def main(argv: list[str] | None = None) -> NoReturn:
    comm, logs, _ = connect("winexec.agent.callback_runner", argv)
    spec = json.loads(sys.stdin.readline() or "{}")

    from winexec.agent import compat

    compat.install_runner()

    import structlog
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.callback_supervisor import CallbackToSupervisor, execute_callback
    from airflow.sdk.execution_time.comms import CommsDecoder, ToTask

    log_to_supervisor(logs)
    log = structlog.get_logger(logger_name="callback_runner")
    task_runner.SUPERVISOR_COMMS = CommsDecoder[ToTask, CallbackToSupervisor](log=log, socket=comm)  # type: ignore[assignment]

    code = 1
    try:
        ok, error = execute_callback(
            callback_path=str(spec.get("callback_path") or ""),
            callback_kwargs=dict(spec.get("callback_kwargs") or {}),
            dag_rel_path=str(spec.get("dag_rel_path") or ""),  # type: ignore[arg-type]
            bundle_path=_bundle_path(dict(spec.get("bundle_info") or {}), log),  # type: ignore[arg-type]
            log=log,
        )
        if not ok:
            log.error("Callback failed", error=error)
        code = 0 if ok else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    exit_now(code, comm, logs)


if __name__ == "__main__":
    main()

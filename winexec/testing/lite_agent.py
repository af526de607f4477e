"""The real agent around a tiny task process instead of a Task SDK run, for fault tests at scale.

Everything the executor talks to is the real :mod:`winexec.agent`: the protocol, the run's claim
on the host (duplicate refusal, slot admission), heartbeats, stop, deadlines,
containment of the process tree, run markers. Only the task differs: a few lines of Python
instead of the Task SDK (two interpreters each importing ``airflow.sdk``, several CPU-seconds on
a small machine), so hundreds of tasks fit in a test on two cores.

A host's interpreter wrapper runs ``python -m winexec.testing.lite_agent`` where the executor
asks for ``python -m winexec.agent`` (other modes, ``--status`` etc., are the real agent's). The
task appends one JSON line to ``$WINEXEC_FAULTS_LEDGER`` as its first action (so a test counts
every start of every try), flags that its work began, then sleeps for a time drawn from
``$WINEXEC_LITE_SECONDS`` (``"lo-hi"``, seeded by the task instance and try;
``$WINEXEC_LITE_SECONDS__<dag_id>`` for one DAG's tasks), or until the file
``$WINEXEC_LITE_RELEASE`` exists, whichever comes first (a test holds tasks as long as it needs).

With ``$WINEXEC_LITE_API`` set, the agent also tells Airflow's Execution API what the Task SDK's
supervisor would (the try started, then succeeded or failed), so a real scheduler sees its tasks
run and end; nothing else of a task's API traffic (no XCom, no heartbeats: runs stay short).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

from winexec.agent.main import AgentRun, InvalidWorkload, serve
from winexec.agent.main import main as agent_main
from winexec.protocol import ExitState

TASK = """
import json, os, sys, time
ti, try_number, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
entry = {"ti": ti, "try": try_number, "host": os.environ.get("COMPUTERNAME", "?"), "pid": os.getpid(),
         "time": time.time(), "seconds": seconds}
with open(os.environ["WINEXEC_FAULTS_LEDGER"], "a", encoding="utf-8") as f:
    f.write(json.dumps(entry) + "\\n")
running = os.environ.get("WINEXEC_RUNNING_FILE")
if running:
    open(running, "w").close()
release, end = os.environ.get("WINEXEC_LITE_RELEASE"), time.monotonic() + seconds
while time.monotonic() < end and not (release and os.path.exists(release)):
    time.sleep(min(0.2, max(0.0, end - time.monotonic())))
"""


class ExecutionAPI:
    """The two calls of the Execution API a task's supervisor makes first and last, with the same
    payloads (``TIEnterRunningPayload``, ``TISuccessStatePayload``/``TITerminalStatePayload``).
    Plain ``httpx``: the SDK's ``Client`` costs 1.5 CPU-seconds of imports per task, which for
    hundreds of tasks on two cores is most of a test's time. The server answers the start with
    the token for the try's later calls (``Refreshed-API-Token``), as it does the SDK's client."""

    def __init__(self, server: str, token: str) -> None:
        import httpx

        self.token = token
        self.http = httpx.Client(
            base_url=server, timeout=float(os.environ.get("WINEXEC_LITE_API_TIMEOUT", "60"))
        )

    def _patch(self, path: str, body: dict[str, Any]) -> None:
        import httpx
        import tenacity

        @tenacity.retry(
            retry=tenacity.retry_if_exception_type(httpx.TransportError)
            | tenacity.retry_if_exception(
                lambda e: isinstance(e, httpx.HTTPStatusError) and e.response.status_code >= 500
            ),
            stop=tenacity.stop_after_attempt(5),
            wait=tenacity.wait_random_exponential(min=0.5, max=5),
            reraise=True,
        )
        def call() -> None:
            r = self.http.patch(path, json=body, headers={"Authorization": f"Bearer {self.token}"})
            r.raise_for_status()
            self.token = r.headers.get("Refreshed-API-Token") or self.token

        call()

    def start(self, ti_id: str, pid: int) -> None:
        import getpass
        import socket

        body = {"state": "running", "hostname": socket.getfqdn(), "unixname": getpass.getuser(), "pid": pid}
        self._patch(f"task-instances/{ti_id}/run", {**body, "start_date": _now()})

    def finish(self, ti_id: str, state: str) -> None:
        body: dict[str, Any] = {"state": state, "end_date": _now(), "rendered_map_index": None}
        if state == "success":
            body.update(task_outlets=[], outlet_events=[])
        self._patch(f"task-instances/{ti_id}/state", body)


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat()


_TI_FIELDS = ("id", "dag_id", "task_id", "run_id", "map_index", "try_number", "queue")


def task_seconds(ti_id: str, try_number: int, spec: str) -> float:
    """How long the task of ``ti_id`` sleeps: uniform in ``spec`` ("lo-hi"), the same every time."""
    lo, _, hi = spec.partition("-")
    return random.Random(f"{ti_id}/{try_number}").uniform(float(lo), float(hi or lo))


class LiteRun(AgentRun):
    """An :class:`AgentRun` whose task is :data:`TASK` rather than a Task SDK run."""

    def parse_workload(self) -> Any:
        ti = self.start.workload.get("ti")
        if not isinstance(ti, dict) or not ti.get("id") or not isinstance(ti.get("try_number"), int):
            raise InvalidWorkload("invalid workload: missing 'ti'")
        return SimpleNamespace(**{k: ti.get(k) for k in _TI_FIELDS})

    def _api(self) -> ExecutionAPI | None:
        """The Execution API of a real Airflow's task, or ``None`` (fault tests)."""
        if not os.environ.get("WINEXEC_LITE_API"):
            return None
        return ExecutionAPI(self.start.server or "", self.token)

    def supervise(self, ti: Any) -> int:
        from winexec.agent.containment import Containment

        api = self._api()
        if api is not None:  # as the supervisor does first: QUEUED -> RUNNING (refused if it is not ours)
            api.start(ti.id, os.getpid())

        spec = os.environ.get(f"WINEXEC_LITE_SECONDS__{ti.dag_id}") or os.environ.get(
            "WINEXEC_LITE_SECONDS", "1"
        )
        seconds = task_seconds(str(ti.id), ti.try_number, spec)
        containment = Containment()
        argv = [sys.executable, "-c", TASK, str(ti.id), str(ti.try_number), f"{seconds:.3f}"]
        watchdog = self.watch()
        code: int | None = None
        try:
            if self.stop_state is None:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **containment.popen_kwargs())
                containment.adopt(proc)
                try:
                    self.on_launch(proc, containment)
                except RuntimeError:
                    pass  # a stop came first: killed below, reported as that stop
                else:
                    self.announce(proc.pid)
                    code = proc.wait()
        finally:
            self._done.set()
            watchdog.join(timeout=5)
            containment.kill()
        state: ExitState
        if self.stop_state is not None and code != 0:
            state, reason = self.stop_state, self.stop_reason
        elif code == 0:
            state, reason = "success", "task instance success"
        else:
            state, reason = "failed", f"task instance failed, exit code {code}"
        if api is not None:
            try:
                api.finish(ti.id, "success" if state == "success" else "failed")
            finally:
                api.http.close()
        if self.marker:
            with contextlib.suppress(OSError):
                self.marker.update(state=state, exit_code=code, finished=time.time())
        return self.exit(state, code, reason, ti_state="success" if state == "success" else "failed")


def make_workload(dag_id: str, task_id: str, run_id: str = "manual", try_number: int = 1) -> Any:
    """An ``ExecuteTask`` as the scheduler makes one, for a task no Airflow database knows of.

    Enough for the executor and for this agent; a Task SDK run would be refused by the API.
    """
    import uuid
    from pathlib import Path

    from airflow.executors.workloads.base import BundleInfo
    from airflow.executors.workloads.task import ExecuteTask, TaskInstanceDTO

    ti = TaskInstanceDTO(
        id=uuid.uuid4(),
        task_id=task_id,
        dag_id=dag_id,
        run_id=run_id,
        try_number=try_number,
        dag_version_id=uuid.uuid4(),
        pool_slots=1,
        priority_weight=1,
        queue="default",
    )
    return ExecuteTask(
        ti=ti,
        dag_rel_path=Path(f"{dag_id}.py"),
        bundle_info=BundleInfo(name="dags"),
        token="t",
        log_path=None,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        return agent_main(argv)
    return serve(LiteRun)


if __name__ == "__main__":
    sys.exit(main())

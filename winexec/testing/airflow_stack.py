"""A real, throw-away Airflow installation for tests and the demo.

In a temporary ``AIRFLOW_HOME``: ``airflow.cfg`` (SQLite, chosen executor, a dags folder, the
simple auth manager with everyone admin, a fixed free api-server port), ``airflow db migrate``,
``airflow dags reserialize``, then ``airflow api-server`` and optionally ``airflow scheduler``,
``airflow dag-processor`` and ``airflow triggerer`` (deferrable operators: triggers run there, on
this machine) as subprocesses in their own sessions, so :meth:`AirflowStack.stop` leaves nothing
behind. The REST API v2 is used with a JWT from ``GET /auth/token`` (allowed
because ``simple_auth_manager_all_admins`` is on).

:meth:`AirflowStack.queue_workload` does what the scheduler does for one task instance -- mark it
queued (bumping the try number) and build ``workloads.ExecuteTask`` with a token from the
api-server's signing key -- in a subprocess, so the caller never imports airflow-core with the
stack's configuration. That gives agent tests a real Execution API without a scheduler.

Run ``python -m winexec.testing.airflow_stack --dags DIR`` to keep a stack up by hand.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from winexec.sim.accounts import share

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StackError(RuntimeError):
    """The stack did not come up, or an API call failed; carries the relevant log tail."""


class AirflowStack:
    """One Airflow installation; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        dags_folder: str | os.PathLike[str] | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        executor: str = "LocalExecutor",
        scheduler: bool = False,
        dag_processor: bool = False,
        triggerer: bool = False,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 180.0,
        port: int | None = None,
        teams: Sequence[str] = (),
    ) -> None:
        self._own_home = home is None
        self.home = Path(home) if home else Path(tempfile.mkdtemp(prefix="winexec-airflow-"))
        self.dags_folder = Path(dags_folder) if dags_folder else self.home / "dags"
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.log_folder = self.home / "logs"
        # the hosts write task logs where the api-server reads them: a share every principal's
        # account may write (winexec.sim.accounts), as a log share is in production
        self.log_folder.mkdir(parents=True, exist_ok=True)
        share(self.log_folder, writable=True)
        self.executor = executor
        self.want_scheduler = scheduler
        self.want_dag_processor = dag_processor
        self.want_triggerer = triggerer
        self.extra_config = {k: dict(v) for k, v in (config or {}).items()}
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.teams = tuple(teams)  # multi-team mode: created before the bundles that name them
        self.port = port or free_port()  # a fixed one where a real host must reach it
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.execution_api_url = f"{self.api_url}/execution/"
        self.jwt_secret = secrets.token_urlsafe(32)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}
        self._token: str | None = None
        self._http: httpx.Client | None = None

    # -- configuration --------------------------------------------------------------------
    def config(self) -> dict[str, dict[str, Any]]:
        cfg: dict[str, dict[str, Any]] = {
            "core": {
                "dags_folder": str(self.dags_folder),
                "executor": self.executor,
                "load_examples": "False",
                "dags_are_paused_at_creation": "False",
                "auth_manager": SIMPLE_AUTH_MANAGER,
                "simple_auth_manager_all_admins": "True",
                "execution_api_server_url": self.execution_api_url,
                "parallelism": "8",
            },
            "database": {"sql_alchemy_conn": f"sqlite:///{self.home / 'airflow.db'}"},
            "api": {"host": "127.0.0.1", "port": str(self.port), "base_url": self.api_url, "workers": "1"},
            "api_auth": {"jwt_secret": self.jwt_secret},
            "logging": {"base_log_folder": str(self.log_folder), "logging_level": "INFO"},
            "scheduler": {"standalone_dag_processor": "True"},
            "dag_processor": {"refresh_interval": "5", "min_file_process_interval": "5"},
        }
        for section, values in self.extra_config.items():
            cfg.setdefault(section, {}).update(values)
        return cfg

    def env(self) -> dict[str, str]:
        """Environment for any process that should see this stack's configuration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_CONFIG"}
        env["AIRFLOW_HOME"] = str(self.home)
        env["AIRFLOW_CONFIG"] = str(self.home / "airflow.cfg")
        env.update(self.extra_env)
        return env

    def agent_env(self, home: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """Environment for ``python -m winexec.agent`` as a *host* sees it: not the stack's config.

        The host has its own (empty) ``AIRFLOW_HOME`` and knows only where DAGs and task logs go;
        the Execution API URL comes in the ``start`` message.
        """
        agent_home = Path(home) if home else self.home / "agent-home"
        agent_home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") or k == "AIRFLOW_HOME"}
        env.update(
            AIRFLOW_HOME=str(agent_home),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder),
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(self.log_folder),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
        )
        if "USERNAME" not in env:  # always set on Windows; the SDK's getuser() reads it
            env["USERNAME"] = getpass.getuser()
        return env

    def write_config(self) -> Path:
        path = self.home / "airflow.cfg"
        lines = []
        for section, values in self.config().items():
            lines.append(f"[{section}]")
            # a multi-line value goes on indented continuation lines, as configparser reads them
            lines.extend(f"{k} = " + str(v).replace("\n", "\n    ") for k, v in values.items())
            lines.append("")
        path.write_text("\n".join(lines))
        return path

    # -- processes ------------------------------------------------------------------------
    @property
    def airflow(self) -> str:
        return str(Path(sys.executable).with_name("airflow"))

    def cli(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``airflow ARGS`` against this stack and return its output."""
        res = subprocess.run(
            [self.airflow, *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode:
            raise StackError(f"airflow {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        return res

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = open(self.home / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [self.airflow, *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.home / f"{name}.log").read_text(errors="replace")[-chars:]
        return ""

    def process_ids(self) -> list[int]:
        """Every live process of the stack: the spawned ones and everything in their sessions."""
        import psutil

        pids: set[int] = set()
        for proc in self.procs.values():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(proc.pid)
                pids.add(p.pid)
                pids.update(c.pid for c in p.children(recursive=True))
        sessions = {proc.pid for proc in self.procs.values()}
        for pid in psutil.pids():
            with contextlib.suppress(OSError):
                if os.getsid(pid) in sessions:
                    pids.add(pid)
        return sorted(pids)

    def start(self) -> AirflowStack:
        t0 = time.monotonic()
        self.write_config()
        self.cli("db", "migrate")
        for team in self.teams:
            self.cli("teams", "create", team)
        self.timings["db_migrate"] = time.monotonic() - t0
        t1 = time.monotonic()
        self.cli("dags", "reserialize")
        self.timings["reserialize"] = time.monotonic() - t1
        t2 = time.monotonic()
        self._spawn("api-server", "api-server", "--port", str(self.port))
        if self.want_dag_processor:
            self._spawn("dag-processor", "dag-processor")
        if self.want_scheduler:
            self._spawn("scheduler", "scheduler")
        if self.want_triggerer:
            # no log server: it would take the fixed trigger_log_server_port of a shared machine
            self._spawn("triggerer", "triggerer", "--skip-serve-logs")
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.timings["api_server"] = time.monotonic() - t2
        self.timings["total"] = time.monotonic() - t0
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise StackError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=2)
                if r.status_code == 200:
                    return
            time.sleep(0.5)
        raise StackError(
            f"api-server not healthy after {self.startup_timeout:g} s:\n{self.log_tail('api-server')}"
        )

    def stop(self) -> None:
        """Stop every process of the stack (whole sessions) and remove a temporary home."""
        if self._http is not None:
            self._http.close()
            self._http = None
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            # The session may hold workers/children even when the leader is gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()
        if self._own_home and not os.environ.get("WINEXEC_KEEP_STACK"):
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST API v2 ----------------------------------------------------------------------
    def token(self) -> str:
        if self._token is None:
            r = httpx.get(f"{self.api_url}/auth/token", timeout=30)
            r.raise_for_status()
            self._token = str(r.json()["access_token"])
        return self._token

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=f"{self.api_url}/api/v2",
                headers={"Authorization": f"Bearer {self.token()}"},
                # a running task's log comes from its host through the api-server: on two busy
                # cores (the PostgreSQL module beside it) one page took over a minute once
                timeout=180,
            )
        return self._http

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            raise StackError(f"{method} {path}: {r.status_code} {r.text[:2000]}")
        return r.json() if r.content else None

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Create a manual dag run (its task instances exist right away); return its run id."""
        run_id = run_id or f"manual__{uuid.uuid4().hex[:12]}"
        self.api(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": None, "conf": dict(conf or {})},
        )
        return run_id

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 120) -> str:
        """Wait until the run is success/failed; return the state (raise on timeout)."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.dag_run(dag_id, run_id)["state"]
            if state in TERMINAL_RUN_STATES:
                return str(state)
            time.sleep(1)
        raise StackError(f"dag run {dag_id}/{run_id} still {state!r} after {timeout:g} s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"])

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def wait_for_ti(
        self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 60
    ) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.task_instance(dag_id, run_id, task_id)["state"]
            if state in states:
                return str(state)
            time.sleep(0.5)
        raise StackError(f"task {dag_id}/{run_id}/{task_id} still {state!r} after {timeout:g} s")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": "true", "stringify": "false"},
        )
        return entry["value"]

    def set_variable(self, key: str, value: str) -> None:
        with contextlib.suppress(StackError):
            self.api("DELETE", f"/variables/{key}")
        self.api("POST", "/variables", json={"key": key, "value": value})

    # -- what the scheduler does, for agent tests ------------------------------------------
    def queue_workload(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """Queue one task instance and return its ``ExecuteTask`` workload as JSON (token included)."""
        res = subprocess.run(
            [sys.executable, "-m", __name__, "--queue-workload", dag_id, run_id, task_id, str(map_index)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if res.returncode:
            raise StackError(f"queue_workload failed:\n{res.stderr[-3000:]}")
        return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _queue_workload(dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any]:
    """Inside the stack's configuration: queue the TI as the scheduler would; build the workload."""
    from airflow.api_fastapi.auth.tokens import JWTGenerator, get_signing_args
    from airflow.configuration import conf
    from airflow.executors import workloads
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    generator = JWTGenerator(
        valid_for=conf.getint("execution_api", "jwt_expiration_time"),
        audience=conf.get_mandatory_list_value("execution_api", "jwt_audience")[0],
        issuer=conf.get("api_auth", "jwt_issuer", fallback=None),
        **get_signing_args(make_secret_key_if_needed=False),
    )
    with create_session() as session:
        dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dr is None:
            raise LookupError(f"no dag run {dag_id}/{run_id}")
        if dr.state != DagRunState.RUNNING:
            dr.state = DagRunState.RUNNING
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        )
        if ti is None:
            raise LookupError(f"no task instance {dag_id}/{run_id}/{task_id}[{map_index}]")
        if ti.state not in (TaskInstanceState.QUEUED, TaskInstanceState.UP_FOR_RESCHEDULE):
            ti.try_number += 1
        ti.state = TaskInstanceState.QUEUED
        ti.queued_dttm = datetime.now(tz=timezone.utc)
        session.flush()
        workload = workloads.ExecuteTask.make(ti, generator=generator)
        return workload.model_dump(mode="json")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m winexec.testing.airflow_stack")
    parser.add_argument("--queue-workload", nargs=4, metavar=("DAG", "RUN", "TASK", "MAP_INDEX"))
    parser.add_argument("--dags", help="dags folder for a hand-run stack")
    parser.add_argument("--scheduler", action="store_true", help="also a scheduler, dag-processor, triggerer")
    args = parser.parse_args(argv)
    if args.queue_workload:
        dag_id, run_id, task_id, map_index = args.queue_workload
        print(json.dumps(_queue_workload(dag_id, run_id, task_id, int(map_index))))
        return 0
    with AirflowStack(
        args.dags, scheduler=args.scheduler, dag_processor=args.scheduler, triggerer=args.scheduler
    ) as stack:
        print(json.dumps({"api_url": stack.api_url, "home": str(stack.home), "timings": stack.timings}))
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())

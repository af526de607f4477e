"""``python -m winexec.agent``: run one task instance, speaking :mod:`winexec.protocol`.

Modes::

    python -m winexec.agent                  # stdin: one Start line, then it ends
    python -m winexec.agent --warm [--runners N]  # stdin: Start/Stop lines as they come (see warm.py)
    python -m winexec.agent --self-check     # one JSON line about this host
    python -m winexec.agent --status RUN_ID  # one JSON line: the run's marker and liveness
    python -m winexec.agent --stop RUN_ID [--wait S]  # stdin {"reason"}: stop that run
    python -m winexec.agent --runs           # one JSON line: the winexec runs active on this host
    python -m winexec.agent --read-log       # stdin {"path", "offset", "limit"}: one page of a task log
    python -m winexec.agent --test-connection  # stdin {"workload", "server"}: an Airflow connection test
    python -m winexec.agent --callback       # stdin {"workload", "server"}: a DAG's callback

In run mode stdout carries protocol lines only (``started``, ``heartbeat``, ``log``, and always a
final ``exit``); everything else goes to ``<spool>/<ti>.try<N>.<launch key>.log``. The token
arrives on stdin and lives only in this process's memory: never on a command line, in the
environment, or a log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from winexec.protocol import (
    START_LINE_TIMEOUT,
    Exit,
    ExitState,
    Heartbeat,
    ProtocolError,
    Start,
    Started,
    host_path,
    parse_line,
)

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from winexec.agent.containment import Containment
    from winexec.agent.coordinator import WinexecActivitySubprocess
    from winexec.agent.events import EventSink
    from winexec.agent.spool import Marker

#: Final TI states after which the run counts as a success of the task process.
_OK_TI_STATES = {"success", "skipped", "deferred", "up_for_reschedule", "awaiting_input"}
_TICK = 0.1


class InvalidWorkload(Exception):
    """The start message's workload is not one this agent can run."""


class _Lines(Protocol):
    def readline(self) -> bytes: ...


class AgentRun:
    """One launch: the Start message, the supervised task, and the watchdog around it."""

    def __init__(self, start: Start, sink: EventSink) -> None:
        self.start = start
        self.sink = sink
        self.token: str = str(start.workload.get("token") or "")
        self.marker: Marker | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.containment: Containment | None = None
        self.process: WinexecActivitySubprocess | None = None
        self.started_at: float | None = None
        self.executing_at: float | None = None  # when the task's execute() began
        self.running_file: Path | None = None
        self.stop_state: ExitState | None = None
        self.stop_reason = ""
        self._terminated_at: float | None = None
        self._killed = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.bundle_info: Any = None
        self.dag_rel_path = ""

    # -- helpers --------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """Never let the token out, whatever an exception message quotes."""
        return text.replace(self.token, "***") if self.token else text

    def log(self, line: str, level: str = "info") -> None:
        self.sink.log(self.scrub(line), level)

    def exit(self, state: ExitState, code: int | None, reason: str, **extra: Any) -> int:
        self.sink.emit(
            Exit(run_id=self.start.run_id, state=state, code=code, reason=self.scrub(reason), **extra)
        )
        self.sink.close()  # the exit line is always the last one
        return 0 if state == "success" else 1

    def request_stop(self, state: ExitState, reason: str) -> None:
        with self._lock:
            if self.stop_state is None:
                self.stop_state, self.stop_reason = state, reason
                self.log(f"stopping task: {reason}", "warning")

    # -- coordinator listener -------------------------------------------------------------
    def on_launch(self, proc: subprocess.Popen[bytes], containment: Containment) -> None:
        self.proc, self.containment = proc, containment
        if self.stop_state is not None:
            raise RuntimeError(f"not starting the task: {self.stop_reason}")

    def on_started(self, process: WinexecActivitySubprocess) -> None:
        self.process = process
        self.announce(process.pid)

    def announce(self, pid: int) -> None:
        """Tell the executor (and the run marker) that the task process runs."""
        from winexec.agent.hostinfo import delegation, host_name, user_name

        self.started_at = time.monotonic()
        delegated = bool(delegation()["delegated"])
        self.sink.emit(
            Started(
                run_id=self.start.run_id,
                pid=pid,
                host=host_name(),
                user=user_name(),
                delegated=delegated,
            )
        )
        if self.marker:
            with contextlib.suppress(OSError):
                self.marker.update(task_pid=pid, state="running")

    # -- threads --------------------------------------------------------------------------
    def _watch(self) -> None:
        s = self.start
        next_heartbeat = time.monotonic()
        next_poll = 0.0
        while not self._done.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                self.sink.emit(Heartbeat(run_id=s.run_id))
                next_heartbeat = now + max(s.heartbeat_interval, 0.1)
            if self.executing_at is None and self.running_file is not None and self.running_file.exists():
                self.executing_at = now  # execute() began: execution_timeout runs from here, as in Airflow
            if s.execution_timeout is not None and self.executing_at is not None:
                if now - self.executing_at > s.execution_timeout:
                    self.request_stop("timeout", f"execution_timeout of {s.execution_timeout:g} s exceeded")
            if now >= next_poll:
                next_poll = now + 0.5
                if self.marker and (why := self.marker.stop_requested()):
                    self.request_stop("stopped", why)
                if self.containment is not None and self.stop_state is None:
                    self.containment.snapshot()  # remember descendants that may be re-parented
            if self.stop_state is not None and self.containment is not None:
                if self._terminated_at is None:
                    self._terminated_at = now
                    self.containment.terminate()
                elif not self._killed and now - self._terminated_at >= s.grace:
                    self._killed = True
                    self.log(f"task did not stop within {s.grace:g} s grace; killing its process tree")
                    self.containment.kill()
            self._done.wait(_TICK)

    # -- the run --------------------------------------------------------------------------
    def run(self) -> int:
        """Parse the workload, claim this try on this host, then supervise the task."""
        try:
            ti = self.parse_workload()
        except InvalidWorkload as e:
            return self.exit("error", None, str(e))
        refused = self.claim(ti)
        if refused is not None:
            return refused
        return self.supervise(ti)

    def parse_workload(self) -> Any:
        """The workload's task instance, validated as the Task SDK will read it."""
        from airflow.sdk.api.datamodels._generated import BundleInfo, TaskInstance
        from pydantic import ValidationError

        wl = self.start.workload
        try:
            ti = TaskInstance.model_validate(wl["ti"])
            self.bundle_info = BundleInfo.model_validate(wl["bundle_info"])
            self.dag_rel_path = str(wl["dag_rel_path"])
        except ValidationError as e:
            where = ", ".join(".".join(map(str, err["loc"])) for err in e.errors())
            raise InvalidWorkload(f"invalid workload (fields: {where})") from None
        except (KeyError, TypeError) as e:
            raise InvalidWorkload(f"invalid workload: missing {e}") from None
        return ti

    def claim(self, ti: Any) -> int | None:
        """Claim this launch of the try on this host (once per launch key, within the host's slots).

        Returns the exit code if refused. A retried launch of one workload carries its launch key
        and is refused as ``duplicate``; a re-queue of the same try (reschedule, resumed deferral)
        has a new key and runs.

        From here on fd 1 is the run's diagnostics file: protocol lines go through the sink only.
        """
        from winexec.agent import spool

        try:
            self.marker, fresh = spool.claim(
                str(ti.id), ti.try_number, self.start.run_id, extra=_who(ti), launch_key=self.start.launch_key
            )
        except spool.SpoolError as e:
            return self.exit("error", None, str(e))
        except OSError as e:
            return self.exit("error", None, f"cannot create run marker: {e}")
        if not fresh:
            other = self.marker.data
            self.marker = None  # not ours: never touch it
            return self.exit(
                "duplicate",
                None,
                f"try {ti.try_number} of task instance {ti.id} (launch key "
                f"{other.get('launch_key', self.start.launch_key)!r}) was already started on this host "
                f"by run {other.get('run_id')!r} (state {other.get('state')!r})",
            )
        marker = self.marker
        slots = self.start.slots
        refusal: tuple[ExitState, str] | None = None
        try:
            weight = max(1, self.start.weight)
            if slots is not None and not spool.take_slot(marker, slots, spool.alive, weight=weight):
                need = f"; this task takes {weight}" if weight > 1 else ""
                refusal = ("full", f"all {slots} slot(s) of this host are taken by other winexec runs{need}")
        except OSError as e:
            refusal = ("error", f"cannot add this run's slot entry: {e}")
        if refusal is not None:
            marker.path.unlink(missing_ok=True)  # not started: a later launch of this try may claim it
            self.marker = None
            return self.exit(refusal[0], None, refusal[1])
        with contextlib.suppress(Exception):
            import psutil

            marker.update(agent_create_time=psutil.Process().create_time())
        self.running_file = marker.log_path.with_suffix(".running")
        self.running_file.unlink(missing_ok=True)
        self.own_process(marker)
        return None

    def own_process(self, marker: Marker) -> None:
        """This run has the agent process to itself: its diagnostics take fd 1, and the runner
        inherits where to flag ``execute()`` through the environment."""
        from winexec.agent.events import redirect_stdout

        redirect_stdout(marker.log_path)
        os.environ["WINEXEC_RUNNING_FILE"] = str(self.running_file)  # for the task process (runner)

    def route_queue(self, queue: str) -> None:
        """Make ``supervise_task`` pick winexec's coordinator for ``queue`` (SDK configuration)."""
        from airflow.sdk.execution_time.coordinator import reset_coordinator_manager

        from winexec.agent import coordinator

        os.environ.update(coordinator.coordinator_config(queue))
        reset_coordinator_manager()

    def watch(self) -> threading.Thread:
        """Start the watchdog (heartbeats, deadlines, stop requests)."""
        watchdog = threading.Thread(target=self._watch, name="winexec-watchdog", daemon=True)
        watchdog.start()
        return watchdog

    def supervise(self, ti: Any) -> int:
        """Run the task under the Task SDK's supervisor (this process is the supervisor)."""
        assert self.marker is not None
        self.configure_logging(self.marker.log_path)
        wl = self.start.workload

        from airflow.sdk.configuration import conf
        from airflow.sdk.execution_time.supervisor import supervise_task

        from winexec.agent import coordinator

        self.route_queue(ti.queue or "default")
        coordinator.set_listener(self)
        server = self.start.server or conf.get("core", "execution_api_server_url", fallback=None)

        watchdog = self.watch()
        code: int | None = None
        error: BaseException | None = None
        try:
            code = supervise_task(
                ti=ti,
                bundle_info=self.bundle_info,  # duck-typed, as in BaseExecutor
                dag_rel_path=self.dag_rel_path,
                token=self.token,
                server=server,
                log_path=None if wl.get("log_path") is None else host_path(wl["log_path"]),
                sentry_integration=str(wl.get("sentry_integration") or ""),
            )
        except Exception as e:
            error = e
            import traceback

            traceback.print_exc(file=sys.stdout)  # fd 1 is the run's diagnostics file by now
        finally:
            self._done.set()
            watchdog.join(timeout=5)
            coordinator.set_listener(None)
            if self.containment is not None:
                self.containment.kill()

        return self._finish(ti, server, code, error)

    def configure_logging(self, path: Path) -> None:
        _configure_agent_logging(path, self)

    def _finish(self, ti: Any, server: str | None, code: int | None, error: BaseException | None) -> int:
        process = self.process
        ti_state: str | None = None
        if process is not None and process._exit_code is not None:
            code = process._exit_code
            with contextlib.suppress(Exception):
                ti_state = str(getattr(process.final_state, "value", process.final_state))
        if error is not None and process is not None and ti_state not in _OK_TI_STATES:
            # The supervisor died between start and delivering the outcome: tell Airflow ourselves
            # (a 409 because it did get there after all is harmless).
            ti_state = self._report_failed(ti, server, process) or ti_state
        if error is not None:
            self.log(f"supervisor error: {type(error).__name__}: {error}", "error")

        state: ExitState
        if self.stop_state is not None and not (code == 0 and ti_state == "success"):
            state, reason = self.stop_state, self.stop_reason
        elif error is not None:
            state, reason = "error", f"{type(error).__name__}: {error}"
        elif ti_state in _OK_TI_STATES and code == 0:
            state, reason = "success", f"task instance {ti_state}"
        else:
            state, reason = "failed", f"task instance {ti_state}, exit code {code}"
        if self.marker:
            from winexec.agent.spool import release_slot

            with contextlib.suppress(OSError):
                self.marker.update(state=state, exit_code=code, ti_state=ti_state, finished=time.time())
            release_slot(self.marker)
        return self.exit(state, code, reason, ti_state=ti_state)

    def _report_failed(self, ti: Any, server: str | None, process: WinexecActivitySubprocess) -> str | None:
        from airflow.sdk.api.client import Client

        state = "up_for_retry" if getattr(process, "_should_retry", False) else "failed"
        try:
            client = Client(base_url=server or "", token=self.token)
            try:
                client.task_instances.finish(
                    id=ti.id, state=state, when=datetime.now(tz=timezone.utc), rendered_map_index=None
                )
            finally:
                client.close()
            return state
        except Exception as e:
            self.log(f"could not report the task as {state}: {type(e).__name__}: {e}", "error")
            return None


def _who(ti: Any) -> dict[str, Any]:
    """What ``--runs`` tells operators about a run: this computer, the task, the Windows user."""
    from winexec.agent.hostinfo import computer_name, user_name

    index = "" if ti.map_index in (None, -1) else f"[{ti.map_index}]"
    return {
        "computer": computer_name(),
        "task": f"{ti.dag_id}.{ti.task_id}{index} {ti.run_id}",
        "principal": user_name(),
    }


_FORWARDED_LEVELS = {"warning", "warn", "error", "critical", "exception", "fatal"}
_FORWARDED_KEYS = ("detail", "status_code", "failed_heartbeats", "exit_code", "pid", "error")


def _configure_agent_logging(path: Any, run: AgentRun) -> None:
    """SDK/supervisor logging goes to the run's diagnostics file, never to stdout.

    Warnings and errors of the supervisor (failed API heartbeats, "server says stop", kills) are
    also sent to the executor as ``log`` events, so it can tell why a task ended without
    fetching the host's files.
    """
    import structlog
    from airflow.sdk.log import configure_logging

    out = open(path, "ab")  # process lifetime
    configure_logging(json_output=True, output=out)

    def forward(logger: Any, method_name: str, event_dict: Any) -> Any:
        if method_name in _FORWARDED_LEVELS:
            with contextlib.suppress(Exception):
                extra = " ".join(f"{k}={event_dict[k]!r}" for k in _FORWARDED_KEYS if k in event_dict)
                text = f"{event_dict.get('logger', 'supervisor')}: {event_dict.get('event', '')} {extra}"
                run.log(text.strip()[:2000], "error" if method_name != "warning" else "warning")
        return event_dict

    cfg = structlog.get_config()
    structlog.configure(processors=[forward, *cfg["processors"]])


def _run(sink: EventSink, stdin: _Lines, run_class: type[AgentRun] = AgentRun) -> int:
    def no_start_line() -> None:
        reason = f"no start line within {START_LINE_TIMEOUT:g} s"
        sink.emit(Exit(run_id="", state="error", reason=reason))
        os._exit(2)

    timer = threading.Timer(START_LINE_TIMEOUT, no_start_line)
    timer.daemon = True
    timer.start()
    try:
        line = stdin.readline()
    finally:
        timer.cancel()
    try:
        msg = parse_line(line)
    except ProtocolError as e:
        # Never echo the line: it may hold the token.
        sink.emit(
            Exit(
                run_id="",
                state="error",
                reason=f"first stdin line is no protocol message ({type(e).__name__})",
            )
        )
        return 2
    if not isinstance(msg, Start):
        sink.emit(
            Exit(run_id="", state="error", reason=f"first stdin line must be 'start', got {msg.type!r}")
        )
        return 2
    run = run_class(msg, sink)
    try:
        return run.run()
    except Exception as e:  # last resort: the executor must always get an exit line
        return run.exit("error", None, f"agent error: {type(e).__name__}: {e}")


def _status(run_id: str) -> dict[str, Any]:
    from winexec.agent import spool

    m = spool.find(run_id)
    if m is None:
        return {"run_id": run_id, "found": False}
    d = m.data
    return {
        **d,
        "found": True,
        "agent_alive": spool.alive(d.get("agent_pid"), d.get("agent_create_time")),
        "task_alive": spool.alive(d.get("task_pid")),
    }


def _stop(run_id: str, wait: float, reason: str = "stop requested via --stop") -> dict[str, Any]:
    """Ask the run's agent to stop (it reports ``stopped``); kill leftovers if it is gone."""
    from winexec.agent import spool

    m = spool.find(run_id)
    if m is None:
        return {"run_id": run_id, "found": False, "stopped": False}
    if m.data.get("finished"):
        return {**_status(run_id), "stopped": True}
    m.request_stop(reason)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        st = _status(run_id)
        if st.get("finished") or not st["agent_alive"]:
            break
        time.sleep(0.2)
    st = _status(run_id)
    if st["task_alive"] and not st["agent_alive"]:
        import psutil

        with contextlib.suppress(psutil.Error):
            root = psutil.Process(int(st["task_pid"]))
            procs = [root, *root.children(recursive=True)]
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(procs, timeout=5)
        st = _status(run_id)
    done = bool(st.get("finished")) and not st["task_alive"]
    return {**st, "stopped": done or not (st["task_alive"] or st["agent_alive"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m winexec.agent", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--self-check", action="store_true", help="print one JSON line about this host")
    mode.add_argument("--status", metavar="RUN_ID", help="print the state of a run on this host")
    mode.add_argument("--stop", metavar="RUN_ID", help="stop a run on this host")
    mode.add_argument("--runs", action="store_true", help="print the winexec runs active on this host")
    mode.add_argument(
        "--read-log", action="store_true", help="print one page of a task log (request on stdin)"
    )
    mode.add_argument(
        "--test-connection",
        action="store_true",
        help="run an Airflow connection test here as this principal (request on stdin)",
    )
    mode.add_argument(
        "--callback",
        action="store_true",
        help="run a DAG's callback here as this principal (request on stdin)",
    )
    mode.add_argument(
        "--canary", action="store_true", help="try what a task needs here, as this principal (one JSON line)"
    )
    mode.add_argument(
        "--prepare-spool",
        action="store_true",
        help="as an administrator, once per host: create the run folder every principal shares",
    )
    parser.add_argument("--wait", type=float, default=30.0, help="seconds --stop waits for the run to end")
    args = parser.parse_args(argv)

    modes = (
        args.self_check,
        args.status,
        args.stop,
        args.runs,
        args.read_log,
        args.prepare_spool,
        args.canary,
        args.test_connection,
        args.callback,
    )
    if any(modes):
        if args.callback:
            from winexec.agent import callbacks

            out = callbacks.main()
        elif args.test_connection:
            from winexec.agent import conntest

            out = conntest.main()
        elif args.canary:
            from winexec.agent import canary

            out = canary.run()
        elif args.prepare_spool:
            from winexec.agent.spool import prepare_root

            out = {"spool": str(prepare_root())}
        elif args.self_check:
            from winexec.agent.hostinfo import self_check
            from winexec.agent.spool import usable_spool_dir

            out = self_check(usable_spool_dir())
        elif args.runs:
            from winexec.agent.hostlog import active_runs

            out = active_runs()
        elif args.read_log:
            from winexec.agent.hostlog import read_log, read_request

            out = read_log(read_request())
        elif args.status:
            out = _status(args.status)
        else:
            from winexec.agent.hostlog import read_request

            request = read_request() or {}
            out = _stop(args.stop, args.wait, str(request.get("reason") or "stop requested via --stop"))
        sys.stdout.write(json.dumps(out, ensure_ascii=True, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
        return 0
    return serve()


def serve(run_class: type[AgentRun] = AgentRun) -> int:
    """Run mode: protocol lines on stdout, the start message on stdin."""
    from winexec.agent.events import capture_stdout

    # CPython block-buffers stdout on a pipe (on Windows as anywhere): the task process and
    # anything it starts write their lines as they come, so a live log shows them live. (The
    # agent's own protocol lines are written unbuffered, straight to the file descriptor.)
    os.environ["PYTHONUNBUFFERED"] = "1"

    sink = capture_stdout()
    from winexec.agent import compat

    compat.install()
    from winexec.agent.events import LineReader

    return _run(sink, LineReader(sys.stdin.fileno()), run_class)

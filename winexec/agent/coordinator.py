"""A fork-free Task SDK coordinator: the task runner is a ``Popen`` child on loopback TCP.

This is the SDK's own ``SubprocessCoordinator`` machinery (servers, accept with the
process-tree ownership check, ``ActivitySubprocess`` supervision: API start/heartbeat/finish,
XCom/Variable/Connection requests, log forwarding) with three changes that make it work on
Windows:

* the child's stdout/stderr are pipes pumped into socketpairs by two threads -- the SDK passes
  a socket's ``fileno()`` as the child's stdout, which is no file descriptor on Windows, while
  the supervisor's selector needs sockets (Windows ``select`` handles sockets only);
* the child starts in :class:`~winexec.agent.containment.Containment` (Job Object / new session),
  stdin is ``DEVNULL`` (it must never see the protocol input with the token);
* ``kill`` stops the whole tree through the containment instead of ``os.killpg`` and the
  ``SIGINT -> SIGTERM -> SIGKILL`` escalation, which needs POSIX signals.

The agent selects it through the SDK's own ``[sdk] coordinators``/``queue_to_coordinator``
configuration and learns about the launch through :func:`set_listener` (one per thread: a warm
agent supervises several tasks, each in a thread of its own). A warm agent also installs a
:class:`Prestarter`: task runners started before their task, each used for one task only.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

import attrs
import structlog
from airflow.sdk.configuration import conf
from airflow.sdk.coordinators._subprocess import (
    PopenTracker,
    SubprocessCoordinator,
    _accept_connections,
    _PopenActivitySubprocess,
    _ResourceTracker,
    _start_server,
)
from airflow.sdk.execution_time.coordinator import BaseCoordinator

from winexec.agent import compat
from winexec.agent.containment import Containment

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from airflow.sdk.api.client import Client
    from airflow.sdk.api.datamodels._generated import BundleInfo, TaskInstance
    from structlog.typing import FilteringBoundLogger
    from typing_extensions import Self

log: FilteringBoundLogger = structlog.get_logger(logger_name="winexec.agent.coordinator")

#: Environment the agent sets to route the task's queue here; not passed on to the runner.
COORDINATOR_ENV = ("AIRFLOW__SDK__COORDINATORS", "AIRFLOW__SDK__QUEUE_TO_COORDINATOR")


class LaunchListener(Protocol):
    """What the agent wants to know about its one task process."""

    #: the file the runner touches as ``execute()`` begins (``None``: none)
    running_file: Path | None

    def on_launch(self, proc: subprocess.Popen[bytes], containment: Containment) -> None: ...

    def on_started(self, process: WinexecActivitySubprocess) -> None: ...


_local = threading.local()
_prestarter: Prestarter | None = None


def set_listener(listener: LaunchListener | None) -> None:
    """The listener of the task this thread supervises."""
    _local.listener = listener


def _listener() -> LaunchListener | None:
    return getattr(_local, "listener", None)


def set_prestarter(prestarter: Prestarter | None) -> None:
    global _prestarter
    _prestarter = prestarter


def coordinator_config(*queues: str) -> dict[str, str]:
    """Environment that makes ``supervise_task`` pick :class:`WinexecCoordinator` for ``queues``."""
    return {
        "AIRFLOW__SDK__COORDINATORS": json.dumps(
            {"winexec": {"classpath": f"{__name__}.WinexecCoordinator", "kwargs": {}}}
        ),
        "AIRFLOW__SDK__QUEUE_TO_COORDINATOR": json.dumps(dict.fromkeys(queues, "winexec")),
    }


def _pump(src: IO[bytes], dst: socket.socket) -> None:
    """Copy a pipe into a socket until EOF, then close both (EOF tells the supervisor)."""
    try:
        while chunk := src.read1(65536):  # type: ignore[attr-defined]
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        dst.close()
        src.close()


@attrs.define
class Spawned:
    """A child started by :func:`spawn` and connected back: its sockets, still tracked."""

    proc: subprocess.Popen[bytes]
    comm_server: socket.socket
    logs_server: socket.socket
    socks: dict[socket.socket, socket.socket]
    stdout: socket.socket
    stderr: socket.socket
    drained: dict[socket.socket, bytes]


def spawn(
    tracker: _ResourceTracker,
    command: Sequence[str],
    containment: Containment,
    startup_timeout: float,
    stdin: bytes | None = None,
    keep_stdin: bool = False,
) -> Spawned:
    """Start ``command --comm=... --logs=...`` in ``containment`` and wait until it connects back.

    Its stdout/stderr are pipes pumped into socketpairs (the supervisor's selector needs sockets);
    ``stdin`` is written to it and closed, or it gets ``DEVNULL`` (never the agent's own stdin,
    which held the token), or with ``keep_stdin`` a pipe left open for its task's settings
    (:class:`Prestarter`). Everything made here is tracked by ``tracker`` for the caller.
    """
    comm_server, logs_server = tracker.track(_start_server(), _start_server())
    stdout_r, stdout_w = tracker.track(*socket.socketpair())
    stderr_r, stderr_w = tracker.track(*socket.socketpair())
    env = {k: v for k, v in os.environ.items() if k not in COORDINATOR_ENV}
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = conf.get("logging", "logging_level", fallback="INFO")
    env["AIRFLOW__LOGGING__NAMESPACE_LEVELS"] = conf.get("logging", "namespace_levels", fallback="")
    proc = subprocess.Popen(
        [
            *command,
            "--comm={0[0]}:{0[1]}".format(comm_server.getsockname()),
            "--logs={0[0]}:{0[1]}".format(logs_server.getsockname()),
        ],
        stdin=subprocess.PIPE if stdin is not None or keep_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        **containment.popen_kwargs(),
    )
    tracker.track(proc)
    containment.adopt(proc)
    if stdin is not None:
        assert proc.stdin is not None
        with proc.stdin:
            proc.stdin.write(stdin)
    for src, dst, name in ((proc.stdout, stdout_w, "stdout"), (proc.stderr, stderr_w, "stderr")):
        tracker.untrack(dst)
        assert src is not None
        threading.Thread(target=_pump, args=(src, dst), name=f"winexec-{name}-pump", daemon=True).start()
    log.info("Starting subprocess", pid=proc.pid)
    socks, drained = _accept_connections(
        {"comm": comm_server, "logs": logs_server},
        {"stdout": stdout_r, "stderr": stderr_r},
        proc,
        max_wait=startup_timeout,
    )
    tracker.track(*socks.values())
    return Spawned(proc, comm_server, logs_server, socks, stdout_r, stderr_r, drained)


#: The runner's argument that makes it wait for its task's settings on stdin (:class:`Prestarter`).
WAIT_FOR_TASK = "--wait-for-task"


@attrs.define
class Ready:
    """A runner connected back and waiting for its task, with what owns it until then."""

    child: Spawned
    containment: Containment
    tracker: _ResourceTracker

    @classmethod
    def spawn(cls, command: Sequence[str], startup_timeout: float, prestart: bool = False) -> Ready:
        containment = Containment()
        tracker = _ResourceTracker(timeout=startup_timeout)
        try:
            child = spawn(tracker, command, containment, startup_timeout, keep_stdin=prestart)
        except BaseException:
            tracker.__exit__(None, None, None)
            containment.kill()
            containment.close()
            raise
        return cls(child, containment, tracker)

    def hand_over(self, running_file: Path | None) -> None:
        """Tell a pre-started runner what only its task decides (no secret: the task's start
        message comes over ``--comm`` from the supervisor, as for any runner)."""
        pipe = self.child.proc.stdin
        if pipe is None:
            return
        with pipe:
            pipe.write(json.dumps({"running_file": str(running_file or "")}).encode() + b"\n")

    def discard(self) -> None:
        self.tracker.__exit__(None, None, None)
        self.containment.kill()
        self.containment.close()


class Prestarter:
    """Keeps ``size`` task runners started ahead of their tasks (a warm agent's).

    Each has imported the Task SDK and connected back, and waits for its one task: the
    interpreter start and the SDK import (most of a trivial task's cost) leave the task's
    critical path. A runner serves one task and exits, so no task runs in a process another
    task has used. Taken runners are replaced at once, on a thread of their own.
    """

    def __init__(self, python: str, size: int, startup_timeout: float = 60.0) -> None:
        self.command = [python, "-m", "winexec.agent.runner", WAIT_FOR_TASK]
        self.size = size
        self.startup_timeout = startup_timeout
        self._ready: queue.SimpleQueue[Ready] = queue.SimpleQueue()
        self._wanted = threading.Semaphore(0)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="winexec-prestarter", daemon=True)
        for _ in range(size):
            self._wanted.release()
        if size > 0:
            self._thread.start()

    def _fill(self) -> None:
        while True:
            self._wanted.acquire()
            if self._closed.is_set():
                return
            try:
                ready = Ready.spawn(self.command, self.startup_timeout, prestart=True)
            except Exception as e:
                log.warning("could not pre-start a task runner", error=str(e))
                self._closed.wait(5.0)
                self._wanted.release()
                continue
            if self._closed.is_set():
                ready.discard()
                return
            self._ready.put(ready)

    def take(self) -> Ready:
        """A ready runner, or one started now when none is (a burst beyond ``size``)."""
        while True:
            try:
                ready = self._ready.get_nowait()
            except queue.Empty:
                return Ready.spawn(self.command, self.startup_timeout, prestart=True)
            self._wanted.release()
            if ready.child.proc.poll() is None:
                return ready
            ready.discard()  # died while waiting; try the next

    def close(self) -> None:
        self._closed.set()
        self._wanted.release()
        while True:
            try:
                self._ready.get_nowait().discard()
            except queue.Empty:
                return


class ContainedKill:
    """``kill`` for a supervised child in a :class:`Containment`: the SDK's ``kill`` signals one
    process group with POSIX signals; this stops the whole tree, politely first, on any OS."""

    containment: Containment
    pid: int
    _exit_code: int | None

    if TYPE_CHECKING:  # the SDK's, on the class this is mixed into (a stub here would shadow it)

        def _service_subprocess(
            self, max_wait_time: float, raise_on_timeout: bool = False, expect_signal: int | None = None
        ) -> Any: ...

    def kill(
        self,
        signal_to_send: signal.Signals = signal.SIGINT,
        escalation_delay: float = 5.0,
        force: bool = False,
    ) -> None:
        """Terminate the tree; kill it whole on a kill signal, or on ``force`` when it outlives the delay."""
        if self._exit_code is not None:
            return
        if not compat.is_kill_signal(signal_to_send):
            self.containment.terminate()
            if self._wait_for_exit(escalation_delay) is not None or not force:
                return
            log.warning("Process did not terminate in time; killing the tree", pid=self.pid)
        self.containment.kill()
        self._wait_for_exit(escalation_delay)

    def _wait_for_exit(self, delay: float) -> int | None:
        end = time.monotonic() + delay
        while (now := time.monotonic()) < end:
            code = self._service_subprocess(max_wait_time=end - now, raise_on_timeout=False)
            if code is not None:
                return code
        return self._exit_code


@attrs.define(kw_only=True)
class WinexecActivitySubprocess(ContainedKill, _PopenActivitySubprocess):
    """``ActivitySubprocess`` over TCP whose child lives in a :class:`Containment`."""

    containment: Containment = attrs.field(factory=Containment)

    @classmethod
    def start(  # type: ignore[override]
        cls,
        *,
        what: TaskInstance,
        dag_rel_path: str | os.PathLike[str],
        bundle_info: BundleInfo,
        logger: FilteringBoundLogger | None = None,
        sentry_integration: str = "",
        command: Sequence[str],
        subprocess_schema_version: str | None = None,
        startup_timeout: float = 10.0,
        **kwargs: Any,
    ) -> Self:
        ready = _prestarter.take() if _prestarter is not None else Ready.spawn(command, startup_timeout)
        containment, child = ready.containment, ready.child
        listener = _listener()
        try:
            with ready.tracker as tracker:
                if listener is not None:
                    listener.on_launch(child.proc, containment)  # may refuse: the task is stopping
                ready.hand_over(listener.running_file if listener is not None else None)
                comm_server, logs_server, socks = child.comm_server, child.logs_server, child.socks
                self = cls(
                    id=what.id,
                    pid=child.proc.pid,
                    process=PopenTracker(child.proc),
                    process_log=logger or structlog.get_logger(logger_name="task").bind(),
                    start_time=time.monotonic(),
                    stdin=socks[comm_server],
                    subprocess_schema_version=subprocess_schema_version,
                    comm_server=comm_server,
                    logs_server=logs_server,
                    containment=containment,
                    **kwargs,
                )
                self._register_pipe_readers(
                    *tracker.untrack(child.stdout, child.stderr, socks[comm_server], socks[logs_server]),
                    data=child.drained,
                )
                self._on_child_started(
                    ti=what,
                    dag_rel_path=dag_rel_path,
                    bundle_info=bundle_info,
                    sentry_integration=sentry_integration,
                )
                tracker.untrack(comm_server, logs_server, child.proc)
        except BaseException:
            containment.kill()
            raise
        return self


@attrs.define(kw_only=True)
class WinexecCoordinator(SubprocessCoordinator):
    """Runs the Python task runner (:mod:`winexec.agent.runner`) fork-free."""

    python: str = attrs.field(factory=lambda: sys.executable)
    task_startup_timeout: float = 60.0

    def _build_execute_task_command(self, *, what: TaskInstance) -> tuple[list[str], str | None]:
        # Same Task SDK on both ends of the socket: no schema migration.
        return [self.python, "-m", "winexec.agent.runner"], None

    def execute_task(  # type: ignore[override]
        self,
        *,
        what: TaskInstance,
        dag_rel_path: str | os.PathLike[str],
        bundle_info: BundleInfo,
        client: Client,
        logger: FilteringBoundLogger | None = None,
        sentry_integration: str = "",
        subprocess_logs_to_stdout: bool,
        **kwargs: Any,
    ) -> BaseCoordinator.ExecutionResult:
        command, schema = self._build_execute_task_command(what=what)
        process = WinexecActivitySubprocess.start(
            what=what,
            dag_rel_path=dag_rel_path,
            bundle_info=bundle_info,
            client=client,
            logger=logger,
            subprocess_logs_to_stdout=subprocess_logs_to_stdout,
            sentry_integration=sentry_integration,
            command=command,
            subprocess_schema_version=schema,
            startup_timeout=self.task_startup_timeout,
        )
        listener = _listener()
        if listener is not None:
            listener.on_started(process)
        try:
            exit_code = process.wait()
        finally:
            process.containment.kill()  # nothing the task started outlives it
            process.containment.close()
        return self.ExecutionResult(exit_code, process.final_state)

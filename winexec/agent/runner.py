"""The task process: ``python -m winexec.agent.runner --comm HOST:PORT --logs HOST:PORT``.

Does for a ``Popen`` child what the SDK's ``_fork_main`` does for a forked one -- structured logs
over the ``--logs`` socket, then ``task_runner.main()`` -- except that the supervisor channel is
the ``--comm`` TCP socket: ``task_runner.main`` builds its ``CommsDecoder`` on
``socket(fileno=0)``, and on Windows fd 0 is never a socket, so the decoder class it uses is
swapped for one bound to the connected socket. stdout/stderr are already pipes to the agent.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import socket
import sys
from typing import Any, NoReturn


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _bind_comms(sock: socket.socket) -> None:
    """Make ``task_runner.main``'s ``CommsDecoder[...]()`` use ``sock`` instead of fd 0."""
    import functools

    from airflow.sdk.execution_time import comms, task_runner

    class _BoundDecoder:
        def __class_getitem__(cls, item: Any) -> Any:
            return functools.partial(comms.CommsDecoder[item], socket=sock)  # type: ignore[misc]

    task_runner.CommsDecoder = _BoundDecoder  # type: ignore[misc,assignment]


def _flag_execution_start() -> None:
    """Touch ``WINEXEC_RUNNING_FILE`` as the task's ``execute()`` begins.

    Airflow times ``execution_timeout`` from ``execute()``, not from process start: the agent
    starts its clock when this file appears, so a slow start (imports, DAG parsing on a busy
    host) does not eat the task's budget.
    """
    flag = os.environ.get("WINEXEC_RUNNING_FILE")
    if not flag:
        return
    from airflow.sdk.execution_time import task_runner

    original = task_runner._execute_task

    def _execute_task(*args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(OSError):
            open(flag, "ab").close()
        return original(*args, **kwargs)

    task_runner._execute_task = _execute_task


def _route_sigbreak(sig: Any = signal) -> bool:
    """Make ``SIGBREAK`` (Windows' ``CTRL_BREAK_EVENT``) do whatever ``SIGTERM`` is set to do.

    The agent stops a task politely with ``CTRL_BREAK_EVENT`` to its process group, because
    Windows cannot send ``SIGTERM``; the Task SDK installs the handler that calls the operator's
    ``on_kill`` for ``SIGTERM`` only (``signal.signal(signal.SIGTERM, _on_term)`` in
    ``task_runner._run_task_and_map_outcome``, after a function-local ``import signal``). So
    ``sig.signal`` is wrapped: setting ``SIGTERM``'s handler sets ``SIGBREAK``'s too. A no-op
    (``False``) where there is no ``SIGBREAK``: POSIX is unchanged.
    """
    brk = getattr(sig, "SIGBREAK", None)
    if brk is None or getattr(sig.signal, "__winexec_sigbreak__", False):
        return False
    original = sig.signal

    def _signal(signalnum: Any, handler: Any) -> Any:
        previous = original(signalnum, handler)
        if signalnum == sig.SIGTERM:
            with contextlib.suppress(ValueError, OSError):
                original(brk, handler)
        return previous

    _signal.__winexec_sigbreak__ = True  # type: ignore[attr-defined]
    sig.signal = _signal
    return True


def _say_where() -> None:
    """First line of the task's log: which host and which Windows identity (and principal) ran it."""
    import structlog

    env = os.environ
    host = env.get("COMPUTERNAME") or socket.gethostname()
    user = env.get("USERNAME") or "?"
    who = f"{env['USERDOMAIN']}\\{user}" if env.get("USERDOMAIN") else user
    dns = env.get("USERDNSDOMAIN")
    upn = env.get("USERPRINCIPALNAME") or (f"{user}@{dns}" if dns else "")
    suffix = f" ({upn})" if upn else ""
    structlog.get_logger("winexec.agent").info(f"winexec: running on {host} as {who}{suffix}")


def connect(prog: str, argv: list[str] | None) -> tuple[socket.socket, socket.socket, bool]:
    """Parse ``--comm``/``--logs`` and connect both, first thing: the supervisor gives up on a
    child that is slow to connect, and the imports that follow take a while. The flag: whether
    to wait for the task's settings on stdin (a pre-started runner, ``--wait-for-task``)."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--comm", required=True, type=_address)
    parser.add_argument("--logs", required=True, type=_address)
    parser.add_argument("--wait-for-task", action="store_true")
    args = parser.parse_args(argv)
    return socket.create_connection(args.comm), socket.create_connection(args.logs), args.wait_for_task


def wait_for_task(comm: socket.socket, logs: socket.socket) -> None:
    """A pre-started runner: everything imported, block until the agent hands it a task.

    The one stdin line holds what only the task decides (where to flag ``execute()``); the
    task itself comes from the supervisor over ``--comm``. No line (the agent closed its pool
    or died): leave quietly, having run nothing.
    """
    import json

    line = sys.stdin.buffer.readline()
    if not line.strip():
        exit_now(0, comm, logs)
    settings = json.loads(line)
    if settings.get("running_file"):
        os.environ["WINEXEC_RUNNING_FILE"] = str(settings["running_file"])


def log_to_supervisor(logs: socket.socket) -> None:
    """Structured logs over the ``--logs`` socket, as the SDK's forked child sends them."""
    from airflow.sdk.log import configure_logging, reset_logging

    reset_logging()
    configure_logging(json_output=True, output=logs.makefile("wb", buffering=0), sending_to_supervisor=True)


def exit_now(code: int, *socks: socket.socket) -> NoReturn:
    """Flush, close the sockets, and leave at once, like ``_fork_main``: threads the task or
    callback started must not keep the process alive."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()
    os._exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    comm, logs, prestarted = connect("winexec.agent.runner", argv)

    from winexec.agent import compat

    compat.install_runner()

    from airflow.sdk.execution_time.supervisor import block_orm_access

    log_to_supervisor(logs)
    _bind_comms(comm)
    _route_sigbreak()

    code = 0
    try:
        from airflow.sdk.execution_time.task_runner import main as task_main

        if prestarted:
            wait_for_task(comm, logs)
        _say_where()
        _flag_execution_start()
        block_orm_access()
        task_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (1 if e.code else 0)
        if e.code and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback

        print("--- winexec runner: last chance exception handler ---", file=sys.stderr)
        traceback.print_exc()
        code = 126
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    exit_now(code, comm, logs)


if __name__ == "__main__":
    main()

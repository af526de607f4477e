"""``python -m winexec.agent --warm [--runners N]``: one agent for many tasks of one principal.

The executor keeps one warm agent per (host, principal), in a WinRS ``cmd`` shell opened as
that principal, and streams a ``start`` line to it per task (WinRM hands a ``cmd`` shell's
input to the running process as it arrives, which PowerShell 5.1's native commands never get).
Each run is an :class:`~winexec.agent.main.AgentRun` on a thread of its own: the same claim
(run marker, host slot), supervision, watchdog and ``exit`` line as a one-task agent, sharing
the process's stdout line by line (every event names its run). What the warm agent saves:

* no interpreter per task for the agent and supervisor: they are this one process;
* the task runner's interpreter start and Task SDK import: :class:`~winexec.agent.coordinator.
  Prestarter` keeps ``N`` runners started ahead, each of which runs one task only and exits.

End of input means no more tasks: the runs finish, then the agent exits. The token of each
task lives only in that run's memory, as in a one-task agent.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from winexec.agent.main import AgentRun, _configure_agent_logging
from winexec.protocol import Exit, Message, ProtocolError, Start, Stop, parse_line

if TYPE_CHECKING:
    from winexec.agent.events import EventSink, LineReader
    from winexec.agent.spool import Marker


_current = threading.local()  # .run: the WarmRun this thread supervises
_queues: set[str] = set()
_queues_lock = threading.Lock()


class RunSink:
    """One run's view of the shared stdout: closed after that run's ``exit`` line."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self.closed = False

    def emit(self, msg: Message) -> None:
        if not self.closed:
            self._sink.emit(msg)

    def close(self) -> None:
        self.closed = True

    def log(self, line: str, level: str = "info") -> None:
        from winexec.protocol import Log

        self.emit(Log(line=line, level=level))


class WarmRun(AgentRun):
    """A run that shares its agent process with the principal's other runs."""

    def own_process(self, marker: Marker) -> None:
        """Nothing process-wide: fd 1 and the environment belong to every run here (the runner
        learns where to flag ``execute()`` when it is handed its task)."""
        marker.update(warm_agent=True)

    def route_queue(self, queue: str) -> None:
        from airflow.sdk.execution_time.coordinator import reset_coordinator_manager

        from winexec.agent import coordinator

        with _queues_lock:
            if queue in _queues:
                return
            _queues.add(queue)
            os.environ.update(coordinator.coordinator_config(*sorted(_queues)))
            reset_coordinator_manager()

    def configure_logging(self, path: Path) -> None:
        _current.run = self  # the agent's one logging configuration forwards to this thread's run

    def run_guarded(self) -> None:
        try:
            self.run()
        except Exception as e:  # last resort: the executor must always get an exit line
            self.exit("error", None, f"agent error: {type(e).__name__}: {e}")
        finally:
            _current.run = None


class _Forwarder:
    """Stands in for one run in :func:`_configure_agent_logging`: whichever run the logging
    thread supervises gets the line."""

    def log(self, line: str, level: str = "info") -> None:
        run = getattr(_current, "run", None)
        if run is not None:
            run.log(line, level)


def serve_warm(sink: EventSink, stdin: LineReader, runners: int, diagnostics: Path) -> int:
    """Take ``start``/``stop`` lines until the input ends; then let the runs finish."""
    from winexec.agent import compat, coordinator

    compat.install_threaded_supervisor()
    _configure_agent_logging(diagnostics, _Forwarder())  # type: ignore[arg-type]
    prestarter = coordinator.Prestarter(sys.executable, runners)
    coordinator.set_prestarter(prestarter)
    runs: dict[str, WarmRun] = {}
    threads: dict[str, threading.Thread] = {}
    try:
        while line := stdin.readline():
            if not line.strip():
                continue
            try:
                msg = parse_line(line)
            except ProtocolError as e:  # never echo the line: it may hold a token
                sink.log(f"warm agent: ignored an input line, no protocol message ({type(e).__name__})")
                continue
            if isinstance(msg, Start):
                if msg.run_id in runs:  # a resent line: that run is under way (or just ended)
                    sink.log(f"warm agent: run {msg.run_id} was started here already; not again", "warning")
                    continue
                run = runs[msg.run_id] = WarmRun(msg, RunSink(sink))  # type: ignore[arg-type]
                t = threading.Thread(target=run.run_guarded, name=f"winexec-run-{msg.run_id}", daemon=True)
                threads[msg.run_id] = t
                t.start()
            elif isinstance(msg, Stop):
                target = runs.get(msg.run_id)
                if target is None:
                    sink.emit(Exit(run_id=msg.run_id, state="stopped", reason="no such run in this agent"))
                else:
                    target.request_stop("stopped", msg.reason or "stop requested")
            else:
                sink.log(f"warm agent: ignored a {msg.type!r} line")
            for run_id in [r for r, t in threads.items() if not t.is_alive()]:
                del threads[run_id], runs[run_id]  # its token leaves memory with it
    finally:
        for t in threads.values():
            t.join()
        prestarter.close()
        coordinator.set_prestarter(None)
    return 0


def cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m winexec.agent --warm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--warm", action="store_true", required=True)
    parser.add_argument("--runners", type=int, default=2, help="task runners kept started ahead of tasks")
    return main(max(0, parser.parse_args(argv).runners))


def main(runners: int) -> int:
    from winexec.agent import compat, spool
    from winexec.agent.events import LineReader, capture_stdout

    os.environ["PYTHONUNBUFFERED"] = "1"  # as for a one-task agent (main.serve)
    root = spool.usable_spool_dir()
    diagnostics = root / f"warm.{os.getpid()}.log" if root else Path(os.devnull)
    sink = capture_stdout(diagnostics)
    compat.install()
    return serve_warm(sink, LineReader(sys.stdin.fileno()), runners, diagnostics)

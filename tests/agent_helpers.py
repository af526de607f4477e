"""Drive ``python -m winexec.agent`` as the stand-in will: Start on stdin, events from stdout."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from winexec.protocol import Exit, Message, Start, parse_line
from winexec.sim.windowslike import SITE_DIR

REPO = Path(__file__).resolve().parents[1]
#: Windows-like mode for the agent tests: the stand-in's own ``sitecustomize``.
WINDOWSLIKE = SITE_DIR


def windowslike_env(base: dict[str, str], spool: Path) -> dict[str, str]:
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join([str(WINDOWSLIKE), str(REPO)])
    env["WINEXEC_SPOOL"] = str(spool)
    return env


class AgentProc:
    """One agent process; collects every stdout line and parses it as a protocol message."""

    def __init__(
        self, start: Start, env: dict[str, str], stderr_path: Path, task_log: Path | None = None
    ) -> None:
        self.task_log = task_log
        self.start_msg = start
        self.stderr_path = stderr_path
        self.spool = Path(env["WINEXEC_SPOOL"])
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "winexec.agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        self.raw: list[bytes] = []
        self.events: list[Message] = []
        self._q: queue.Queue[Message | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.env = env
        self.send(start)
        self.close_stdin()  # as Windows PowerShell 5.1 does once it has written the input

    def stop(self, reason: str) -> dict[str, object]:
        """``python -m winexec.agent --stop RUN_ID`` beside the agent, as the launcher does."""
        import json

        out = subprocess.run(
            [sys.executable, "-m", "winexec.agent", "--stop", self.start_msg.run_id, "--wait", "0"],
            input=json.dumps({"reason": reason}),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                msg = parse_line(line)
            except Exception:
                continue
            self.events.append(msg)
            self._q.put(msg)
        self._q.put(None)

    def send(self, msg: Message) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(msg.to_line().encode("ascii"))
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait_for(self, type_: str, timeout: float = 60) -> Message:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self._q.get(timeout=left)
            except queue.Empty:
                break
            if msg is None:
                raise AssertionError(f"agent ended before {type_!r}: {self.describe()}")
            if msg.type == type_:
                return msg
        raise AssertionError(f"no {type_!r} within {timeout:g} s: {self.describe()}")

    def finish(self, timeout: float = 90) -> Exit:
        ex = self.wait_for("exit", timeout)
        self.proc.wait(30)
        self._stderr.close()
        assert isinstance(ex, Exit)
        return ex

    def describe(self) -> str:
        """Last stdout lines, stderr and the run's diagnostics file: what a failing test needs."""
        parts = [b"".join(self.raw[-10:]).decode(errors="replace")]
        with contextlib.suppress(OSError):
            parts.append("--- stderr ---\n" + self.stderr_path.read_text(errors="replace")[-3000:])
        logs = [*self.spool.glob("*/*.log"), *([self.task_log] if self.task_log else [])]
        for log in logs:
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name} ---\n" + log.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()

    def of_type(self, type_: str) -> list[Any]:
        return [e for e in self.events if e.type == type_]


class WarmProc:
    """``python -m winexec.agent --warm``: start lines sent one by one while it runs, as the
    executor streams them into its WinRS shell; events collected per run."""

    def __init__(self, env: dict[str, str], stderr_path: Path, runners: int = 2) -> None:
        self.stderr_path = stderr_path
        self.spool = Path(env["WINEXEC_SPOOL"])
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "winexec.agent", "--warm", "--runners", str(runners)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        self.raw: list[bytes] = []
        self.events: list[Message] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.raw.append(line)
                with contextlib.suppress(Exception):
                    self.events.append(parse_line(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, msg: Message) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(msg.to_line().encode("ascii"))
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def of_run(self, run_id: str, type_: str | None = None) -> list[Any]:
        with self._cond:
            return [
                e for e in self.events if getattr(e, "run_id", None) == run_id and type_ in (None, e.type)
            ]

    def wait_for(self, run_id: str, type_: str, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (found := self.of_run(run_id, type_)):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.of_run(run_id, type_)):
                    raise AssertionError(f"no {type_!r} for {run_id} within {timeout:g} s: {self.describe()}")
                self._cond.wait(min(left, 0.5))
        return found[0]

    def describe(self) -> str:
        parts = [b"".join(self.raw[-15:]).decode(errors="replace")]
        with contextlib.suppress(OSError):
            parts.append("--- stderr ---\n" + self.stderr_path.read_text(errors="replace")[-3000:])
        for log in self.spool.glob("*/warm.*.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name} ---\n" + log.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()

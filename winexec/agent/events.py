"""The agent's real stdout carries protocol lines and nothing else.

:func:`capture_stdout` moves the process's fd 1 (and ``sys.stdout``) to a diagnostics file before
anything of the SDK is imported, keeping a private duplicate of the original stdout for
:class:`EventSink`. Anything the SDK, a library or a C extension prints lands in the file.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from winexec.protocol import Log, Message


class EventSink:
    """Thread-safe writer of whole protocol lines to one file descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.closed = False

    def emit(self, msg: Message) -> None:
        data = msg.to_line().encode("ascii")
        with self._lock:
            if self.closed:
                return
            view = memoryview(data)
            try:
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
            except OSError:  # the executor went away; keep running: its shell's idle timeout decides
                self.closed = True

    def close(self) -> None:
        """Drop anything emitted from now on (late threads after the ``exit`` line)."""
        with self._lock:
            self.closed = True

    def log(self, line: str, level: str = "info") -> None:
        self.emit(Log(line=line, level=level))


class LineReader:
    """Unbuffered line reader on a raw fd.

    ``sys.stdin.buffer`` holds a lock while blocked in ``readline``; a daemon thread sitting
    there makes interpreter shutdown abort. ``os.read`` holds none, and nothing is read ahead
    into a buffer another reader could miss.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""

    def readline(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                line, self._buf = self._buf, b""
                return line
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"


def capture_stdout(diagnostics: Path | None = None) -> EventSink:
    """Reserve the real stdout for protocol lines; send everything else to ``diagnostics``."""
    sys.stdout.flush()
    real = os.dup(1)
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        msvcrt.setmode(real, os.O_BINARY)  # type: ignore[attr-defined]
    target: BinaryIO = open(diagnostics or os.devnull, "ab")  # lives as long as the process
    os.dup2(target.fileno(), 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), encoding="utf-8", line_buffering=True)
    return EventSink(real)


def redirect_stdout(diagnostics: Path) -> None:
    """Point the already captured fd 1 at ``diagnostics`` (once the run's marker is known)."""
    sys.stdout.flush()
    with open(diagnostics, "ab") as f:
        os.dup2(f.fileno(), 1)

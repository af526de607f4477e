"""Native processes started by a shell: streamed stdout/stderr, queued stdin, whole-tree kill.

Every process gets its own session (``start_new_session``) so the stand-in can kill, freeze and
measure the whole tree the way a Windows Job Object lets WinRM do it. Descendants that escape
into a new session of their own are still found through psutil's parent links.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import IO

import psutil

from winexec.sim.accounts import Account

LineCallback = Callable[[str, str], None]  # (stream "stdout"/"stderr", text)
ChunkCallback = Callable[[str, bytes], None]
ExitCallback = Callable[[int], None]


class NativeProcess:
    """One child process and its reader/writer threads.

    ``mode="lines"`` (PSRP) calls ``on_output`` per line decoded with ``encoding``, without its
    newline, the way PowerShell's ``StreamReader.ReadLine`` turns a native command's output into
    strings (``\r``, ``\n`` and ``\r\n`` all end a line); ``mode="bytes"`` (WinRS cmd) passes raw
    chunks. stdin is always a pipe: Windows PowerShell redirects it on a remoting server whatever
    the input, and an empty input is an immediate EOF. ``on_exit`` runs after both output streams
    reached EOF, so it is always last. ``account``: the OS account it runs as.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        on_output: Callable[[str, object], None],
        on_exit: ExitCallback,
        mode: str = "lines",
        encoding: str = "utf-8",
        account: Account | None = None,
    ) -> None:
        self.argv = argv
        self.env = env
        self.mode = mode
        self._on_output = on_output
        self._on_exit = on_exit
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            # the logon's own account (accounts.py); None: the stand-in's own user
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=list(account.groups) if account else None,
        )
        self.pid = self.proc.pid
        self.encoding = encoding
        self.returncode: int | None = None
        self.killed = False
        self._stdin_q: queue.Queue[bytes | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._known: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            self._known[self.pid] = psutil.Process(self.pid)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        readers = [
            threading.Thread(target=self._read, args=("stdout", self.proc.stdout), daemon=True),
            threading.Thread(target=self._read, args=("stderr", self.proc.stderr), daemon=True),
        ]
        for t in readers:
            t.start()
        self._threads.extend(readers)
        if self.proc.stdin is not None:
            w = threading.Thread(target=self._write, daemon=True)
            w.start()
            self._threads.append(w)
        waiter = threading.Thread(target=self._wait, args=(readers,), daemon=True)
        waiter.start()
        self._threads.append(waiter)

    # -- io --------------------------------------------------------------------------------
    def _read(self, name: str, stream: IO[bytes]) -> None:
        try:
            if self.mode == "lines":
                for raw in iter(stream.readline, b""):
                    text = raw.decode(self.encoding, errors="replace")
                    text = text[:-1] if text.endswith("\n") else text
                    text = text[:-1] if text.endswith("\r") else text
                    for line in text.split("\r"):
                        self._on_output(name, line)
            else:
                while True:
                    chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                    if not chunk:
                        break
                    self._on_output(name, chunk)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _write(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while True:
                data = self._stdin_q.get()
                if data is None:
                    break
                stdin.write(data)
                stdin.flush()
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _wait(self, readers: list[threading.Thread]) -> None:
        for t in readers:
            t.join()
        code = self.proc.wait()
        self.returncode = code
        self._stdin_q.put(None)
        self._on_exit(code)

    def write(self, data: bytes) -> None:
        self._stdin_q.put(data)

    def close_stdin(self) -> None:
        self._stdin_q.put(None)

    @property
    def running(self) -> bool:
        return self.returncode is None

    # -- the tree --------------------------------------------------------------------------
    def tree(self, scan_group: bool = True) -> list[psutil.Process]:
        """The live processes of the tree (root first), remembering descendants seen before."""
        found: dict[int, psutil.Process] = {}
        for p in list(self._known.values()):
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    found[p.pid] = p
                    for c in p.children(recursive=True):
                        found[c.pid] = c
            except psutil.Error:
                continue
        if not scan_group:
            self._known.update(found)
            return list(found.values())
        with contextlib.suppress(OSError):
            for proc in psutil.process_iter():
                with contextlib.suppress(psutil.Error):
                    if proc.pid not in found and os.getpgid(proc.pid) == self.pid:
                        found[proc.pid] = proc
        self._known.update(found)
        return list(found.values())

    def signal_tree(self, sig: int) -> None:
        # The group signal reaches every member of the process group; known descendants that
        # left it are signalled one by one. No scan of the whole process table here: with a
        # thousand shells stopping at once that scan made teardown quadratic.
        members = self.tree(scan_group=False)
        with contextlib.suppress(OSError):
            os.killpg(self.pid, sig)
        for p in members:
            with contextlib.suppress(psutil.Error, OSError):
                p.send_signal(sig)

    def kill_live_tree(self) -> None:
        """Kill the process and its descendants as their parent PIDs link them now, children
        first: what a pipeline stop does on Windows (facts §4.1). A descendant whose parent
        already exited is not found and lives on, until its shell goes (``kill_tree``)."""
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            for p in [*reversed(root.children(recursive=True)), root]:
                with contextlib.suppress(psutil.Error, OSError):
                    p.send_signal(signal.SIGCONT)  # a stopped process must still die
                    p.kill()
        self.close_stdin()

    def kill_tree(self) -> None:
        """Kill every process of the tree (what closing a Job Object does)."""
        self.killed = True
        self.signal_tree(signal.SIGCONT)  # a stopped process must still die
        self.signal_tree(signal.SIGKILL)
        self.close_stdin()

    def freeze(self) -> None:
        self.signal_tree(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal_tree(signal.SIGCONT)

    def rss_bytes(self) -> int:
        total = 0
        for p in self.tree(scan_group=False):
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def join(self, timeout: float = 5.0) -> None:
        for t in self._threads:
            t.join(timeout)

"""Windows containment at the ctypes boundary, on any OS: flags, call order, failure paths, stop.

``containment.IS_WINDOWS`` is forced on, kernel32 is a fake that records every call, psutil's
``Process.resume`` (``NtResumeProcess``) writes into the same record, and so do the fake ``Popen``'s
``kill``/``send_signal``: one list shows the order of everything that touched the process. What
Windows itself does with these calls is for the real-host suite (``tests/windows/``).
"""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from winexec.agent import containment, runner
from winexec.agent.containment import Containment

JOB = 0x5A5A  # the job handle the fake CreateJobObjectW returns
PROC_HANDLE = 0x777  # Popen._handle
PID = 4242

Call = tuple[str, tuple[Any, ...]]


class FakeKernel32:
    """Any attribute is a kernel32 function that records ``(name, args)`` and succeeds."""

    def __init__(self, log: list[Call], fail: set[str]) -> None:
        self._log = log
        self._fail = fail

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> int:
            self._log.append((name, args))
            if name in self._fail:
                return 0  # FALSE / NULL
            return JOB if name == "CreateJobObjectW" else 1

        return call


class FakePopen:
    def __init__(self, log: list[Call], signal_error: bool = False) -> None:
        self.pid = PID
        self._handle = PROC_HANDLE
        self._log = log
        self._signal_error = signal_error

    def poll(self) -> int | None:
        return None

    def kill(self) -> None:
        self._log.append(("kill", ()))

    def terminate(self) -> None:
        self._log.append(("terminate", ()))

    def send_signal(self, sig: int) -> None:
        self._log.append(("send_signal", (sig,)))
        if self._signal_error:
            raise OSError(None, "GenerateConsoleCtrlEvent failed", None, 6)


class Host:
    """The fakes of one test: the shared call record, and which calls fail."""

    def __init__(self) -> None:
        self.log: list[Call] = []
        self.fail: set[str] = set()  # kernel32 function names, or "resume"

    def names(self) -> list[str]:
        return [name for name, _ in self.log]

    def args(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.log if n == name]

    def popen(self, **kw: Any) -> Any:
        return FakePopen(self.log, **kw)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Host:
    h = Host()

    class FakeProcess:
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def resume(self) -> None:
            h.log.append(("resume", (self.pid,)))
            if "resume" in h.fail:
                raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(containment, "IS_WINDOWS", True)
    monkeypatch.setattr(containment, "_load_kernel32", lambda: FakeKernel32(h.log, h.fail))
    monkeypatch.setattr(containment, "psutil", SimpleNamespace(Process=FakeProcess, Error=psutil.Error))
    return h


def _adopted(host: Host, **kw: Any) -> tuple[Containment, Any]:
    c = Containment()
    proc = host.popen(**kw)
    c.adopt(proc)
    host.log.clear()
    return c, proc


# -- (a) start flags ---------------------------------------------------------------------------
def test_windows_popen_is_suspended_in_a_new_process_group(host: Host) -> None:
    flags = Containment.popen_kwargs()["creationflags"]
    assert flags & 0x4, "CREATE_SUSPENDED"
    assert flags & 0x200, "CREATE_NEW_PROCESS_GROUP"
    assert flags == 0x204
    assert "start_new_session" not in Containment.popen_kwargs()


def test_posix_popen_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containment, "IS_WINDOWS", False)
    assert Containment.popen_kwargs() == {"start_new_session": True}


# -- (b) adopt: job, kill-on-close, assign, then resume ----------------------------------------
def test_adopt_assigns_to_a_kill_on_close_job_before_resuming(host: Host) -> None:
    c = Containment()
    c.adopt(host.popen())
    assert host.names() == [
        "CreateJobObjectW",
        "SetInformationJobObject",
        "AssignProcessToJobObject",
        "resume",
    ]
    assert host.names().index("resume") > host.names().index("AssignProcessToJobObject")

    ((handle, klass, info_ref, size),) = host.args("SetInformationJobObject")
    info = info_ref._obj  # ctypes.byref(info)
    assert handle == JOB
    assert klass == 9  # JobObjectExtendedLimitInformation
    assert size == ctypes.sizeof(info) == ctypes.sizeof(containment._EXTENDED_LIMIT)
    assert info.BasicLimitInformation.LimitFlags & 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    assert host.args("AssignProcessToJobObject") == [(JOB, PROC_HANDLE)]
    assert host.args("resume") == [(PID,)]
    assert c.pid == PID


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="x64 layout")
def test_extended_limit_information_has_the_x64_windows_layout() -> None:
    # JOBOBJECT_EXTENDED_LIMIT_INFORMATION is 144 bytes on x64; LimitFlags at 16, IoInfo at 64.
    assert ctypes.sizeof(containment._EXTENDED_LIMIT) == 144
    assert containment._BASIC_LIMIT.LimitFlags.offset == 16
    assert containment._EXTENDED_LIMIT.IoInfo.offset == 64


# -- (c) a failed start never lets the process run ---------------------------------------------
@pytest.mark.parametrize(
    ("failing", "expected"),
    [
        ("CreateJobObjectW", ["CreateJobObjectW", "kill"]),
        ("SetInformationJobObject", ["CreateJobObjectW", "SetInformationJobObject", "CloseHandle", "kill"]),
        (
            "AssignProcessToJobObject",
            [
                "CreateJobObjectW",
                "SetInformationJobObject",
                "AssignProcessToJobObject",
                "kill",
                "CloseHandle",
            ],
        ),
        (
            "resume",
            [
                "CreateJobObjectW",
                "SetInformationJobObject",
                "AssignProcessToJobObject",
                "resume",
                "kill",
                "CloseHandle",
            ],
        ),
    ],
)
def test_a_failed_start_kills_the_process_unresumed_and_closes_the_job(
    host: Host, failing: str, expected: list[str]
) -> None:
    host.fail.add(failing)
    c = Containment()
    with pytest.raises(OSError, match=failing if failing != "resume" else f"resume process {PID}"):
        c.adopt(host.popen())
    assert host.names() == expected
    if failing != "resume":
        assert "resume" not in host.names()
    if "CloseHandle" in expected:
        assert host.args("CloseHandle") == [(JOB,)]
    c.kill()
    c.close()  # the job is gone with the failed start: nothing more reaches kernel32
    assert host.names() == expected


# -- (d) stop politely, then kill the job ------------------------------------------------------
def test_terminate_sends_ctrl_break_to_the_group_and_leaves_the_job(host: Host) -> None:
    c, _ = _adopted(host)
    c.terminate()
    assert containment.CTRL_BREAK_EVENT == getattr(signal, "CTRL_BREAK_EVENT", 1) == 1
    assert host.log == [("send_signal", (1,))]
    assert "TerminateJobObject" not in host.names()


def test_kill_terminates_the_job_and_close_closes_it_once(host: Host) -> None:
    c, _ = _adopted(host)
    c.kill()
    assert host.log == [("TerminateJobObject", (JOB, 1))]
    c.close()
    c.close()
    assert host.args("CloseHandle") == [(JOB,)]
    assert "kill" not in host.names() and "terminate" not in host.names()


def test_a_closed_job_is_neither_closed_nor_terminated_again() -> None:
    log: list[Call] = []
    job = containment._JobObject(FakeKernel32(log, set()))  # the seam: the function table
    job.close()
    job.close()
    job.terminate()
    assert [n for n, _ in log] == ["CreateJobObjectW", "SetInformationJobObject", "CloseHandle"]


def test_terminate_that_cannot_reach_the_console_kills_the_job(host: Host) -> None:
    c, _ = _adopted(host, signal_error=True)
    c.terminate()
    assert host.names() == ["send_signal", "TerminateJobObject"]


def test_the_kernel32_error_names_the_call() -> None:
    err = containment._win_error("AssignProcessToJobObject")
    assert isinstance(err, OSError)
    assert "AssignProcessToJobObject failed" in str(err)


# -- (e) the runner turns SIGBREAK into the SDK's SIGTERM (on_kill) ----------------------------
class FakeSignalModule:
    SIGINT = 2
    SIGTERM = 15
    SIGBREAK = 21

    def __init__(self) -> None:
        self.installed: dict[int, Any] = {}

    def signal(self, signalnum: int, handler: Any) -> Any:
        previous = self.installed.get(signalnum)
        self.installed[signalnum] = handler
        return previous


def test_sigterm_handler_is_installed_for_sigbreak_too() -> None:
    sig = FakeSignalModule()
    assert runner._route_sigbreak(sig) is True

    def on_term(signum: int, frame: Any) -> None: ...

    sig.signal(sig.SIGTERM, on_term)  # what the SDK's task runner does
    assert sig.installed == {15: on_term, 21: on_term}
    sig.signal(sig.SIGINT, print)
    assert sig.installed[21] is on_term  # other signals are not mirrored
    assert runner._route_sigbreak(sig) is False  # wrapped once only


def test_the_sdks_own_import_of_signal_sees_the_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: dict[int, Any] = {}
    monkeypatch.setattr(signal, "SIGBREAK", 21, raising=False)
    monkeypatch.setattr(signal, "signal", lambda n, h: installed.__setitem__(n, h))  # nothing real
    assert runner._route_sigbreak() is True

    def sdk_like() -> Any:
        import signal as sdk_signal  # the SDK imports signal inside the function

        def _on_term(signum: int, frame: Any) -> None: ...

        sdk_signal.signal(sdk_signal.SIGTERM, _on_term)
        return _on_term

    handler = sdk_like()
    assert installed == {signal.SIGTERM: handler, 21: handler}


@pytest.mark.skipif(hasattr(signal, "SIGBREAK"), reason="POSIX only")
def test_no_sigbreak_no_routing() -> None:
    sig = SimpleNamespace(SIGTERM=15, signal=lambda n, h: None)
    original = sig.signal
    assert runner._route_sigbreak(sig) is False
    assert sig.signal is original
    real = signal.signal
    assert runner._route_sigbreak() is False
    assert signal.signal is real


def test_the_sdk_still_installs_on_kill_as_a_sigterm_handler_of_the_signal_module() -> None:
    # The routing relies on this shape: a function-local ``import signal`` and a call of
    # ``signal.signal(signal.SIGTERM, handler)`` -- a ``from signal import signal`` would bypass it.
    spec = importlib.util.find_spec("airflow.sdk.execution_time.task_runner")
    assert spec is not None and spec.origin
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "signal":
            pytest.fail(f"task_runner imports from signal at line {node.lineno}")
    installers = [
        fn
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef)
        and any(
            isinstance(call, ast.Call)
            and ast.unparse(call.func) == "signal.signal"
            and call.args
            and ast.unparse(call.args[0]) == "signal.SIGTERM"
            for call in ast.walk(fn)
        )
    ]
    assert installers, "task_runner no longer calls signal.signal(signal.SIGTERM, ...)"
    assert any("on_kill" in ast.unparse(fn) for fn in installers), (
        "its SIGTERM handler no longer calls on_kill"
    )


# -- (f) membership, as the canary asks it of a grandchild -------------------------------------
def test_contains_asks_is_process_in_job_of_the_tasks_own_job_and_closes_the_handle(host: Host) -> None:
    c, _ = _adopted(host)
    assert c.contains(5151) is False  # the fake leaves the BOOL at FALSE
    assert host.names() == ["OpenProcess", "IsProcessInJob", "CloseHandle"]
    assert host.args("OpenProcess") == [(0x1000, False, 5151)]  # PROCESS_QUERY_LIMITED_INFORMATION
    process, job, _result = host.args("IsProcessInJob")[0]
    assert job == JOB, "this job, not NULL (any job: WinRM's own holds every process of the shell)"
    assert host.args("CloseHandle") == [(process,)]


def test_contains_is_false_for_a_process_that_cannot_be_opened(host: Host) -> None:
    c, _ = _adopted(host)
    host.fail.add("OpenProcess")
    assert c.contains(5151) is False
    assert host.names() == ["OpenProcess"]


def test_contains_raises_when_windows_cannot_answer(host: Host) -> None:
    c, _ = _adopted(host)
    host.fail.add("IsProcessInJob")
    with pytest.raises(OSError, match="IsProcessInJob failed"):
        c.contains(5151)
    assert host.names() == ["OpenProcess", "IsProcessInJob", "CloseHandle"]

"""The JSON lines between the executor (scheduler side) and ``winexec.agent`` (Windows host side).

Both sides import this module and nothing else of each other. One JSON object per line, ASCII
only (``ensure_ascii``): Windows PowerShell 5.1 writes a native command's input in
``$OutputEncoding``, ASCII by default, so anything else must travel as ``\\uXXXX`` escapes.

Executor -> agent (the pipeline's whole input, i.e. the agent's stdin, which then ends):
  ``start``      the workload (token included) and the run's limits

Nothing else can reach the agent over stdin: 5.1 starts it only once the input has ended. A stop
is ``python -m winexec.agent --stop RUN_ID`` in another pipeline of the run's shell; an executor
gone for good is noticed by the host itself, which deletes an idle shell with its processes.

A warm agent (``python -m winexec.agent --warm``, one per host and principal in a WinRS ``cmd``
shell, whose input WinRM streams to the running process) reads its stdin for as long as it runs:

  ``start``      one per task, as above; several runs go on side by side
  ``stop``       stop that run
  end of input   take no more tasks: finish the runs, then exit

Agent -> executor (pipeline output, i.e. the agent's stdout):
  ``started``    the task process is running (pid, host, user, whether a TGT was delegated)
  ``heartbeat``  every ``heartbeat_interval`` seconds while the task runs
  ``log``        a diagnostic line from the agent itself (never the task's own log)
  ``exit``       the outcome; always the last line
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

PROTOCOL_VERSION = 1

#: How long the agent waits for its start line: a launch whose command reached the host but
#: whose start line never followed (the host went silent in between) leaves no agent waiting.
START_LINE_TIMEOUT = 120.0

#: Outcomes an ``exit`` event may carry. ``success``/``failed`` come from the task itself;
#: the rest say why the agent could not run it or stopped it.
ExitState = Literal["success", "failed", "timeout", "stopped", "duplicate", "full", "error"]


class ProtocolError(ValueError):
    """A line that is not a message of this protocol (wrong JSON, type or version)."""


@dataclass
class Message:
    type: ClassVar[str]

    def to_line(self) -> str:
        body = {"v": PROTOCOL_VERSION, "type": self.type, **asdict(self)}
        return json.dumps(body, ensure_ascii=True, separators=(",", ":")) + "\n"


# -- executor -> agent ---------------------------------------------------------------------
@dataclass
class Start(Message):
    type: ClassVar[str] = "start"
    #: ``workloads.ExecuteTask`` as JSON (``model_dump(mode="json")``); carries the task's token.
    workload: dict[str, Any]
    #: Unique per launch attempt; names the agent's run on the host (adoption, idempotence).
    run_id: str
    #: Names the accepted workload, the same for every launch attempt of it (a retried launch
    #: keeps it, a re-queue such as a sensor's reschedule or a resumed deferral gets a new one):
    #: the agent refuses a second start of (task instance, try, key) on its host. ``""``: the
    #: ``run_id`` (each launch its own key).
    launch_key: str = ""
    heartbeat_interval: float = 5.0
    #: Seconds; the agent enforces it from outside the task process. ``None``: no limit.
    execution_timeout: float | None = None
    #: Extra seconds past ``execution_timeout`` before the agent kills the tree.
    grace: float = 10.0
    #: Execution API base URL the task talks to (``.../execution/``). ``None``: the host's own
    #: ``[core] execution_api_server_url``.
    server: str | None = None
    #: The host's slot count in ``[winexec] hosts``: the agent refuses (``full``) to be run
    #: number ``slots + 1`` on its host, which holds across schedulers sharing the pool.
    #: ``None``: no limit.
    slots: int | None = None
    #: How many of those slots this task takes (``pool_slots``, or ``executor_config``'s).
    weight: int = 1

    def __repr__(self) -> str:  # never show the token
        return f"Start(run_id={self.run_id!r}, ti={self.workload.get('ti', {}).get('id')!r})"


@dataclass
class Stop(Message):
    type: ClassVar[str] = "stop"
    run_id: str
    reason: str = ""


# -- agent -> executor ---------------------------------------------------------------------
@dataclass
class Started(Message):
    type: ClassVar[str] = "started"
    run_id: str
    pid: int
    host: str
    user: str
    delegated: bool
    time: float = field(default_factory=time.time)


@dataclass
class Heartbeat(Message):
    type: ClassVar[str] = "heartbeat"
    run_id: str
    time: float = field(default_factory=time.time)


@dataclass
class Log(Message):
    type: ClassVar[str] = "log"
    line: str
    level: str = "info"


@dataclass
class Exit(Message):
    type: ClassVar[str] = "exit"
    run_id: str
    state: ExitState
    code: int | None = None
    reason: str = ""
    time: float = field(default_factory=time.time)
    #: The task instance's final state as the Task SDK supervisor saw it (``success``,
    #: ``failed``, ``up_for_retry``, ``deferred``, ...); ``None`` if the task never ran.
    ti_state: str | None = None


MESSAGES: dict[str, type[Message]] = {m.type: m for m in (Start, Stop, Started, Heartbeat, Log, Exit)}


def parse_line(line: str | bytes) -> Message:
    """Parse one line into its message; raise :class:`ProtocolError` on anything else."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"not a JSON line: {str(line)[:80]!r}") from e
    if not isinstance(obj, dict):
        raise ProtocolError("protocol line is not a JSON object")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {obj.get('v')!r}, this side speaks {PROTOCOL_VERSION}")
    cls = MESSAGES.get(obj.get("type", ""))
    if cls is None:
        raise ProtocolError(f"unknown message type {obj.get('type')!r}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in obj.items() if k in names})
    except TypeError as e:
        raise ProtocolError(f"bad {cls.type!r} message: {e}") from e


# -- file names on the host ----------------------------------------------------------------
#: Characters no NTFS name may hold, plus ``%`` (the escape itself, so the mapping is injective).
_HOST_ESCAPED = frozenset('<>:"|?*\\%' + "".join(map(chr, range(32))))
#: Win32 device names, reserved in every directory, with any extension too (``nul.txt``).
_HOST_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{d}{n}" for d in ("COM", "LPT") for n in "123456789\xb9\xb2\xb3"]
)


def _host_name(name: str) -> str:
    if name in ("", ".", ".."):
        return name  # path syntax, no name (hostlog refuses ``..`` before mapping)
    out = "".join(f"%{ord(c):02X}" if c in _HOST_ESCAPED else c for c in name)
    if out[-1] in ". ":
        out = f"{out[:-1]}%{ord(out[-1]):02X}"
    if out.partition(".")[0].upper() in _HOST_DEVICES:
        out = f"%{ord(out[0]):02X}{out[1:]}"
    return out


def host_path(relative: str) -> str:
    """``relative`` (``/``-separated) with every component a valid NTFS name; injective.

    Airflow's log path (``.../run_id=scheduled__2026-01-01T00:00:00+00:00/...``) holds ``:``,
    which Windows refuses in a name. Each character NTFS refuses, ``%`` itself, a trailing dot or
    space and the first letter of a device name (``CON`` -> ``%43ON``) become ``%XX``. The agent
    writes and reads host files under this name; the scheduler keeps Airflow's path and asks with
    it (the agent maps it again), so nobody ever needs the reverse.
    """
    return "/".join(_host_name(part) for part in relative.split("/"))

"""How the scheduler side reaches Windows hosts: WS-Man and PSRP, with nothing of Airflow in it.

Dependencies run one way: :mod:`.session` (one task's shell and agent) uses :mod:`.channel`
(short agent commands in a shell), which uses :mod:`.wsman` (the one connection builder); all
three raise the classes of :mod:`.errors`. The executor receives a :class:`Transport`
(:class:`PsrpTransport` in production), so its unit tests pass a fake instead of patching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from winexec.transport.channel import HostChannel, QuotasUnreadable, log_pages, open_channel
from winexec.transport.errors import (
    AgentFailure,
    AuthDenied,
    ClockSkew,
    FaultCode,
    HostFull,
    HostUnreachable,
    LaunchAmbiguous,
    LaunchError,
    NoAgent,
    NoShell,
    PythonMissing,
    ShellGone,
    TicketFailure,
    WorkloadTooLarge,
    classify,
    python_missing_reason,
)
from winexec.transport.session import MAX_START_BYTES, PollResult, TaskSession, open_session, reattach_session
from winexec.transport.wsman import MESSAGE_LOGGERS, CredentialStore, shell_id_for

__all__ = [
    "MAX_START_BYTES",
    "MESSAGE_LOGGERS",
    "AgentFailure",
    "AuthDenied",
    "ClockSkew",
    "CredentialStore",
    "FaultCode",
    "HostChannel",
    "HostFull",
    "HostUnreachable",
    "LaunchAmbiguous",
    "LaunchError",
    "NoAgent",
    "NoShell",
    "PollResult",
    "PsrpTransport",
    "PythonMissing",
    "QuotasUnreadable",
    "ShellGone",
    "TaskSession",
    "TicketFailure",
    "Transport",
    "WorkloadTooLarge",
    "classify",
    "log_pages",
    "open_channel",
    "open_session",
    "python_missing_reason",
    "reattach_session",
    "shell_id_for",
]


class Transport(Protocol):
    """How the executor reaches its hosts. Each call takes the arguments of the module function
    of its name."""

    @property
    def open_session(self) -> Callable[..., Any]: ...  # as open_session(): a TaskSession, or alike
    @property
    def reattach_session(self) -> Callable[..., TaskSession]: ...  # as reattach_session()
    @property
    def open_channel(self) -> Callable[..., HostChannel]: ...  # as open_channel()


class PsrpTransport:
    """Each task in a WinRM shell of its own over PSRP."""

    open_session = staticmethod(open_session)
    reattach_session = staticmethod(reattach_session)
    open_channel = staticmethod(open_channel)

"""The transport's error tree, and the one place lower-level errors are mapped onto it.

Callers decide with ``isinstance`` on these classes (``transient`` and ``host_fault`` say what
a retry should do); ``kind`` is the metric tag only. Every exception from pypsrp, requests,
urllib3, spnego, gssapi or the ticket store goes through :func:`classify` once, where it is
first caught.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

from winexec.config import HostSpec

FailureKind = Literal[
    "unreachable",
    "full",
    "auth",
    "clock_skew",
    "python_missing",
    "ticket",
    "agent",
    "protocol",
    "shell_gone",
    "ambiguous",
]


class FaultCode(IntEnum):
    """The WS-Man fault codes (``WSManFault/@Code``, HRESULTs as unsigned ints) winexec acts on."""

    #: ERROR_WSMAN_INVALID_SELECTORS on a shell: it no longer exists, nor the agent in it
    SHELL_NOT_FOUND = 0x8033805B
    #: ERROR_WINRS_SHELL_DISCONNECTED: the shell is disconnected already (a Disconnect is moot)
    SHELL_DISCONNECTED = 0x803381C4


#: ERROR_WSMAN_QUOTA_*: the host is at a WinRM quota; try another host, not a task failure. The
#: WinRS quotas, the endpoint's own (``*_PPQ``) and ERROR_WSMAN_QUOTA_LIMIT, as wsmerror.h has
#: them (the codes PowerShell's own ``CimChildJobBase.IsWsManQuotaReached`` checks).
QUOTA_FAULT_CODES = (
    frozenset(range(0x803381A4, 0x803381B3)) | frozenset(range(0x803381E4, 0x803381EB)) | {0x8033803F}
)


class LaunchError(Exception):
    """Why a task could not be started or kept running on a host.

    ``transient``: another attempt may succeed. ``host_fault``: the host is to blame (count it
    against the host's circuit and retry elsewhere). ``kind`` tags the failure in metrics.
    """

    kind: FailureKind = "agent"
    transient: bool = False
    host_fault: bool = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HostUnreachable(LaunchError):
    kind = "unreachable"
    transient = True
    host_fault = True


class HostFull(LaunchError):
    kind = "full"
    transient = True
    host_fault = False


class AuthDenied(LaunchError):
    kind = "auth"


class ClockSkew(LaunchError):
    """The host's clock is too far from the KDC's: every Kerberos logon to it fails until fixed.

    A fault of that host (its circuit counts it) that another host does not have, so the launch
    is retried elsewhere; it never heals by retrying the same host soon.
    """

    kind = "clock_skew"
    transient = True
    host_fault = True


class PythonMissing(LaunchError):
    kind = "python_missing"


class TicketFailure(LaunchError):
    kind = "ticket"

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


class AgentFailure(LaunchError):
    kind = "agent"


class NoShell(AgentFailure):
    """The host answered and has no shell of that run (it ended, or was never there)."""


class NoAgent(AgentFailure):
    """The run's shell is there, but no pipeline runs in it any more."""


class WorkloadTooLarge(LaunchError):
    kind = "protocol"


class ShellGone(LaunchError):
    """The run's WinRM shell no longer exists on the host (reboot, shell closed): its agent and
    task process died with it. Definitive for that run; nothing to retry or wait for."""

    kind = "shell_gone"


class LaunchAmbiguous(LaunchError):
    """The agent's command reached the host, then the host went silent: nobody can tell whether
    the task started. Not retried anywhere, because a second launch could run the try twice; the
    possibly waiting pipeline ends with its shell, which the host deletes once idle."""

    kind = "ambiguous"
    host_fault = True


def classify(exc: BaseException, host: HostSpec, principal: str) -> LaunchError:
    """Map an exception from pypsrp/requests/spnego/gssapi/tickets onto a :class:`LaunchError`."""
    if isinstance(exc, LaunchError):
        return exc
    import requests
    from gssapi.raw.exceptions import ExpiredContextError
    from pypsrp.exceptions import AuthenticationError, WinRMTransportError, WSManFaultError

    from winexec.tickets import TicketError, is_transient

    where = f"{host.name} ({host.connect_address}:{host.port})"
    text = str(exc)
    if isinstance(exc, TicketError):
        return TicketFailure(f"no Kerberos ticket: {exc}", transient=is_transient(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        return HostUnreachable(
            f"TLS to {where} failed: {text}; check [winexec] cert_validation (a CA bundle path) "
            "and that the host's certificate names the host"
        )
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, OSError)):
        return HostUnreachable(f"cannot reach WinRM on {where}: {type(exc).__name__}: {text[:300]}")
    if isinstance(exc, AuthenticationError) or (isinstance(exc, WinRMTransportError) and exc.code == 401):
        return AuthDenied(
            f"{where} refused {principal} (HTTP 401): check that {principal} may use WinRM on the "
            f"host (Remote Management Users), that the SPN HTTP/{host.name} is registered, and "
            "that the principal's keytab is current"
        )
    if isinstance(exc, WSManFaultError):
        code = exc.code if isinstance(exc.code, int) else -1
        if code == FaultCode.SHELL_NOT_FOUND:
            return ShellGone(
                f"the WinRM shell of this run is gone from {host.name} (the host rebooted or the shell "
                "was closed), and the task's processes with it"
            )
        if code in QUOTA_FAULT_CODES:
            return HostFull(f"{where} is at a WinRM quota: {exc.reason}")
        return HostUnreachable(f"WS-Management fault from {where}: {exc.reason or text}")
    if isinstance(exc, WinRMTransportError):
        return HostUnreachable(f"bad HTTP response from {where}: {exc.code}")
    if isinstance(exc, ExpiredContextError):  # from a wrap/unwrap of a message
        return TicketFailure(
            f"the Kerberos context of {principal} with {host.name} expired (its ticket's end)", transient=True
        )
    spnego_error = _spnego_error(exc, host, principal)
    if spnego_error is not None:
        return spnego_error
    return AgentFailure(f"unexpected error talking to {where}: {type(exc).__name__}: {text[:300]}")


def _spnego_error(exc: BaseException, host: HostSpec, principal: str) -> LaunchError | None:
    """A failed Kerberos logon: spnego raises one class for all of them, and only the Kerberos
    library's own message (its minor status, as text) tells which it was."""
    import spnego.exceptions

    if not isinstance(exc, spnego.exceptions.SpnegoError):
        return None
    text = str(exc)
    low = text.lower()
    if "cannot contact any kdc" in low or "cannot find kdc" in low or ("kdc" in low and "reach" in low):
        return TicketFailure(f"Kerberos: {text}", transient=True)
    if "ticket expired" in low or "context has expired" in low:
        return TicketFailure(
            f"the Kerberos ticket of {principal} for {host.name} expired, no fresh one was had: {text[:200]}",
            transient=True,
        )
    if "clock skew" in low:
        return ClockSkew(
            f"the clock of {host.name} differs from the KDC's by more than the allowed skew (Kerberos: "
            "clock skew too great), so no one can log on to it: sync its time with the domain "
            "(w32tm /resync); other hosts are tried meanwhile"
        )
    if "not found in kerberos database" in low and "server" in low:
        # the SPN of this host is missing: another host may be fine
        return HostUnreachable(f"Kerberos has no service principal HTTP/{host.name}: register the SPN")
    return AuthDenied(f"Kerberos authentication of {principal} to {host.name} failed: {text[:300]}")


def never_sent(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection that never opened: its request surely did not reach the host."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    seen: BaseException | None = exc
    while seen is not None:
        reason = getattr(seen.args[0], "reason", None) if seen.args else None  # urllib3's MaxRetryError
        for e in (seen, reason):
            if isinstance(e, (ConnectionRefusedError, NewConnectionError, ConnectTimeoutError)):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def python_missing_reason(errors: list[str], host: HostSpec, python: str) -> str | None:
    """The fix message when PowerShell could not find the configured interpreter (its
    CommandNotFoundException, which reaches us only as error-record text)."""
    text = " ".join(errors)
    if "is not recognized" in text or "CommandNotFound" in text or "not recognized as the name" in text:
        return (
            f"{python!r} is not found on {host.name}: install Python with winexec there, "
            "or set [winexec] python to the interpreter's full path"
        )
    return None

"""Short agent commands on a host over the tasks' own channel: probes, self-checks, log pages.

``airflow winexec hosts/check`` and ``get_task_log`` need answers from a host, and they must come
the way tasks do -- a WinRM shell opened as a Kerberos principal from its own ccache, with the
same transport settings -- so a passing check means a task would get through too. One
:class:`HostChannel` is one shell; each :meth:`HostChannel.agent` call is one PSRP pipeline running
the fixed ``<python> -m winexec.agent <mode>`` with an optional JSON request on stdin (never on
the command line). Transport only: nothing here knows Airflow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from winexec.config import HostSpec, Settings
from winexec.transport import wsman
from winexec.transport.errors import AgentFailure, PythonMissing, classify, python_missing_reason
from winexec.transport.wsman import CredentialStore

#: The agent modes a channel may run (a fixed list: no caller-chosen arguments reach the host).
MODES = frozenset(
    {
        "--self-check",
        "--canary",
        "--runs",
        "--read-log",
        "--status",
        "--stop",
        "--test-connection",
        "--callback",
    }
)


#: The WinRM quotas that bound what a host accepts from the pool (facts §7).
QUOTA_NAMES = ("MaxShellsPerUser", "MaxConcurrentUsers", "MaxProcessesPerShell", "MaxMemoryPerShellMB")


class QuotasUnreadable(Exception):
    """The host does not let this principal read its WinRM configuration (Administrators only)."""


class HostChannel:
    """One WinRM shell on ``host`` as ``principal``; use as a context manager."""

    def __init__(self, settings: Settings, host: HostSpec, principal: str, delegate: bool, cred: Any) -> None:
        self.settings = settings
        self.host = host
        self.principal = principal
        self._delegate = delegate
        self._cred = cred
        self._pool: Any = None
        self._owned = True  # the shell is this channel's to close

    @classmethod
    def in_shell(cls, settings: Settings, host: HostSpec, principal: str, pool: Any) -> HostChannel:
        """A channel in a task's open shell (its runspace ``pool``: no new logon); closing the
        channel leaves the shell open."""
        channel = cls(settings, host, principal, False, None)
        channel._pool, channel._owned = pool, False
        return channel

    def open(self) -> HostChannel:
        from pypsrp.powershell import RunspacePool

        try:
            self._pool = RunspacePool(wsman.connect(self.settings, self.host, self._cred, self._delegate))
            self._pool.open()
        except Exception as e:
            self.close()
            raise classify(e, self.host, self.principal) from e
        return self

    def agent(self, mode: str, request: dict[str, Any] | None = None, *args: str) -> dict[str, Any]:
        """Run ``<python> -m winexec.agent <mode> [args]`` and return its one JSON answer.

        Raises :class:`~winexec.transport.errors.PythonMissing` when the interpreter is not found, and
        another :class:`~winexec.transport.errors.LaunchError` for transport or agent failures.
        """
        from pypsrp.powershell import PowerShell

        if mode not in MODES:
            raise ValueError(f"not an agent query mode: {mode}")
        if self._pool is None:
            self.open()
        python = self.settings.python
        ps = PowerShell(self._pool)
        ps.add_cmdlet(python).add_argument("-m").add_argument("winexec.agent").add_argument(mode)
        for arg in args:
            ps.add_argument(arg)
        line = json.dumps(request, ensure_ascii=True) if request is not None else None
        try:
            ps.invoke(input=[line] if line is not None else None)  # type: ignore[arg-type]  # a list is fine
        except Exception as e:
            raise classify(e, self.host, self.principal) from e
        errors = [str(getattr(r, "message", None) or r) for r in ps.streams.error]
        out = [ln for item in ps.output for ln in str(item).splitlines() if ln.strip()]
        for text in reversed(out):
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        missing = python_missing_reason(errors, self.host, python)
        if missing:
            raise PythonMissing(missing)
        tail = "; ".join(errors[-3:] or out[-3:]) or "no output"
        raise AgentFailure(
            f"`{python} -m winexec.agent {mode}` on {self.host.name} gave no answer: {tail[:500]}; "
            "check that winexec is installed for that interpreter"
        )

    def powershell(self) -> dict[str, str]:
        """The endpoint's ``$PSVersionTable`` as the host sent it when the shell opened
        (APPLICATION_PRIVATE_DATA; PSVersion, PSEdition, PSRemotingProtocolVersion...), as text."""
        if self._pool is None:
            self.open()
        private = getattr(self._pool.application_private_data, "data", None) or {}
        table = private.get("PSVersionTable") if isinstance(private, dict) else None
        return {str(k): str(v) for k, v in (table or {}).items()} if isinstance(table, dict) else {}

    def quotas(self) -> dict[str, int]:
        """The host's WinRM shell quotas in effect for a PSRP shell: the smaller of the WinRS
        setting (``winrm get winrm/config/winrs``) and the endpoint's own (what
        ``Get-PSSessionConfiguration`` shows), read over this connection with WS-Man Get.

        Windows lets only Administrators read them: for anyone else this raises
        :class:`QuotasUnreadable`.
        """
        from pypsrp.exceptions import WSManFaultError
        from pypsrp.wsman import SelectorSet

        if self._pool is None:
            self.open()
        connection = self._pool.connection
        base = "http://schemas.microsoft.com/wbem/wsman/1/config"
        plugin = SelectorSet()
        plugin.add_option("Name", self.host.configuration)
        try:
            winrs = connection.get(f"{base}/winrs")
            endpoint = connection.get(f"{base}/plugin", selector_set=plugin)
        except WSManFaultError as e:
            raise QuotasUnreadable(f"{self.principal} may not read them ({e.reason or e.code})") from None
        except Exception as e:
            raise classify(e, self.host, self.principal) from e
        found: dict[str, int] = {}
        for el in winrs.iter():
            name = el.tag.rsplit("}", 1)[-1]
            if name in QUOTA_NAMES and (el.text or "").strip().isdigit():
                found[name] = int(el.text.strip())  # type: ignore[union-attr]
        for el in endpoint.iter():
            if el.tag.rsplit("}", 1)[-1] == "Quotas":
                for name in QUOTA_NAMES:
                    if str(el.attrib.get(name, "")).isdigit():
                        found[name] = min(found.get(name, 2**31 - 1), int(el.attrib[name]))
        return found

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._owned:
            try:
                pool.close()
            except Exception:  # a host that is gone is as closed as it gets
                pass

    def __enter__(self) -> HostChannel:
        if self._pool is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_channel(
    settings: Settings, host: HostSpec, principal: str, delegate: bool, tickets: CredentialStore
) -> HostChannel:
    """The principal's credential from ``tickets``, then a shell on ``host``."""
    return HostChannel(settings, host, principal, delegate, wsman.credential(tickets, principal, host)).open()


def log_pages(
    channel: HostChannel, path: str, page_size: int, offset: int = 0, *, close: bool = True
) -> Iterator[str]:
    """A task log's text, page by page from ``offset``, ending on line boundaries.

    Nothing is fetched until iterated, and only one page is in memory at a time. Closes
    ``channel`` at the end when ``close``.
    """
    try:
        while True:
            page = channel.agent("--read-log", {"path": path, "offset": offset, "limit": page_size})
            if not page.get("found"):
                return
            data = str(page.get("data") or "")
            if data:
                yield data
            nxt = int(page.get("next") or offset)
            if page.get("eof") or nxt <= offset:
                return
            offset = nxt
    finally:
        if close:
            channel.close()

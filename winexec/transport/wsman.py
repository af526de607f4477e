"""The WS-Man connection every shell to a host is opened on, built in this one place.

Launches, reattaches, host checks and log reads all connect the same way -- Kerberos as one
principal from its own ccache, the host's SPN, the configured encryption and timeouts -- so a
passing check means a task gets through too.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

from winexec.config import HostSpec, Settings
from winexec.transport.errors import classify

log = logging.getLogger(__name__)

#: pypsrp's loggers that log whole PSRP/WS-Man messages at DEBUG, and the first pipeline input
#: carries the task's token: kept above DEBUG whatever the scheduler's log level is.
MESSAGE_LOGGERS = ("pypsrp.messages", "pypsrp.wsman", "pypsrp.serializer", "pypsrp.shell")
for _name in MESSAGE_LOGGERS:
    logging.getLogger(_name).setLevel(logging.INFO)

#: A PSRP session configuration's resource URI is this plus its name (pypsrp builds it the same way).
PSRP_URI_PREFIX = "http://schemas.microsoft.com/powershell/"


class CredentialStore(Protocol):
    """What the transport needs from ``winexec.tickets``: a fresh credential per principal."""

    def get(self, principal: str, min_lifetime: float | None = None) -> Any: ...


def credential(
    tickets: CredentialStore, principal: str, host: HostSpec, min_lifetime: float | None = None
) -> Any:
    """The principal's credential from the store, any failure classified as a launch error.

    ``min_lifetime``: the ticket should outlive that many seconds; where the KDC caps lifetimes
    below it, the shorter ticket is taken anyway (the store renews it) and that is logged."""
    from winexec.tickets import TicketLifetimeError

    try:
        try:
            return tickets.get(principal, min_lifetime=min_lifetime)
        except TicketLifetimeError as e:
            if min_lifetime is None:
                raise
            log.warning("%s: tickets are shorter than the task's timeout (%s)", principal, str(e))
            return tickets.get(principal)
    except Exception as e:
        raise classify(e, host, principal) from e


def spnego_credential(cred: Any) -> Any:
    """The ``spnego`` credential object inside whatever the ticket store returned."""
    import spnego

    if isinstance(cred, spnego.KerberosCCache):
        return cred
    value = getattr(cred, "spnego", None)  # winexec.tickets.Credential
    if isinstance(value, spnego.KerberosCCache):
        return value
    ccache = getattr(cred, "ccache", None)
    if isinstance(ccache, str):
        return spnego.KerberosCCache(ccache=ccache, principal=getattr(cred, "principal", None))
    raise TypeError(f"cannot use {type(cred).__name__} as a Kerberos credential")


def connect(
    settings: Settings, host: HostSpec, credential: Any, delegate: bool, session_id: str | None = None
) -> Any:
    """A pypsrp ``WSMan`` to ``host`` as ``credential``'s principal; ``session_id`` makes it that
    client session (``wsmv:SessionId``), as a run's own clients are."""
    from pypsrp.wsman import WSMan

    wsman = WSMan(
        host.connect_address,
        port=host.port,
        ssl=host.ssl,
        path="wsman",
        auth="kerberos",
        username=spnego_credential(credential),
        negotiate_hostname_override=host.name,
        negotiate_delegate=delegate,
        negotiate_service="HTTP",
        encryption=settings.encryption_for(host),
        cert_validation=settings.cert_validation,  # type: ignore[arg-type]  # a CA path is allowed
        connection_timeout=settings.connect_timeout,
        operation_timeout=settings.operation_timeout,
        read_timeout=settings.read_timeout,
        reconnection_retries=0,
    )
    if session_id:
        wsman.session_id = session_id
    return wsman


def disconnect_shell(wsman: Any, pool: Any) -> None:
    """rsp:Disconnect of ``pool``'s shell (pypsrp's own ``disconnect`` skips a pool it believes
    disconnected already, which every pool ``get_runspace_pools`` returns is)."""
    import xml.etree.ElementTree as ET

    from pypsrp.wsman import NAMESPACES, SelectorSet

    selectors = SelectorSet()
    selectors.add_option("ShellId", str(pool.shell.id))
    body = ET.Element(f"{{{NAMESPACES['rsp']}}}Disconnect")
    wsman.disconnect(pool.shell.resource_uri, body, selector_set=selectors)


def shell_id_for(run_id: str) -> str | None:
    """The WinRM ShellId (a GUID) a run's shell gets: the run id, when it is a 32-hex uuid."""
    try:
        return str(uuid.UUID(hex=run_id)).upper()
    except ValueError:
        return None

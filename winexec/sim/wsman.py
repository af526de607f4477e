"""WS-Management SOAP envelopes: parse what pypsrp/pywinrm send, build what WinRM answers.

Kept to :mod:`xml.etree` so the stand-in has no XML dependency the clients do not already have.
Fault codes and texts are Windows' own (``winrm helpmsg <code>``), so client code that branches
on them is exercised as it would be against a real host.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NS: dict[str, str] = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsmid": "http://schemas.dmtf.org/wbem/wsman/identify/1/wsmanidentity.xsd",
    "wsmanfault": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
    "wsmv": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "cfg": "http://schemas.microsoft.com/wbem/wsman/1/config",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "wsen": "http://schemas.xmlsoap.org/ws/2004/09/enumeration",
    "wst": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "pwsh": "http://schemas.microsoft.com/powershell",
    "xml": "http://www.w3.org/XML/1998/namespace",
}
for _prefix, _uri in NS.items():
    if _prefix != "xml":
        ET.register_namespace(_prefix, _uri)

_T = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
_SH = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
_EN = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/"


class Action:
    GET = _T + "Get"
    CREATE = _T + "Create"
    DELETE = _T + "Delete"
    ENUMERATE = _EN + "Enumerate"
    PULL = _EN + "Pull"
    COMMAND = _SH + "Command"
    CONNECT = _SH + "Connect"
    DISCONNECT = _SH + "Disconnect"
    RECEIVE = _SH + "Receive"
    RECONNECT = _SH + "Reconnect"
    SEND = _SH + "Send"
    SIGNAL = _SH + "Signal"
    FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"

    @staticmethod
    def response(action: str) -> str:
        return action + "Response"


SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CMD_URI = SHELL_URI + "/cmd"
COMMAND_ENUM_URI = SHELL_URI + "/Command"
PWSH_URI_PREFIX = "http://schemas.microsoft.com/powershell/"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
STATE_DONE = _SH + "CommandState/Done"
STATE_RUNNING = _SH + "CommandState/Running"


def q(prefix: str, name: str) -> str:
    """Clark-notation tag ``{uri}name`` for ``prefix:name``."""
    return f"{{{NS[prefix]}}}{name}"


@dataclass
class Request:
    """The parts of a WS-Man request the stand-in acts on."""

    action: str
    message_id: str
    resource_uri: str
    selectors: dict[str, str]
    options: dict[str, str]
    operation_timeout: float | None
    max_envelope_size: int | None
    session_id: str | None
    body: ET.Element
    envelope: ET.Element = field(repr=False)

    @property
    def shell_id(self) -> str | None:
        return self.selectors.get("ShellId")

    def first(self) -> ET.Element | None:
        """The first element inside ``s:Body`` (``rsp:Shell``, ``rsp:Receive`` ...)."""
        return self.body[0] if len(self.body) else None


class ParseError(ValueError):
    pass


def parse_duration(text: str | None) -> float | None:
    """``PT20S``/``PT20.500S``/``PT1M`` (xs:duration, the subset WinRM clients send) to seconds."""
    if not text:
        return None
    t = text.strip().upper()
    if not t.startswith("P"):
        return None
    t = t[1:]
    total = 0.0
    days, _, timepart = t.partition("T")
    if days:
        total += float(days.rstrip("D") or 0) * 86400
    num = ""
    for ch in timepart:
        if ch.isdigit() or ch == ".":
            num += ch
            continue
        value = float(num or 0)
        num = ""
        total += value * {"H": 3600, "M": 60, "S": 1}.get(ch, 0)
    return total


def parse_request(data: bytes) -> Request:
    try:
        env = ET.fromstring(data)
    except ET.ParseError as e:
        raise ParseError(f"request is not XML: {e}") from e
    header = env.find("s:Header", NS)
    body = env.find("s:Body", NS)
    if header is None or body is None:
        raise ParseError("request is not a SOAP envelope")

    def text(path: str) -> str | None:
        el = header.find(path, NS)
        return el.text.strip() if el is not None and el.text else None

    selectors = {
        s.attrib.get("Name", ""): (s.text or "")
        for s in header.findall("wsman:SelectorSet/wsman:Selector", NS)
    }
    options = {
        o.attrib.get("Name", ""): (o.text or "") for o in header.findall("wsman:OptionSet/wsman:Option", NS)
    }
    mes = text("wsman:MaxEnvelopeSize")
    return Request(
        action=text("wsa:Action") or "",
        message_id=text("wsa:MessageID") or "",
        resource_uri=text("wsman:ResourceURI") or "",
        selectors=selectors,
        options=options,
        operation_timeout=parse_duration(text("wsman:OperationTimeout")),
        max_envelope_size=int(mes) if mes and mes.isdigit() else None,
        session_id=text("wsmv:SessionId"),
        body=body,
        envelope=env,
    )


def envelope(action: str, relates_to: str, body: list[ET.Element] | None = None) -> bytes:
    """A response envelope the clients accept (they check ``RelatesTo`` against their MessageID)."""
    env = ET.Element(q("s", "Envelope"), {"xml:lang": "en-US"})
    header = ET.SubElement(env, q("s", "Header"))
    ET.SubElement(header, q("wsa", "To")).text = ANONYMOUS
    ET.SubElement(header, q("wsa", "Action"), {q("s", "mustUnderstand"): "true"}).text = action
    ET.SubElement(header, q("wsa", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    ET.SubElement(header, q("wsa", "RelatesTo")).text = relates_to
    b = ET.SubElement(env, q("s", "Body"))
    for el in body or []:
        b.append(el)
    return b'<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(
        env, encoding="utf-8", xml_declaration=False
    )


# -- faults ------------------------------------------------------------------------------------
@dataclass
class WSManFault(Exception):
    """A WS-Management fault: HTTP 500 with a ``wsmanfault:WSManFault`` detail carrying ``code``."""

    code: int
    message: str
    subcode: str = "w:InternalError"
    value: str = "s:Receiver"
    http_status: int = 500

    def __str__(self) -> str:
        return f"WSManFault {self.code}: {self.message}"

    def to_xml(self, relates_to: str, machine: str) -> bytes:
        fault = ET.Element(q("s", "Fault"))
        code = ET.SubElement(fault, q("s", "Code"))
        ET.SubElement(code, q("s", "Value")).text = _qname(self.value)
        sub = ET.SubElement(code, q("s", "Subcode"))
        ET.SubElement(sub, q("s", "Value")).text = _qname(self.subcode)
        reason = ET.SubElement(fault, q("s", "Reason"))
        ET.SubElement(reason, q("s", "Text"), {"xml:lang": "en-US"}).text = self.message
        detail = ET.SubElement(fault, q("s", "Detail"))
        wf = ET.SubElement(
            detail, q("wsmanfault", "WSManFault"), {"Code": str(self.code), "Machine": machine}
        )
        ET.SubElement(wf, q("wsmanfault", "Message")).text = self.message
        return envelope(Action.FAULT, relates_to, [fault])


def _qname(v: str) -> str:
    # The prefixes in Value texts must be declared; map the two WinRM uses onto ours.
    return v.replace("w:", "wsman:")


# Codes are the Win32/WinRM HRESULTs as unsigned ints, as WinRM puts them in WSManFault/@Code.
ERROR_WSMAN_OPERATION_TIMEDOUT = 2150858793  # 0x80338029
ERROR_WSMAN_INVALID_SELECTORS = 2150858843  # 0x8033805B (shell not found)
ERROR_WSMAN_QUOTA_MAX_SHELLS = 2150859173  # 0x803381A5
ERROR_WSMAN_QUOTA_MAX_OPERATIONS = 2150859174
ERROR_WSMAN_QUOTA_MAX_SHELLUSERS = 2150859179  # 0x803381AB  # 0x803381A6
ERROR_WSMAN_ACTION_NOT_SUPPORTED = 2150858771  # 0x80338013
# wsmerror.h (as in Vanara's wsmerror.cs); which one Windows answers when is inferred (README)
ERROR_WINRS_SHELL_DISCONNECTED = 2150859204  # 0x803381C4
ERROR_WINRS_SHELL_CLIENTSESSIONID_MISMATCH = 2150859206  # 0x803381C6
ERROR_WINRS_SHELL_CONNECTED_TO_DIFFERENT_CLIENT = 2150859213  # 0x803381CD
# A request over MaxEnvelopeSizekb gets HTTP 413 and no SOAP body; the Windows client reports it
# as ERROR_WSMAN_HTTP_REQUEST_TOO_LARGE_STATUS (0x80338111): "... the request size exceeded the
# configured MaxEnvelopeSize quota."


def operation_timeout() -> WSManFault:
    return WSManFault(
        ERROR_WSMAN_OPERATION_TIMEDOUT,
        "The WS-Management service cannot complete the operation within the time specified in "
        "OperationTimeout.",
        subcode="w:TimedOut",
    )


def shell_not_found(shell_id: str) -> WSManFault:
    return WSManFault(
        ERROR_WSMAN_INVALID_SELECTORS,
        f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not "
        "found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer "
        "exists on the server. Provide the correct ShellId or create a new shell and retry the operation.",
        subcode="w:InvalidSelectors",
        value="s:Sender",
    )


def action_not_supported(action: str) -> WSManFault:
    return WSManFault(
        ERROR_WSMAN_ACTION_NOT_SUPPORTED,
        f"The WS-Management service cannot process the request. The action {action} is not supported "
        "by this stand-in.",
        subcode="wsa:ActionNotSupported",
        value="s:Sender",
    )


def quota_shells(limit: int) -> WSManFault:
    return WSManFault(
        ERROR_WSMAN_QUOTA_MAX_SHELLS,
        "The WS-Management service cannot process the request. This user is allowed a maximum number of "
        f"{limit} concurrent shells, which has been exceeded. Close existing shells or raise the quota for "
        "this user.",
        subcode="w:QuotaLimit",
    )


def quota_users(limit: int) -> WSManFault:
    return WSManFault(
        ERROR_WSMAN_QUOTA_MAX_SHELLUSERS,
        "The WS-Management service cannot process the request. This request exceeded the maximum number "
        f"of users concurrently performing remote operations ({limit}) on this system. Retry later.",
        subcode="w:QuotaLimit",
    )


def quota_operations(limit: int) -> WSManFault:
    return WSManFault(
        ERROR_WSMAN_QUOTA_MAX_OPERATIONS,
        "The WS-Management service cannot process the request. This user is allowed a maximum number of "
        f"{limit} concurrent operations, which has been exceeded. Close existing operations for this user, "
        "or raise the quota for this user.",
        subcode="w:QuotaLimit",
    )


def shell_disconnected() -> WSManFault:
    return WSManFault(
        ERROR_WINRS_SHELL_DISCONNECTED,
        "The WinRM service cannot process the request because the WinRS shell instance is currently "
        "disconnected.",
        subcode="w:InternalError",
    )


def shell_connected_elsewhere() -> WSManFault:
    return WSManFault(
        ERROR_WINRS_SHELL_CONNECTED_TO_DIFFERENT_CLIENT,
        "The WinRM service cannot process the request. The WinRS shell instance is currently connected "
        "to a different client.",
        subcode="w:InternalError",
    )


def client_session_mismatch() -> WSManFault:
    return WSManFault(
        ERROR_WINRS_SHELL_CLIENTSESSIONID_MISMATCH,
        "The WinRM service cannot process the request because the WinRS shell instance is connected to "
        "a different client.",
        subcode="w:InternalError",
    )

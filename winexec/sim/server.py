"""The WinRM service of one host: HTTP(S) listener, authentication, and WS-Man dispatch.

A ``ThreadingHTTPServer`` gives each TCP connection its own thread, so a Receive long-poll on
one connection never blocks another. Authentication and message encryption are per connection,
as in WinRM: a client authenticates once on a keep-alive connection and then sends encrypted
envelopes on it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from winexec.sim import wsman
from winexec.sim.auth import (
    DEFAULT_CLOCKSKEW,
    KERBEROS_PROTOCOL,
    SPNEGO_PROTOCOL,
    AuthContext,
    AuthError,
    Identity,
    skew_error_token,
)
from winexec.sim.shells import CmdShell, PSRPShell, Shell
from winexec.sim.wsman import NS, Action, WSManFault, q

if TYPE_CHECKING:
    from winexec.sim.cluster import SimHost

log = logging.getLogger("winexec.sim")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, host: SimHost, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.sim_host = host
        self.ssl_context = ssl_context
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__((host.address, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        try:
            if self.ssl_context is not None:
                request.settimeout(10)
                try:
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError):
                    return
                request.settimeout(None)
                with self.conn_lock:
                    self.connections.add(request)
            super().finish_request(request, client_address)
        finally:
            with self.conn_lock:
                self.connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def drop_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


class Listener:
    """One port (HTTP or HTTPS) that can be closed and reopened on the same number."""

    def __init__(self, host: SimHost, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    def open(self) -> None:
        if self.server is not None:
            return
        deadline = time.monotonic() + 10
        while True:
            try:
                self.server = _Server(self.host, self.port, self.ssl_context)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name=f"winrm-{self.host.short_name}-{self.port}",
        )
        self.thread.start()

    def close(self, drop: bool = True) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if drop:
            server.drop_connections()
        if self.thread is not None:
            self.thread.join(5)

    @property
    def is_open(self) -> bool:
        return self.server is not None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.auth: AuthContext | None = None

    def finish(self) -> None:
        self._set_auth(None)
        super().finish()

    def _set_auth(self, ctx: AuthContext | None) -> None:
        if self.auth is not None and self.auth is not ctx:
            self.auth.close()
        self.auth = ctx

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

    # -- responses -------------------------------------------------------------------------
    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(status)
        for k, v in headers or []:
            self.send_header(k, v)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _challenge(self, reason: str = "") -> None:
        if reason:
            log.info("host %s: authentication failed: %s", self.server.sim_host.name, reason)
        self._set_auth(None)
        self._send(
            401,
            reason.encode(),
            "text/plain; charset=utf-8" if reason else None,
            [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "Kerberos")],
        )

    def do_GET(self) -> None:
        self._send(405)

    def do_POST(self) -> None:
        host = self.server.sim_host
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host.faults.wait_stall()
        if not self.server.sim_host.listening:
            self.close_connection = True
            return
        if self.path.split("?")[0].rstrip("/").lower() != "/wsman":
            self._send(404)
            return

        out_headers: list[tuple[str, str]] = []
        authz = self.headers.get("Authorization")
        if authz:
            scheme, _, b64 = authz.partition(" ")
            if scheme.lower() not in ("negotiate", "kerberos") or not b64.strip():
                self._challenge(f"unsupported authorization scheme {scheme!r}")
                return
            token = base64.b64decode(b64.strip())
            if abs(host.faults.skew) > DEFAULT_CLOCKSKEW:
                err = skew_error_token(host.realm.name, host.spn, time.time() + host.faults.skew)
                log.info(
                    "host %s: rejecting AP-REQ: clock skew %.0f s (KRB_AP_ERR_SKEW)",
                    host.name,
                    host.faults.skew,
                )
                self._set_auth(None)
                self._send(
                    401,
                    b"KRB_AP_ERR_SKEW: Clock skew too great",
                    "text/plain",
                    [("WWW-Authenticate", f"{scheme} {base64.b64encode(err).decode()}")],
                )
                return
            ctx = host.acceptor.new_context()
            try:
                out = ctx.step(token)
            except AuthError as e:
                self._challenge(str(e))
                return
            self._set_auth(ctx)
            if out:
                out_headers.append(("WWW-Authenticate", f"{scheme} {base64.b64encode(out).decode()}"))
            if not ctx.complete:
                self._send(401, b"", None, out_headers)
                return

        if self.auth is None or not self.auth.complete or self.auth.identity is None:
            self._challenge()
            return
        identity = self.auth.identity

        if not body:
            self._send(200, b"", None, out_headers)
            return

        content_type = self.headers.get("Content-Type", "")
        protocol: str | None = None
        if content_type.startswith(("multipart/encrypted", "multipart/x-multi-encrypted")):
            protocol = KERBEROS_PROTOCOL if KERBEROS_PROTOCOL in content_type else SPNEGO_PROTOCOL
            try:
                soap = self.auth.unwrap_message(body, "Encrypted Boundary")
            except Exception as e:
                self._challenge(f"cannot decrypt message: {type(e).__name__}")
                return
        elif self.server.ssl_context is None:
            # AllowUnencrypted=false, the Windows default: plain SOAP over HTTP is refused.
            self._challenge("unencrypted messages are not allowed over HTTP (AllowUnencrypted=false)")
            return
        else:
            soap = body
        if len(body) > host.quotas.MaxEnvelopeSizekb * 1024:
            # What WinRM answers to an envelope over MaxEnvelopeSizekb: 413, no SOAP. (Decrypted
            # first all the same, so the connection's Kerberos sequence numbers stay in step.)
            log.info("host %s: request of %d bytes exceeds MaxEnvelopeSizekb", host.name, len(body))
            self._send(413, b"", None, out_headers)
            return

        status, reply, drop = host.service.handle(soap, identity, self.client_address[0])
        if drop:
            # Fault injection: the connection dies mid-request, no response.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if protocol is not None:
            ct, payload = self.auth.wrap_message(reply, protocol)
            self._send(status, payload, ct, out_headers)
        else:
            self._send(status, reply, "application/soap+xml;charset=UTF-8", out_headers)


def check_session(shell: Shell, req: wsman.Request) -> None:
    """Which client session may do what to a shell (MS-WSMV 3.1.4.15-3.1.4.17, 3.1.6.5; MS-PSRP
    3.1.4.9): a connected shell belongs to the session (``wsmv:SessionId``) that created or last
    connected it, over any TCP connection; Connect to a connected shell faults, even from its
    own session; a shell whose client vanished stays connected (an idle shell, never a
    disconnected one) until its IdleTimeOut deletes it. A disconnected shell takes only Connect,
    Reconnect from the session that disconnected it, and Delete."""
    a, mine = req.action, req.session_id == shell.session_id
    body = req.first()
    to_pipeline = a == Action.CONNECT and body is not None and bool(body.attrib.get("CommandId"))
    if shell.state == "Connected":
        if a == Action.CONNECT and not (to_pipeline and mine):  # a pipeline of the shell it connected
            raise wsman.shell_connected_elsewhere()
        if a == Action.RECONNECT and not mine:
            raise wsman.client_session_mismatch()
        if not mine and a != Action.RECONNECT:
            raise wsman.shell_connected_elsewhere()
        return
    if a == Action.RECONNECT and not mine:
        raise wsman.client_session_mismatch()
    if a not in (Action.CONNECT, Action.RECONNECT, Action.DELETE):
        raise wsman.shell_disconnected()


# -- the service -----------------------------------------------------------------------------
class WinRMService:
    """Shells and WS-Man operations of one host, independent of the transport."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.shells: dict[str, Shell] = {}
        self.lock = threading.RLock()
        self.ops_in_flight: dict[str, int] = {}

    def handle(self, soap: bytes, identity: Identity, client_ip: str) -> tuple[int, bytes, bool]:
        machine = self.host.name
        try:
            req = wsman.parse_request(soap)
        except wsman.ParseError as e:
            fault = WSManFault(2150858778, f"The WS-Management service cannot process the request: {e}")
            return 400, fault.to_xml("", machine), False
        if req.action == Action.RECEIVE and self.host.faults.take_drop_receive():
            return 0, b"", True
        quotas = self.host.quotas
        user = identity.principal
        try:
            with self.lock:
                n = self.ops_in_flight.get(user, 0)
                if n >= quotas.MaxConcurrentOperationsPerUser:
                    raise wsman.quota_operations(quotas.MaxConcurrentOperationsPerUser)
                self.ops_in_flight[user] = n + 1
            try:
                action, body = self._dispatch(req, identity, client_ip)
            finally:
                with self.lock:
                    self.ops_in_flight[user] -= 1
        except Exception as e:
            if not isinstance(e, WSManFault):
                log.exception("host %s: internal error handling %s", machine, req.action)
                e = WSManFault(2150858751, f"The WS-Management service cannot process the request: {e}")
            f = e
            if f.code != wsman.ERROR_WSMAN_OPERATION_TIMEDOUT:
                log.info("host %s: %s -> %s", machine, req.action.rsplit("/", 1)[-1], f)
            return f.http_status, f.to_xml(req.message_id, machine), False
        after = self.host.faults.take_lost_answer(req.action)
        if after is not None:  # done, but the answer never reaches the client
            if after == "silent":
                self.host.faults.refuse(True)
            elif after == "reboot":
                self.host.faults.kill_shells()
            return 0, b"", True
        return 200, wsman.envelope(action, req.message_id, body), False

    # -- helpers ---------------------------------------------------------------------------
    def _shell(self, req: wsman.Request, identity: Identity) -> Shell:
        sid = (req.shell_id or "").upper()
        with self.lock:
            shell = self.shells.get(sid)
        if shell is None or shell.closed:
            raise wsman.shell_not_found(req.shell_id or "")
        if shell.owner.principal != identity.principal:
            raise WSManFault(5, "Access is denied.", subcode="w:AccessDenied", value="s:Sender")
        return shell

    def user_shells(self, principal: str) -> list[Shell]:
        with self.lock:
            return [s for s in self.shells.values() if s.owner.principal == principal and not s.closed]

    def close_shell(self, shell_id: str) -> None:
        with self.lock:
            shell = self.shells.pop(shell_id, None)
        if shell is not None:
            shell.close()

    def close_all(self) -> None:
        with self.lock:
            shells = list(self.shells.values())
            self.shells.clear()
        for s in shells:
            s.close()

    def _dispatch(
        self, req: wsman.Request, identity: Identity, client_ip: str
    ) -> tuple[str, list[ET.Element]]:
        a = req.action
        resp = Action.response(a)
        timeout = req.operation_timeout if req.operation_timeout else 20.0
        if a == Action.CREATE:
            return resp, self._create(req, identity, client_ip)
        if a == Action.ENUMERATE:
            return resp, self._enumerate(req, identity)
        if a == Action.GET:
            return resp, self._get(req, identity)
        shell = self._shell(req, identity)
        with shell.cond:
            shell.in_flight += 1
        try:
            return resp, self._shell_op(shell, req, timeout)
        finally:
            with shell.cond:
                shell.in_flight -= 1
                shell.touch()  # the idle countdown starts when a request is done (MS-WSMV)

    def _shell_op(self, shell: Shell, req: wsman.Request, timeout: float) -> list[ET.Element]:
        a = req.action
        check_session(shell, req)
        if a == Action.DELETE:
            self.close_shell(shell.id)
            return []
        if a == Action.COMMAND:
            return shell.command(req)
        if a == Action.SEND:
            return shell.send(req)
        if a == Action.RECEIVE:
            return shell.receive(req, timeout)
        if a == Action.SIGNAL:
            return shell.signal(req)
        if isinstance(shell, PSRPShell):
            if a == Action.DISCONNECT:
                body = req.first()
                idle = (
                    wsman.parse_duration(body.findtext("rsp:IdleTimeOut", None, NS))
                    if body is not None
                    else None
                )
                shell.disconnect(idle)
                return [ET.Element(q("rsp", "DisconnectResponse"))]
            if a == Action.RECONNECT:
                if shell.state != "Connected":
                    shell.reconnect()
                return [ET.Element(q("rsp", "ReconnectResponse"))]
            if a == Action.CONNECT:
                shell.session_id = req.session_id
                return self._connect(shell, req)
        raise wsman.action_not_supported(a)

    def _create(self, req: wsman.Request, identity: Identity, client_ip: str) -> list[ET.Element]:
        body = req.first()
        if body is None or body.tag != q("rsp", "Shell"):
            raise WSManFault(
                2150858778, "The WS-Management service cannot process the request: no rsp:Shell."
            )
        uri = req.resource_uri
        is_cmd = uri.lower() == wsman.CMD_URI.lower()
        endpoint = self.host.endpoints.get(uri[len(wsman.PWSH_URI_PREFIX) :].lower())
        if not is_cmd and (not uri.startswith(wsman.PWSH_URI_PREFIX) or endpoint is None):
            raise WSManFault(
                2150858752,
                "The WS-Management service cannot process the request. The service cannot find the resource "
                "identified by the resource URI and selectors.",
                subcode="w:DestinationUnreachable",
                value="s:Sender",
            )
        quotas = self.host.quotas
        with self.lock:
            if len(self.user_shells(identity.principal)) >= quotas.MaxShellsPerUser:
                raise wsman.quota_shells(quotas.MaxShellsPerUser)
            users = {s.owner.principal for s in self.shells.values() if not s.closed}
            if identity.principal not in users and len(users) >= quotas.MaxConcurrentUsers:
                raise wsman.quota_users(quotas.MaxConcurrentUsers)
            shell_id = (body.attrib.get("ShellId") or str(uuid.uuid4())).upper()
            if shell_id in self.shells:
                raise WSManFault(
                    2150858815,
                    f"The WS-Management service cannot create the resource: shell {shell_id} exists.",
                    subcode="wst:AlreadyExists",
                    value="s:Sender",
                )
            env = {
                v.attrib.get("Name", ""): v.text or ""
                for v in body.findall("rsp:Environment/rsp:Variable", NS)
                if v.attrib.get("Name")
            }
            ins = (body.findtext("rsp:InputStreams", "stdin", NS) or "stdin").strip()
            outs = (body.findtext("rsp:OutputStreams", "stdout stderr", NS) or "stdout stderr").strip()
            idle = wsman.parse_duration(body.findtext("rsp:IdleTimeOut", None, NS))
            args = (self.host, shell_id, uri, identity, client_ip, ins, outs, env, req.session_id, idle)
            shell: Shell
            if is_cmd:
                shell = CmdShell(*args)
            else:
                xml_el = body.find("pwsh:creationXml", NS)
                if xml_el is None or not xml_el.text:
                    raise WSManFault(
                        2150858778, "The WS-Management service cannot process the request: no creationXml."
                    )
                assert endpoint is not None
                shell = PSRPShell(*args, creation_xml=base64.b64decode(xml_el.text), endpoint=endpoint)
            self.shells[shell_id] = shell
        created = ET.Element(q("wst", "ResourceCreated"))
        ET.SubElement(
            created, q("wsa", "Address")
        ).text = f"http://{self.host.name}:{self.host.http_port}/wsman"
        ref = ET.SubElement(created, q("wsa", "ReferenceParameters"))
        ET.SubElement(ref, q("wsman", "ResourceURI")).text = uri
        sels = ET.SubElement(ref, q("wsman", "SelectorSet"))
        ET.SubElement(sels, q("wsman", "Selector"), {"Name": "ShellId"}).text = shell_id
        return [created, shell.shell_xml()]

    def _connect(self, shell: PSRPShell, req: wsman.Request) -> list[ET.Element]:
        body = req.first()
        resp = ET.Element(q("rsp", "ConnectResponse"))
        if body is not None and body.attrib.get("CommandId"):
            return [resp]  # connecting to a pipeline: its output follows on Receive
        xml_el = body.find("pwsh:connectXml", NS) if body is not None else None
        data = base64.b64decode(xml_el.text) if xml_el is not None and xml_el.text else b""
        out = shell.connect(data)
        ET.SubElement(resp, q("pwsh", "connectResponseXml")).text = base64.b64encode(out).decode()
        return [resp]

    def _enumerate(self, req: wsman.Request, identity: Identity) -> list[ET.Element]:
        resp = ET.Element(q("wsen", "EnumerateResponse"))
        ET.SubElement(resp, q("wsen", "EnumerationContext"))
        items = ET.SubElement(resp, q("wsman", "Items"))
        uri = req.resource_uri.rstrip("/")
        if uri == wsman.COMMAND_ENUM_URI:
            body = req.first()
            sid = ""
            if body is not None:
                sel = body.find("wsman:Filter/wsman:SelectorSet/wsman:Selector", NS)
                sid = (sel.text or "").upper() if sel is not None else ""
            with self.lock:
                shell = self.shells.get(sid)
            if shell is not None and shell.owner.principal == identity.principal:
                for cid in shell.commands():
                    c = ET.SubElement(items, q("rsp", "Command"))
                    ET.SubElement(c, q("rsp", "CommandId")).text = cid
        else:
            for shell in self.user_shells(identity.principal):
                items.append(shell.shell_xml())
        ET.SubElement(resp, q("wsman", "EndOfSequence"))
        return [resp]

    def _quota_config(self, uri: str, req: wsman.Request, identity: Identity) -> ET.Element:
        """``winrm get winrm/config/winrs`` and the Microsoft.PowerShell plugin's configuration
        (what ``Get-PSSessionConfiguration`` reads): Administrators only, as the default
        RootSDDL grants WinRM configuration to BA (and read to interactive users, which a network
        logon is not)."""
        if identity.user not in self.host.administrators:
            raise WSManFault(5, "Access is denied.", subcode="w:AccessDenied", value="s:Sender")
        qu = self.host.quotas
        if uri.endswith("/config/winrs"):
            ns = "http://schemas.microsoft.com/wbem/wsman/1/config/winrs"
            winrs = ET.Element(f"{{{ns}}}Winrs")
            for name, value in (
                ("AllowRemoteShellAccess", "true"),
                ("IdleTimeout", str(int(qu.IdleTimeout * 1000))),
                ("MaxConcurrentUsers", str(qu.MaxConcurrentUsers)),
                ("MaxShellRunTime", "2147483647"),
                ("MaxProcessesPerShell", str(qu.MaxProcessesPerShell)),
                ("MaxMemoryPerShellMB", str(qu.MaxMemoryPerShellMB)),
                ("MaxShellsPerUser", str(qu.MaxShellsPerUser)),
            ):
                ET.SubElement(winrs, f"{{{ns}}}{name}").text = value
            return winrs
        name = req.selectors.get("Name", "")
        if name.lower() not in self.host.endpoints:
            raise WSManFault(2150858752, f"The WS-Management service cannot find the plugin {name!r}.")
        ns = "http://schemas.microsoft.com/wbem/wsman/1/config/PluginConfiguration"
        plugin = ET.Element(f"{{{ns}}}PlugInConfiguration", {"Name": name})
        unlimited = "2147483647"  # PowerShell's registration defaults (facts §7.2)
        ET.SubElement(
            plugin,
            f"{{{ns}}}Quotas",
            {
                "IdleTimeoutms": "7200000",
                "MaxIdleTimeoutms": unlimited,
                "MaxConcurrentUsers": unlimited,
                "MaxProcessesPerShell": unlimited,
                "MaxMemoryPerShellMB": unlimited,
                "MaxShells": unlimited,
                "MaxShellsPerUser": unlimited,
                "MaxConcurrentCommandsPerShell": unlimited,
            },
        )
        return plugin

    def _get(self, req: wsman.Request, identity: Identity) -> list[ET.Element]:
        if req.shell_id:
            return [self._shell(req, identity).shell_xml()]
        uri = req.resource_uri.rstrip("/").lower()
        if uri.endswith(("/config/winrs", "/config/plugin")):
            return [self._quota_config(uri, req, identity)]
        if req.resource_uri.rstrip("/").endswith("/config"):
            cfg = ET.Element(q("cfg", "Config"))
            ET.SubElement(cfg, q("cfg", "MaxEnvelopeSizekb")).text = str(self.host.quotas.MaxEnvelopeSizekb)
            ET.SubElement(cfg, q("cfg", "MaxTimeoutms")).text = "60000"
            return [cfg]
        raise wsman.action_not_supported(req.action)

"""SPNEGO/Kerberos acceptance and WS-Man message encryption, server side.

Each host accepts with its own ``HTTP/<fqdn>`` keytab through explicit gssapi acceptor
credentials (``store={'keytab': ...}``), so several hosts in one process never share a key and
a ticket for one host is rejected by another, as on a real network. MIT's acceptor handles both
a raw Kerberos token (pypsrp ``auth="kerberos"``, pywinrm) and a SPNEGO one (``"negotiate"``).

Message encryption mirrors ``pypsrp.encryption.WinRMEncryption`` / ``winrm.encryption``: a
MIME-ish ``multipart/encrypted`` body whose second part is ``<len(header) LE32><header><data>``
from GSS ``wrap_iov`` — pyspnego's ``wrap_winrm``/``unwrap_winrm`` give exactly that.
"""

from __future__ import annotations

import logging
import re
import shutil
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gssapi
import gssapi.raw
from spnego._gss import GSSAPIProxy

log = logging.getLogger("winexec.sim")

BOUNDARY = b"--Encrypted Boundary"
SPNEGO_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
KERBEROS_PROTOCOL = "application/HTTP-Kerberos-session-encrypted"

# MIT krb5's default [libdefaults] clockskew; a host clock further off than this makes every
# AP-REQ fail with KRB_AP_ERR_SKEW.
DEFAULT_CLOCKSKEW = 300


class AuthError(Exception):
    """Authentication failed; the message goes into the 401 body (never a token or key)."""


class Acceptor:
    """One host's acceptor credentials, from its own keytab.

    ``spool`` is a private directory where each connection's delegated TGT is written at once.
    """

    def __init__(self, principal: str, keytab: Path, spool: Path) -> None:
        self.principal = principal
        self.keytab = keytab
        self.spool = spool
        spool.mkdir(parents=True, exist_ok=True)
        spool.chmod(0o700)
        # No name: accept for any principal in this host's keytab (HTTP/ and host/, as a
        # Windows machine account answers both through its SPN mappings).
        self.creds = gssapi.Credentials(usage="accept", store={"keytab": str(keytab)})

    def new_context(self) -> AuthContext:
        return AuthContext(self)


@dataclass
class Identity:
    """Who authenticated on a connection, and the TGT it delegated (a FILE ccache) if any."""

    principal: str  # user@REALM
    delegated: Path | None = None

    @property
    def user(self) -> str:
        return self.principal.split("@")[0]

    @property
    def realm(self) -> str:
        return self.principal.partition("@")[2]


class AuthContext:
    """A connection's acceptor security context (HTTP auth is per TCP connection in WinRM)."""

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.proxy = GSSAPIProxy(usage="accept", protocol="kerberos", _gssapi_credential=acceptor.creds)
        self.identity: Identity | None = None

    @property
    def complete(self) -> bool:
        return self.proxy.complete

    def step(self, token: bytes) -> bytes | None:
        # Accept and store the delegated TGT in one go under the process-wide lock (GSS calls
        # from many connection threads at once); both take milliseconds.
        with _GSS_LOCK:
            try:
                out = self.proxy.step(token)
            except Exception as e:  # spnego wraps GSSError; keep the reason, drop the token
                raise AuthError(_explain(e, self.acceptor.principal)) from None
            if self.proxy.complete:
                ctx = self.proxy._context
                creds = ctx.delegated_creds if ctx is not None else None
                path = None
                if creds is not None:
                    path = self.acceptor.spool / f"{uuid.uuid4().hex}.ccache"
                    try:
                        _store(creds, path)
                    except Exception as e:  # as on Windows: the logon just has no forwarded TGT
                        log.warning("cannot store delegated credentials: %s", e)
                        path = None
                self.identity = Identity(principal=self.proxy.client_principal or "", delegated=path)
        return out

    def close(self) -> None:
        """Forget the connection's delegated TGT (shells keep their own copies)."""
        if self.identity is not None and self.identity.delegated is not None:
            self.identity.delegated.unlink(missing_ok=True)

    # -- message encryption ----------------------------------------------------------------
    def unwrap_message(self, body: bytes, boundary: str) -> bytes:
        parts = [p for p in re.split(rb"--\s*" + re.escape(boundary.encode()) + rb"\r\n", body) if p]
        out = b""
        for i in range(0, len(parts), 2):
            header = parts[i].strip()
            payload = parts[i + 1]
            expected = int(header.split(b"Length=")[1])
            payload = re.sub(rb"--\s*" + re.escape(boundary.encode()) + rb"--\r\n$", b"", payload)
            wrapped = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"")
            hlen = struct.unpack("<i", wrapped[:4])[0]
            data = self.proxy.unwrap_winrm(wrapped[4 : 4 + hlen], wrapped[4 + hlen :])
            if len(data) != expected:
                raise AuthError(f"encrypted length mismatch: {len(data)} != {expected}")
            out += data
        return out

    def wrap_message(self, message: bytes, protocol: str) -> tuple[str, bytes]:
        res = self.proxy.wrap_winrm(message)
        wrapped = struct.pack("<i", len(res.header)) + res.header + res.data
        length = len(message) + res.padding_length
        payload = (
            BOUNDARY + b"\r\n"
            b"\tContent-Type: " + protocol.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(length).encode()
            + b"\r\n"
            + BOUNDARY
            + b"\r\n"
            b"\tContent-Type: application/octet-stream\r\n" + wrapped + BOUNDARY + b"--\r\n"
        )
        content_type = f'multipart/encrypted;protocol="{protocol}";boundary="Encrypted Boundary"'
        return content_type, payload


def _explain(err: Exception, service: str) -> str:
    text = str(err)
    if "Wrong principal" in text or "No key table entry" in text or "Cannot find key" in text:
        return f"the ticket is not for this host's service principal {service}: {text}"
    return f"Kerberos authentication to {service} failed: {text}"


_GSS_LOCK = threading.Lock()


def _store(creds: gssapi.Credentials, ccache: Path) -> None:
    # Bytes, held in a local for the whole call: python-gssapi's raw store_cred_into turns *str*
    # values into temporary C strings that can be freed before MIT reads them -- the cache then
    # lands in a file with a garbage name (seen as a file named "\x01" in the working directory).
    store: dict[bytes | str, bytes | str] = {b"ccache": f"FILE:{ccache}".encode()}
    gssapi.raw.store_cred_into(store, creds, usage="initiate", overwrite=True, set_default=False)
    if not ccache.exists():
        raise OSError(f"gss_store_cred_into did not create {ccache}")
    ccache.chmod(0o600)


def copy_ccache(src: Path, dst: Path) -> None:
    """A shell's own copy of its logon's delegated TGT (private, 0600)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(0o600)


# -- KRB_AP_ERR_SKEW -------------------------------------------------------------------------
def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _der_int(v: int) -> bytes:
    b = v.to_bytes((v.bit_length() + 8) // 8 or 1, "big", signed=True)
    return _der(0x02, b)


def _ctx(n: int, content: bytes) -> bytes:
    return _der(0xA0 + n, content)


def skew_error_token(realm: str, service: str, host_time: float) -> bytes:
    """A GSS-wrapped KRB-ERROR with KRB_AP_ERR_SKEW (37), as a host with a wrong clock answers.

    The gssapi acceptor checks against the real clock and cannot be given an offset, so the
    stand-in answers the AP-REQ itself with the error a skewed host would send; the client's
    gssapi reports "Clock skew too great" exactly as against Windows.
    """
    t = time.gmtime(host_time)
    ktime = time.strftime("%Y%m%d%H%M%SZ", t).encode()
    svc, _, inst = service.partition("@")[0].partition("/")
    sname = _der(
        0x30,
        _ctx(0, _der_int(2)) + _ctx(1, _der(0x30, _der(0x1B, svc.encode()) + _der(0x1B, inst.encode()))),
    )
    body = _der(
        0x30,
        _ctx(0, _der_int(5))
        + _ctx(1, _der_int(30))
        + _ctx(4, _der(0x18, ktime))
        + _ctx(5, _der_int(0))
        + _ctx(6, _der_int(37))
        + _ctx(9, _der(0x1B, realm.encode()))
        + _ctx(10, sname),
    )
    krb_error = _der(0x7E, body)
    krb5_oid = bytes.fromhex("06092a864886f712010202")
    return _der(0x60, krb5_oid + b"\x03\x00" + krb_error)

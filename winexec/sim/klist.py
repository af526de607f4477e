"""``%SystemRoot%\\System32\\klist.exe`` of a stand-in host: the logon's tickets, as Windows prints them.

Windows' ``klist`` (tickets, the default) lists the Kerberos tickets of the caller's logon session.
In a WinRM logon whose client forwarded its TGT, that TGT is the only ticket (flags
``0x60a10000``: forwardable forwarded renewable pre_authent name_canonicalize, no ``initial``;
cache flags ``0x1 -> PRIMARY``); without delegation it is the service ticket the logon was
accepted with, ``http/<host>`` (``0x40a10000``, ``Renew Time: 0``, ``Cache Flags: 0x8 -> ASC``).
Source: Ansible's "Kerberos authentication" guide (``klist`` in a WinRM session, with and
without delegation) and Microsoft's klist reference; the stand-in's logon keeps its delegated TGT
in the shell's ``KRB5CCNAME`` file, so that is what it lists.
"""

from __future__ import annotations

import os
import sys
import time

#: Windows' names for the ticket flag bits, high bit first (KERB_TICKET_CACHE_INFO flags).
FLAG_NAMES = {
    0x40000000: "forwardable",
    0x20000000: "forwarded",
    0x10000000: "proxiable",
    0x08000000: "proxy",
    0x04000000: "may_postdate",
    0x02000000: "postdated",
    0x01000000: "invalid",
    0x00800000: "renewable",
    0x00400000: "initial",
    0x00200000: "pre_authent",
    0x00100000: "hw_authent",
    0x00040000: "ok_as_delegate",
    0x00010000: "name_canonicalize",
}
AES256 = "AES-256-CTS-HMAC-SHA1-96"


def _flags(value: int) -> str:
    names = " ".join(n for bit, n in FLAG_NAMES.items() if value & bit)
    return f"0x{value:x} -> {names}"


def _when(t: int) -> str:
    if not t:
        return "0"
    lt = time.localtime(t)
    return f"{lt.tm_mon}/{lt.tm_mday}/{lt.tm_year} {lt.tm_hour}:{lt.tm_min:02d}:{lt.tm_sec:02d} (local)"


def _block(i: int, client: str, server: str, flags: int, times: tuple[int, int, int], cache: str) -> str:
    start, end, renew = times
    return (
        f"#{i}>\tClient: {client}\n"
        f"\tServer: {server}\n"
        f"\tKerbTicket Encryption Type: {AES256}\n"
        f"\tTicket Flags {_flags(flags)}\n"
        f"\tStart Time: {_when(start)}\n"
        f"\tEnd Time:   {_when(end)}\n"
        f"\tRenew Time: {_when(renew)}\n"
        f"\tSession Key Type: {AES256}\n"
        f"\tCache Flags: {cache}\n"
        f"\tKdc Called: \n"
    )


def _at(name: str) -> str:
    """``user@REALM`` as klist writes it: ``user @ REALM``."""
    user, _, realm = name.rpartition("@")
    return f"{user} @ {realm}"


def tickets(host_fqdn: str) -> list[str]:
    ccache = os.environ.get("KRB5CCNAME", "").removeprefix("FILE:")
    blocks: list[str] = []
    if ccache and os.path.exists(ccache):
        import krb5

        ctx = krb5.init_context()
        for c in krb5.cc_resolve(ctx, f"FILE:{ccache}".encode()):
            server = krb5.unparse_name_flags(ctx, c.server).decode()
            if server.startswith("krb5_ccache_conf_data") or "X-CACHECONF" in server:
                continue
            t = c.times
            blocks.append(
                _block(
                    len(blocks),
                    _at(krb5.unparse_name_flags(ctx, c.client).decode()),
                    _at(server),
                    int(c.ticket_flags_raw),
                    (t.starttime or t.authtime, t.endtime, t.renew_till),
                    "0x1 -> PRIMARY" if server.startswith("krbtgt/") else "0",
                )
            )
    if not blocks:  # the ticket the logon was accepted with
        principal = os.environ.get("USERPRINCIPALNAME", "user@REALM")
        realm = principal.rpartition("@")[2]
        now = int(time.time())
        accepted = f"http/{host_fqdn} @ {realm}"
        blocks.append(_block(0, _at(principal), accepted, 0x40A10000, (now, now + 36000, 0), "0x8 -> ASC"))
    return blocks


def main(host_fqdn: str) -> int:
    blocks = tickets(host_fqdn)
    out = [f"\nCurrent LogonId is 0:0x{os.getpid():x}\n", f"\nCached Tickets: ({len(blocks)})\n\n"]
    out.append("\n".join(blocks))
    sys.stdout.write("".join(out))
    return 0


def script(python: str, host_fqdn: str) -> str:
    """The executable file's text: this module, run by the host's Python."""
    return f"#!{python}\nimport sys\nfrom winexec.sim.klist import main\nsys.exit(main({host_fqdn!r}))\n"

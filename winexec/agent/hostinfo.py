"""Who and where the agent runs, and whether a delegated Kerberos TGT is usable -- cheaply."""

from __future__ import annotations

import contextlib
import getpass
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def host_name() -> str:
    return socket.getfqdn() or platform.node()


def computer_name() -> str:
    """``COMPUTERNAME`` on Windows (and in the stand-in, whose hosts share one machine)."""
    return os.environ.get("COMPUTERNAME") or socket.gethostname()


def user_name() -> str:
    """``DOMAIN\\user`` on Windows (USERDOMAIN/USERNAME), else the login name."""
    user = os.environ.get("USERNAME")
    domain = os.environ.get("USERDOMAIN")
    if user:
        return f"{domain}\\{user}" if domain else user
    try:
        return getpass.getuser()
    except Exception:  # pwd may be missing (Windows, windows-like mode)
        return "unknown"


#: ``klist`` ticket flag: the ticket was forwarded (a delegated TGT). Bit values are the
#: Kerberos flags as Windows' KERB_TICKET_CACHE_INFO and MIT's TKT_FLG_* both number them.
FORWARDED = 0x20000000
_BLOCK = re.compile(r"^#\d+>", re.M)
_FLAGS = re.compile(r"\b0x([0-9a-fA-F]+)\s*->")


def klist_exe() -> Path | None:
    """Windows' own ``%SystemRoot%\\System32\\klist.exe`` (by full path: a JDK's klist may be on PATH)."""
    root = os.environ.get("SystemRoot") or os.environ.get("SYSTEMROOT")
    path = Path(root) / "System32" / "klist.exe" if root else None
    return path if path is not None and path.is_file() else None


def parse_klist(text: str) -> list[dict[str, Any]]:
    """The tickets in ``klist`` output: ``client``, ``server``, ``flags`` (int).

    Read by shape, not by label (klist's labels are localised, the flag hex and the
    ``#N>`` blocks are not): a block's first line is its client, the line naming ``krbtgt/`` or
    any ``x/y @ REALM`` its server, and the hex before ``->`` its ticket flags.
    """
    out = []
    starts = [m.start() for m in _BLOCK.finditer(text)]
    for begin, end in zip(starts, [*starts[1:], len(text)], strict=True):
        lines = [ln.strip() for ln in text[begin:end].splitlines() if ln.strip()]
        value = [ln.split(":", 1)[1].strip() if ":" in ln else "" for ln in lines]
        flags = next((int(m.group(1), 16) for ln in lines if (m := _FLAGS.search(ln))), 0)
        client = value[0] if value else ""
        server = value[1] if len(value) > 1 else ""
        out.append(
            {"client": client.replace(" @ ", "@"), "server": server.replace(" @ ", "@"), "flags": flags}
        )
    return out


def delegation() -> dict[str, Any]:
    """What this logon holds for a second hop; never raises (delegation is optional).

    ``delegated``: a forwarded TGT is here (``principal`` is its client). ``seen``: what was
    found -- ``forwarded TGT``, ``TGT, not forwarded``, ``no TGT`` (the logon has only the
    ticket it was accepted with: a second hop then works only by constrained delegation, the
    host's account asking the KDC, which ``klist`` cannot show in advance), ``no Kerberos logon``
    (NTLM) or ``unknown``; ``via``: how it was read.
    On Windows the logon's tickets are in LSA, where only ``klist`` in this session sees them.
    """
    exe = klist_exe()
    if exe is not None:
        try:
            done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=15, errors="replace")
        except (OSError, subprocess.SubprocessError) as e:
            return {"delegated": False, "principal": None, "seen": "unknown", "via": f"klist: {e}"}
        if done.returncode != 0:  # 0xc000005f: "A specified logon session does not exist" (NTLM)
            return {"delegated": False, "principal": None, "seen": "no Kerberos logon", "via": "klist"}
        tgts = [t for t in parse_klist(done.stdout) if t["server"].lower().startswith("krbtgt/")]
        forwarded = [t for t in tgts if t["flags"] & FORWARDED]
        if forwarded:
            return {
                "delegated": True,
                "principal": forwarded[0]["client"],
                "seen": "forwarded TGT",
                "via": "klist",
            }
        seen = "TGT, not forwarded" if tgts else "no TGT"
        return {
            "delegated": False,
            "principal": tgts[0]["client"] if tgts else None,
            "seen": seen,
            "via": "klist",
        }
    delegated, principal = _ccache_tgt()
    return {
        "delegated": delegated,
        "principal": principal,
        "seen": "forwarded TGT" if delegated else "no TGT",
        "via": "ccache",
    }


def _ccache_tgt() -> tuple[bool, str | None]:
    """POSIX hosts: whether ``KRB5CCNAME`` holds a usable TGT (``gssapi``, else MIT ``klist -s``)."""
    try:
        import gssapi
    except ImportError:
        pass
    else:
        try:
            creds = gssapi.Credentials(usage="initiate")
            lifetime = creds.lifetime
            if lifetime is not None and lifetime <= 0:
                return False, None
            return True, str(creds.name)
        except Exception:
            return False, None
    klist = shutil.which("klist")
    if not klist or sys.platform == "win32":
        return False, None
    try:
        ok = subprocess.run([klist, "-s"], capture_output=True, timeout=5).returncode == 0
        if not ok:
            return False, None
        out = subprocess.run([klist], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if "principal:" in line.lower():
                return True, line.split(":", 1)[1].strip()
        return True, None
    except (OSError, subprocess.SubprocessError):
        return False, None


def self_check(spool: Path | None) -> dict[str, Any]:
    """Facts ``airflow winexec check`` shows about a host, ``spool`` its run folder if usable;
    never raises."""
    from importlib import metadata

    info: dict[str, Any] = {
        "ok": True,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "host": host_name(),
        "user": user_name(),
    }
    problems: list[str] = []
    for dist, key in (("apache-airflow-task-sdk", "task_sdk"), ("winexec", "winexec")):
        try:
            info[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[key] = None
            problems.append(f"{dist} not installed")
    found = delegation()
    info["delegated"] = found["delegated"]
    info["principal"] = found["principal"]
    info["tickets_seen"] = found["seen"]
    try:
        import psutil

        info["memory_free"] = int(psutil.virtual_memory().available)
    except Exception:
        info["memory_free"] = None
    if spool is not None:
        info["spool"] = str(spool)
        with contextlib.suppress(OSError):
            info["disk_free"] = shutil.disk_usage(spool).free
    if problems:
        info["ok"] = False
        info["problems"] = problems
    return info

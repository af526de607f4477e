"""Who and where the agent runs, and whether a delegated Kerberos TGT is usable -- cheaply."""

from __future__ import annotations

import contextlib
import getpass
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def host_name() -> str:
    return socket.getfqdn() or platform.node()


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


def delegated_tgt() -> tuple[bool, str | None]:
    """Whether the default credential cache (``KRB5CCNAME``) holds a usable TGT, and its principal.

    Uses ``gssapi`` when importable (no network traffic: it only reads the cache), else
    ``klist -s``. Never raises: delegation is optional.
    """
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


def self_check(spool: Path | None = None) -> dict[str, Any]:
    """Facts ``airflow winexec check`` shows about a host; never raises."""
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
    delegated, principal = delegated_tgt()
    info["delegated"] = delegated
    info["principal"] = principal
    try:
        import psutil

        info["memory_free"] = int(psutil.virtual_memory().available)
    except Exception:
        info["memory_free"] = None
    with contextlib.suppress(Exception):
        from winexec.agent.spool import spool_dir

        spool = spool or spool_dir()
    if spool is not None:
        info["spool"] = str(spool)
        with contextlib.suppress(OSError):
            info["disk_free"] = shutil.disk_usage(spool).free
    if problems:
        info["ok"] = False
        info["problems"] = problems
    return info

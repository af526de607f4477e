"""Domain accounts as OS accounts: each principal's processes run as a user of its own.

On a shared Windows host every principal's logon is a different account: its own profile
(``C:\\Users\\<name>``, readable by that account, SYSTEM and Administrators only) and TEMP
inside it, and NTFS ACLs between principals. When the stand-in runs as root (as CI does), it
models that with one local account per principal (``wxsim-<name>``) and POSIX permissions; not
as root, every process runs as the caller, as before.

A folder every principal of the domain must reach -- the Python install, a DAGs or log share,
Airflow's home -- is granted to the ``wxsim-users`` group (Domain Users) by :func:`share`, as an
administrator grants a share; with POSIX default ACLs, the grant is inherited by what is
created there later, as an inherited NTFS ACE is. Its ancestors get traverse only: Windows
grants "Bypass traverse checking" to Everyone by default.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The group every principal's account is in: the domain's "Domain Users".
DOMAIN_USERS = "wxsim-users"
PREFIX = "wxsim-"
#: Linux user names are at most 32 characters.
_MAX_NAME = 32


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def enabled() -> bool:
    """Accounts of their own need root (to create them and start processes as them) and setfacl."""
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("useradd", "groupadd", "setfacl"))


def account_name(user: str) -> str:
    safe = "".join(c for c in user.lower() if c.isascii() and (c.isalnum() or c in "-_"))
    return (PREFIX + (safe or "user"))[:_MAX_NAME]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # Test workers and hosts create accounts concurrently; useradd refuses while another holds
    # /etc/passwd's lock, so the stand-in takes its own lock first.
    with open(Path(tempfile.gettempdir()) / "winexec-sim-accounts.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _ensure_group() -> int:
    with contextlib.suppress(KeyError):
        return grp.getgrnam(DOMAIN_USERS).gr_gid
    r = _run(["groupadd", "--system", DOMAIN_USERS])
    if r.returncode not in (0, 9):  # 9: it exists
        raise RuntimeError(f"groupadd {DOMAIN_USERS}: {r.stderr.strip()}")
    return grp.getgrnam(DOMAIN_USERS).gr_gid


def account_for(user: str) -> Account:
    """The local account of the principal whose user part is ``user``, created on first use."""
    name = account_name(user)
    with _locked():
        domain_users = _ensure_group()
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            r = _run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--groups",
                    DOMAIN_USERS,
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ]
            )
            if r.returncode not in (0, 9):
                raise RuntimeError(f"useradd {name}: {r.stderr.strip()}") from None
            pw = pwd.getpwnam(name)
    return Account(name=name, uid=pw.pw_uid, gid=pw.pw_gid, groups=(domain_users,))


def strip_acl(path: Path) -> None:
    """Drop every ACL entry ``path`` inherited (from a share above it): its mode alone governs."""
    if enabled():
        _setfacl("-b", str(path))


def private_dir(path: Path, account: Account | None) -> Path:
    """A folder only ``account`` (and root, the host's SYSTEM) may enter, as a user profile is;
    with no account, only root (the KDC's database and keytabs)."""
    path.mkdir(parents=True, exist_ok=True)
    strip_acl(path)  # nothing inherited from a share above it
    if account is not None:
        os.chown(path, account.uid, account.gid)
    path.chmod(0o700)
    return path


def profile_dir(users: Path, user: str, account: Account | None) -> Path:
    """``<users>/<user>``: the principal's profile, with its TEMP and Documents (where a remote
    session starts), kept across its logons as Windows keeps a profile."""
    profile = users / user
    if not profile.exists():
        private_dir(profile, account)
        for sub in ("AppData", "AppData/Local", "AppData/Local/Temp", "Documents"):
            (profile / sub).mkdir(exist_ok=True)
            if account is not None:
                os.chown(profile / sub, account.uid, account.gid)
        traverse(profile)
    return profile


_traversable: set[Path] = set()


def traverse(path: Path) -> None:
    """Let every principal pass through ``path``'s ancestors (Bypass traverse checking)."""
    if not enabled():
        return
    for parent in (*reversed(path.absolute().parents), *reversed(path.resolve().parents)):
        if parent in _traversable:
            continue
        if parent.stat().st_mode & 0o001 == 0:
            # keep what a share gave (rwx), add x; setting it also restores the ACL mask, which
            # a chmod (pytest's of its own temporary root, say) may have narrowed since
            granted = _granted(parent).replace("-", "").replace("x", "")
            _setfacl("-m", f"g:{DOMAIN_USERS}:{granted}x", str(parent))
        _traversable.add(parent)


def _granted(path: Path) -> str:
    """The access entry ``path`` gives Domain Users ("rw-", ...), "" if none."""
    r = _run(["getfacl", "--omit-header", "--absolute-names", str(path)])
    for line in r.stdout.splitlines():
        if line.startswith(f"group:{DOMAIN_USERS}:"):
            return line.split(":")[2].split()[0]
    return ""


def share(path: Path, writable: bool = False) -> None:
    """Grant ``path`` to every principal: read (an install, a DAGs share) or modify (a log share)."""
    if not enabled():
        return
    _ensure_group()
    traverse(path)
    if writable:  # inherited by what is created there later, as an inherited ACE is
        _setfacl("-R", "-m", f"g:{DOMAIN_USERS}:rwX,d:g:{DOMAIN_USERS}:rwX", str(path))
    else:
        _setfacl("-m", f"g:{DOMAIN_USERS}:rX", str(path))


def _setfacl(*args: str) -> None:
    argv = ["setfacl", *args]
    r = _run(argv)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")

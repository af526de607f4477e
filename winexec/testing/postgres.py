"""A throwaway PostgreSQL server on loopback (Debian's ``postgresql`` package), for Airflow with
more than one scheduler: SQLite allows one.

``initdb`` refuses to run as root, so as root the cluster belongs to Debian's ``postgres``
account, in a folder of its own under the system's temporary directory (the account must reach
it). Trust authentication, on 127.0.0.1 only, for the life of one test module.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from winexec.sim.kdc import free_port


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (scripts/setup.sh does)")
    return Path(versions[-1])


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextlib.contextmanager
def running_postgres(database: str = "airflow") -> Iterator[str]:
    """Start a server (its data removed afterwards); yield a SQLAlchemy URL for ``database``."""
    workdir = Path(tempfile.mkdtemp(prefix="winexec-postgres-"))
    bindir, data, port = _bindir(), workdir / "pgdata", free_port()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run(
        _as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        **run,  # type: ignore[call-overload]
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir} -c max_connections=200 -c fsync=off"
    log = workdir / "postgres.log"
    subprocess.run(
        _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        **run,  # type: ignore[call-overload]
    )
    try:
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
            **run,  # type: ignore[call-overload]
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(workdir, ignore_errors=True)

"""A real MIT Kerberos KDC on loopback, in a temporary directory.

Built from ``kdb5_util``/``kadmin.local``/``krb5kdc`` directly rather than ``k5test``: the
binaries come with Debian's ``krb5-kdc``/``krb5-admin-server`` that the project installs anyway,
we need only a handful of operations (create, add principal, export keytab, change lifetimes,
stop and restart the KDC for outage tests), and owning the few lines keeps short lifetimes,
free ports and clean shutdown under our control without another dependency.

Used by the test suite, by ``winexec.sim`` and by the demo.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from winexec.sim import accounts

_SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")


def _tool(name: str) -> str:
    for d in _SBIN:
        p = Path(d) / name
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(
            f"{name} not found: install Debian's krb5-kdc and krb5-admin-server (scripts/setup.sh does)"
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Realm:
    """One realm: its KDC process, config files and keytabs under ``workdir``.

    ``ticket_lifetime``/``renew_lifetime`` (seconds) shorten every ticket the KDC issues, so
    renewal is exercised in seconds rather than hours.
    """

    name: str = "WINEXEC.TEST"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="winexec-kdc-")))
    ticket_lifetime: int = 10 * 3600
    renew_lifetime: int = 7 * 24 * 3600
    kdc_port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _owns_workdir: bool = field(default=True, repr=False)

    # -- paths -----------------------------------------------------------------------------
    @property
    def krb5_conf(self) -> Path:
        return self.workdir / "krb5.conf"

    @property
    def kdc_conf(self) -> Path:
        return self.workdir / "kdc.conf"

    @property
    def domain(self) -> str:
        """DNS domain of the realm's hosts: ``win01.<domain>``."""
        return self.name.lower()

    def keytab_path(self, principal: str) -> Path:
        safe = principal.split("@")[0].replace("/", "_")
        return self.workdir / "keytabs" / f"{safe}.keytab"

    def principal(self, name: str) -> str:
        return name if "@" in name else f"{name}@{self.name}"

    def env(self) -> dict[str, str]:
        """Environment that points MIT Kerberos (library and tools) at this realm."""
        return {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "KRB5CCNAME": f"FILE:{self.workdir / 'ccache-default'}",
        }

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Realm:
        # The KDC's database and every keytab stay the scheduler side's: no principal's process on
        # a host may read them, even when the realm lives inside a folder shared with the hosts.
        accounts.private_dir(self.workdir, None)
        accounts.private_dir(self.workdir / "keytabs", None)
        self._write_configs()
        accounts.share(self.krb5_conf)  # what a domain-joined host has: the realm's configuration
        self._run(_tool("kdb5_util"), "create", "-s", "-r", self.name, "-P", "winexec-master-key")
        life, renew = f"{self.ticket_lifetime} seconds", f"{self.renew_lifetime} seconds"
        self.kadmin(f'modprinc -maxlife "{life}" -maxrenewlife "{renew}" krbtgt/{self.name}@{self.name}')
        self.start_kdc()
        atexit.register(self.stop)
        return self

    def start_kdc(self) -> None:
        """Start (or restart, after :meth:`stop_kdc`) the KDC process and wait until it answers."""
        if self._proc and self._proc.poll() is None:
            return
        log = open(self.workdir / "krb5kdc.out", "ab")
        self._proc = subprocess.Popen(
            [_tool("krb5kdc"), "-n", "-r", self.name],
            env={**os.environ, **self.env()},
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"krb5kdc exited at start; see {self.workdir / 'kdc.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.kdc_port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"krb5kdc did not listen on 127.0.0.1:{self.kdc_port} within 10 s")

    def stop_kdc(self) -> None:
        """Stop the KDC process only (the database stays), to simulate an outage."""
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    @property
    def kdc_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        self.stop_kdc()
        atexit.unregister(self.stop)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Realm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- principals ------------------------------------------------------------------------
    def kadmin(self, query: str) -> str:
        return self._run(_tool("kadmin.local"), "-r", self.name, "-q", query)

    def add_principal(self, name: str, keytab: Path | None = None) -> Path:
        """Create ``name`` with a random key and export it to a 0600 keytab; returns its path."""
        princ = self.principal(name)
        life, renew = f"{self.ticket_lifetime} seconds", f"{self.renew_lifetime} seconds"
        self.kadmin(f'addprinc -randkey -maxlife "{life}" -maxrenewlife "{renew}" {princ}')
        path = keytab or self.keytab_path(princ)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.kadmin(f"ktadd -k {path} {princ}")
        path.chmod(0o600)
        return path

    def add_service(self, host: str, service: str = "HTTP") -> Path:
        """A service principal ``<service>/<host>`` and its keytab (what a Windows host's SPN is)."""
        return self.add_principal(f"{service}/{host}")

    def host_fqdn(self, short: str) -> str:
        return f"{short}.{self.domain}"

    # -- internals -------------------------------------------------------------------------
    def _run(self, *argv: str) -> str:
        proc = subprocess.run(
            argv,
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        # kadmin.local exits 0 on most failures; anything on stderr but the benign notes is one.
        problems = [
            line
            for line in proc.stderr.splitlines()
            if line.strip() and "No policy specified" not in line and "Authenticating as" not in line
        ]
        if proc.returncode != 0 or problems:
            detail = "; ".join(problems) or proc.stdout.strip()
            raise RuntimeError(f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed: {detail}")
        return proc.stdout

    def _write_configs(self) -> None:
        w = self.workdir
        self.krb5_conf.write_text(
            f"""[libdefaults]
    default_realm = {self.name}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    dns_canonicalize_hostname = false
    forwardable = true
    udp_preference_limit = 1
    ticket_lifetime = {self.ticket_lifetime}
    renew_lifetime = {self.renew_lifetime}
    default_ccache_name = FILE:{w / "ccache-default"}

[realms]
    {self.name} = {{
        kdc = 127.0.0.1:{self.kdc_port}
        admin_server = 127.0.0.1:{self.kdc_port}
    }}

[domain_realm]
    .{self.domain} = {self.name}
    {self.domain} = {self.name}
"""
        )
        self.kdc_conf.write_text(
            f"""[kdcdefaults]
    kdc_ports = {self.kdc_port}
    kdc_tcp_ports = {self.kdc_port}

[realms]
    {self.name} = {{
        database_name = {w / "principal"}
        key_stash_file = {w / "stash"}
        acl_file = {w / "kadm5.acl"}
        kdc_listen = 127.0.0.1:{self.kdc_port}
        kdc_tcp_listen = 127.0.0.1:{self.kdc_port}
        max_life = {self.ticket_lifetime}s
        max_renewable_life = {self.renew_lifetime}s
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
        default_principal_flags = +preauth
    }}

[logging]
    kdc = FILE:{w / "kdc.log"}
    admin_server = FILE:{w / "kadmin.log"}
    default = FILE:{w / "krb5lib.log"}
"""
        )
        (w / "kadm5.acl").write_text(f"*/admin@{self.name} *\n")

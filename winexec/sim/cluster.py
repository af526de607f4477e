"""Simulated Windows hosts (:class:`SimHost`) and a pool of them (:class:`SimCluster`).

Each host has its own FQDN ``winNN.<realm domain>``, ``HTTP/<fqdn>`` keytab, HTTP and HTTPS
ports on 127.0.0.1 and certificate from the cluster's CA. Clients connect to the IP and port and
use the FQDN only for the SPN, so no name resolution is touched.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winexec.sim import accounts
from winexec.sim.auth import Acceptor
from winexec.sim.certs import CertificateAuthority
from winexec.sim.faults import Faults
from winexec.sim.kdc import Realm, free_port
from winexec.sim.klist import script as klist_script
from winexec.sim.processes import NativeProcess
from winexec.sim.server import Listener, WinRMService
from winexec.sim.shells import POWERSHELL_7, WINDOWS_POWERSHELL_51, Endpoint, PSRPShell, Shell

log = logging.getLogger("winexec.sim")


@dataclass
class Quotas:
    """WinRM quotas of a PSRP shell (``winrm/config/winrs``, the Microsoft.PowerShell plugin's
    ``Quotas``, ``winrm/config/service``): the strictest default a source reports for Windows
    Server 2016-2022 (README: "Limits and faults")."""

    MaxShellsPerUser: int = 25
    MaxConcurrentUsers: int = 5
    MaxConcurrentOperationsPerUser: int = 1500
    MaxProcessesPerShell: int = 15
    MaxMemoryPerShellMB: int = 1024
    IdleTimeout: float = 7200.0  # seconds (WinRM stores 7200000 ms)
    MaxEnvelopeSizekb: int = 500


class SimHost:
    """One Windows host: WinRM over HTTP and HTTPS, shells, processes, faults."""

    MONITOR_INTERVAL = 0.5

    def __init__(
        self,
        realm: Realm,
        short_name: str,
        ca: CertificateAuthority,
        workdir: Path,
        windows_like: bool = True,
        quotas: Quotas | None = None,
        powershell7: bool = False,
    ) -> None:
        self.realm = realm
        #: PSRP session configurations by lower-case name. Every Windows Server has
        #: Microsoft.PowerShell (Windows PowerShell 5.1); installing PowerShell 7 and running its
        #: Enable-PSRemoting adds PowerShell.7 (Install-PowerShellRemoting.ps1).
        self.endpoints: dict[str, Endpoint] = {"microsoft.powershell": WINDOWS_POWERSHELL_51}
        if powershell7:
            self.endpoints["powershell.7"] = POWERSHELL_7
        self.short_name = short_name
        self.name = realm.host_fqdn(short_name)
        self.address = "127.0.0.1"
        self.windows_like = windows_like
        #: each principal's processes run as an OS account of its own (only as root: accounts.py)
        self.accounts = accounts.enabled()
        self.quotas = quotas or Quotas()
        #: users (the principal's user part) in the host's Administrators group; none by default
        self.administrators: set[str] = set()
        self.workdir = workdir
        self.ca = ca
        self.ca_cert: Path = ca.cert_path
        self.spn = f"HTTP/{self.name}@{realm.name}"
        self.keytab: Path | None = None
        self.faults = Faults(self)
        self.service = WinRMService(self)
        self.pipeline_log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self._http: Listener | None = None
        self._https: Listener | None = None
        self._up = False
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> SimHost:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # pypsrp asks for host/<fqdn> by default, pywinrm for HTTP/<fqdn>; a Windows machine
        # account answers both, so the host keytab holds both.
        self.keytab = self.realm.keytab_path(self.spn)
        for service in ("HTTP", "host"):
            princ = f"{service}/{self.name}@{self.realm.name}"
            try:
                self.realm.add_principal(princ, keytab=self.keytab)
            except RuntimeError as e:  # a host of this name existed before: re-key it
                if "already exists" not in str(e):
                    raise
                self.realm.kadmin(f"ktadd -k {self.keytab} {princ}")
        self.acceptor = Acceptor(self.spn, self.keytab, self.workdir / "logons")
        self._prepare_program_data()
        self._install_system32()
        cert, key = self.ca.issue(self.name, self.address)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._http = Listener(self, free_port())
        self._https = Listener(self, free_port(), ctx)
        self._go_up()
        self._monitor = threading.Thread(
            target=self._watch, daemon=True, name=f"sim-monitor-{self.short_name}"
        )
        self._monitor.start()
        return self

    @property
    def program_data(self) -> Path:
        """``%ProgramData%`` of this host (its processes see it in ``ProgramData``)."""
        return self.workdir / "ProgramData"

    def _prepare_program_data(self) -> None:
        """The host as installed: ``ProgramData\\winexec\\runs`` prepared by its administrator
        (docs/windows-host-setup.md): every account adds entries there, only an entry's owner may
        change or remove it -- on POSIX root's folder with mode 1777, the sticky bit."""
        runs = self.program_data / "winexec" / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        for d in (self.program_data, runs.parent, runs):
            accounts.strip_acl(d)
            d.chmod(0o755)
        runs.chmod(0o1777)
        if self.accounts:
            accounts.traverse(runs)

    @property
    def system_root(self) -> Path:
        """``%SystemRoot%`` of this host (``SystemRoot`` in its processes' environment)."""
        return self.workdir / "Windows"

    def _install_system32(self) -> None:
        """The Windows tools winexec calls by full path: ``System32\\klist.exe`` (winexec.sim.klist)."""
        system32 = self.system_root / "System32"
        system32.mkdir(parents=True, exist_ok=True)
        klist = system32 / "klist.exe"
        klist.write_text(klist_script(sys.executable, self.name))
        for d in (self.system_root, system32):
            accounts.strip_acl(d)
            d.chmod(0o755)
        klist.chmod(0o755)
        if self.accounts:
            accounts.traverse(klist)

    def stop(self) -> None:
        self._stop.set()
        self._go_down()
        if self._monitor is not None:
            self._monitor.join(5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def http_port(self) -> int:
        assert self._http is not None
        return self._http.port

    @property
    def https_port(self) -> int:
        assert self._https is not None
        return self._https.port

    @property
    def listening(self) -> bool:
        return self._up

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.http_port}/wsman"

    def _go_down(self) -> None:
        self._up = False
        for lst in (self._http, self._https):
            if lst is not None:
                lst.close(drop=True)
        self.service.close_all()

    def _go_up(self) -> None:
        self._up = True
        if not self.faults.refusing:
            for lst in (self._http, self._https):
                if lst is not None:
                    lst.open()

    def _set_refusing(self, on: bool) -> None:
        for lst in (self._http, self._https):
            if lst is None:
                continue
            if on:
                lst.close(drop=True)
            elif self._up:
                lst.open()

    # -- inspection ------------------------------------------------------------------------
    def shells(self) -> list[Shell]:
        with self.service.lock:
            return [s for s in self.service.shells.values() if not s.closed]

    @property
    def shell_count(self) -> int:
        return len(self.shells())

    def _all_native(self) -> list[NativeProcess]:
        return [p for s in self.shells() for p in list(s.processes.values()) if p.running]

    def processes(self) -> list[dict[str, Any]]:
        """Live processes the host runs for clients (whole trees): pid, argv, env, user, shell_id."""
        out: list[dict[str, Any]] = []
        for shell in self.shells():
            for proc in list(shell.processes.values()):
                if not proc.running:
                    continue
                for p in proc.tree():
                    try:
                        argv = p.cmdline()
                        env = p.environ()
                    except Exception:
                        continue
                    out.append(
                        {
                            "pid": p.pid,
                            "argv": argv,
                            "env": env,
                            "user": shell.owner.principal,
                            "shell_id": shell.id,
                        }
                    )
        return out

    def record_start(self, shell: Shell, command_id: str, argv: list[str]) -> None:
        with self._log_lock:
            self.pipeline_log.append(
                {
                    "time": time.time(),
                    "user": shell.owner.principal,
                    "shell_id": shell.id,
                    "command_id": command_id,
                    "argv": list(argv),
                    "delegated": shell.delegated,
                    "endpoint": shell.endpoint.profile if isinstance(shell, PSRPShell) else "cmd",
                    "exit_code": None,
                    "ended": None,
                }
            )
        log.info("host %s: %s started %s", self.short_name, shell.owner.principal, argv[0])

    def record_exit(self, shell: Shell, command_id: str, code: int) -> None:
        with self._log_lock:
            for entry in reversed(self.pipeline_log):
                if entry["command_id"] == command_id:
                    entry["exit_code"] = code
                    entry["ended"] = time.time()
                    break

    # -- quotas that need watching ---------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(self.MONITOR_INTERVAL):
            try:
                self._check_quotas()
            except Exception:  # the monitor must survive a shell closing under it
                log.debug("quota monitor error", exc_info=True)

    def _check_quotas(self) -> None:
        now = time.monotonic()
        for shell in self.shells():
            if shell.idle_expired(now):
                log.info("host %s: shell %s idle beyond IdleTimeout, closing", self.short_name, shell.id)
                self.service.close_shell(shell.id)
                continue
            limit = self.quotas.MaxMemoryPerShellMB * 1024 * 1024
            procs = [p for p in list(shell.processes.values()) if p.running]
            if not procs:
                continue
            used = sum(p.rss_bytes() for p in procs)
            if used > limit:
                log.info("host %s: shell %s exceeded MaxMemoryPerShellMB, killing", self.short_name, shell.id)
                reason = (
                    f"The process was terminated because the shell exceeded the memory quota "
                    f"MaxMemoryPerShellMB ({self.quotas.MaxMemoryPerShellMB} MB)."
                )
                if isinstance(shell, PSRPShell):
                    with shell.cond:
                        for run in shell.runs.values():
                            if run.process in procs:
                                run.kill_reason = reason
                for p in procs:
                    p.kill_tree()


class SimCluster:
    """A realm's pool of simulated Windows hosts ``win01``, ``win02`` ...

    ``realm`` must be started; the cluster adds the hosts' service principals to it.
    """

    def __init__(
        self,
        realm: Realm,
        hosts: int = 3,
        windows_like: bool = True,
        quotas: Quotas | None = None,
        workdir: Path | None = None,
        powershell7: bool = False,
    ) -> None:
        self.realm = realm
        self.powershell7 = powershell7  # hosts also have PowerShell 7's PowerShell.7 endpoint
        self.initial_hosts = hosts
        self.windows_like = windows_like
        self.default_quotas = quotas
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="winexec-sim-"))
        self.hosts: list[SimHost] = []
        self.ca: CertificateAuthority | None = None
        self._counter = 0
        self._lock = threading.Lock()

    def start(self) -> SimCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority(self.workdir / "pki")
        # the Python "installed on the hosts" is this interpreter with this project
        for installed in (Path(sys.executable), Path(__file__)):
            accounts.traverse(installed)
        try:
            for _ in range(self.initial_hosts):
                self.add_host()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def ca_cert(self) -> Path:
        assert self.ca is not None
        return self.ca.cert_path

    def add_host(
        self, short_name: str | None = None, quotas: Quotas | None = None, powershell7: bool | None = None
    ) -> SimHost:
        assert self.ca is not None, "start() the cluster first"
        with self._lock:
            taken = {h.short_name for h in self.hosts}
            while short_name is None or short_name in taken:
                if short_name in taken:
                    raise ValueError(f"host {short_name} exists")
                self._counter += 1
                candidate = f"win{self._counter:02d}"
                short_name = None if candidate in taken else candidate
            q = quotas or (Quotas(**vars(self.default_quotas)) if self.default_quotas else Quotas())
            ps7 = self.powershell7 if powershell7 is None else powershell7
            host = SimHost(
                self.realm, short_name, self.ca, self.workdir / short_name, self.windows_like, q, ps7
            )
        host.start()
        with self._lock:
            self.hosts.append(host)
        return host

    def host(self, name: str) -> SimHost:
        for h in self.hosts:
            if name in (h.name, h.short_name):
                return h
        raise KeyError(name)

    def remove_host(self, name: str) -> None:
        host = self.host(name)
        with self._lock:
            self.hosts.remove(host)
        host.stop()

    def stop(self) -> None:
        with self._lock:
            hosts, self.hosts = list(self.hosts), []
        for h in hosts:
            with contextlib.suppress(Exception):
                h.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

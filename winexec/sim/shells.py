"""WinRS shells: the PowerShell (PSRP) shell and the plain ``cmd`` shell.

A shell belongs to the principal that created it, keeps the delegated ticket of that logon in a
ccache private to the shell, and outlives the HTTP connection that created it (WinRM's
disconnected sessions): output produced while no client listens is buffered until a client
reconnects and receives it.

PSRP is handled by psrpcore's server objects; this module moves their fragments in and out of
WS-Man ``Send``/``Receive`` streams and runs each pipeline's native command as a process.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psrpcore
from psrpcore.types import (
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    NETException,
    PSInvocationState,
    PSVersion,
    RunspacePoolState,
)

from winexec.sim import accounts, wsman
from winexec.sim.auth import Identity, copy_ccache
from winexec.sim.processes import NativeProcess
from winexec.sim.wsman import NS, WSManFault, q

if TYPE_CHECKING:
    from winexec.sim.cluster import SimHost

log = logging.getLogger("winexec.sim")

#: MS-PSRP 3.1.5.3.9 spells it so, and so does the plugin (``WSManPlugin.cs``: ``CtrlCSignal``).
PS_STOP_SIGNAL = "powershell/signal/crtl_c"
TERMINATE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate"

NOT_ENOUGH_QUOTA = "Not enough quota is available to process this command"


def _error_record(
    message: str,
    fqid: str,
    category: ErrorCategory,
    reason: str,
    target: Any = None,
    type_names: list[str] | None = None,
) -> ErrorRecord:
    exc = NETException(Message=message)
    if type_names:
        exc.PSObject.type_names = [*type_names, *exc.PSTypeNames]
    return ErrorRecord(
        Exception=exc,
        CategoryInfo=ErrorCategoryInfo(Category=category, Reason=reason),
        TargetObject=target,
        FullyQualifiedErrorId=fqid,
    )


def command_not_found(name: str) -> ErrorRecord:
    return _error_record(
        f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable "
        "program. Check the spelling of the name, or if a path was included, verify that the path is correct "
        "and try again.",
        "CommandNotFoundException",
        ErrorCategory.ObjectNotFound,
        "CommandNotFoundException",
        target=name,
        type_names=["System.Management.Automation.CommandNotFoundException"],
    )


class Shell:
    """State common to both shell kinds."""

    kind = "shell"

    def __init__(
        self,
        host: SimHost,
        shell_id: str,
        resource_uri: str,
        owner: Identity,
        client_ip: str,
        input_streams: str,
        output_streams: str,
        environment: dict[str, str],
        session_id: str | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.id = shell_id
        self.resource_uri = resource_uri
        self.owner = owner
        self.client_ip = client_ip
        self.input_streams = input_streams
        self.output_streams = output_streams
        self.environment = environment
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.in_flight = 0  # requests being served: a shell is idle only between them
        self.state = "Connected"
        #: the client session (``wsmv:SessionId``) the shell is connected to (MS-PSRP 3.1.4.9)
        self.session_id = session_id
        self.idle_timeout = self.capped_idle_timeout(idle_timeout)
        self.closed = False
        self.cond = threading.Condition(threading.RLock())
        self.processes: dict[str, NativeProcess] = {}
        #: the OS account the owner's processes run as (None: as the stand-in itself, not root)
        self.account = accounts.account_for(owner.user) if host.accounts else None
        users = host.workdir / "Users"
        self.profile = accounts.profile_dir(users, owner.user.replace("/", "_"), self.account)
        # The logon session's own folder, holding its ticket cache (LSA keeps a logon's tickets).
        # Unique per shell instance: a client may reuse a ShellId (pypsrp lets it choose one) while
        # the previous shell of that id is still being torn down.
        self.workdir = host.workdir / "shells" / f"{shell_id}-{uuid.uuid4().hex[:8]}"
        accounts.private_dir(self.workdir, self.account)
        accounts.traverse(self.workdir)
        self.ccache = self.workdir / "krb5cc"
        self.delegated = False
        if owner.delegated is not None:
            try:
                copy_ccache(owner.delegated, self.ccache)
                if self.account is not None:
                    os.chown(self.ccache, self.account.uid, self.account.gid)
                self.delegated = True
            except OSError as e:  # as on Windows: the logon simply has no forwarded TGT
                log.warning("host %s: cannot copy delegated credentials: %s", host.name, e)

    # -- environment of processes ------------------------------------------------------------
    def process_env(self) -> dict[str, str]:
        """What a process started in this shell sees: the user's identity and logon ticket only."""
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONHOME")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.setdefault("PATH", os.defpath)
        realm = self.owner.realm or self.host.realm.name
        env.update(
            {
                "USERNAME": self.owner.user,
                "USERDOMAIN": realm.split(".")[0],
                "USERDNSDOMAIN": realm,
                "USERPRINCIPALNAME": self.owner.principal,
                "COMPUTERNAME": self.host.short_name.upper(),
                "USERPROFILE": str(self.profile),
                "HOME": str(self.profile),
                "TEMP": str(self.temp),
                "TMP": str(self.temp),
                "ProgramData": str(self.host.program_data),
                "SystemRoot": str(self.host.system_root),
                "KRB5_CONFIG": str(self.host.realm.krb5_conf),
                # Always private to this shell: the delegated TGT if there was one, else nothing.
                "KRB5CCNAME": f"FILE:{self.ccache}",
                # CPython on Windows writes to a pipe in the ANSI code page, block-buffered
                # (windows-facts §2.3, §2.5): no PYTHONUNBUFFERED, no UTF-8.
                "PYTHONIOENCODING": "cp1252",
            }
        )
        if self.host.windows_like:
            from winexec.sim.windowslike import SITE_DIR

            extra = os.environ.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *([extra] if extra else [])])
        env.update(self.environment)
        return env

    @property
    def temp(self) -> Path:
        return self.profile / "AppData" / "Local" / "Temp"

    @property
    def cwd(self) -> str:
        """Where a remote session starts: the user's Documents folder."""
        return str(self.profile / "Documents")

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    #: MS-WSMV's IdleTimeoutms quota: "minimum value MUST be 60000".
    MIN_IDLE_TIMEOUT = 60.0

    def capped_idle_timeout(self, asked: float | None) -> float:
        """A client's IdleTimeOut within the host's: 0 or none means the host's own (§7.3)."""
        limit = self.host.quotas.IdleTimeout
        if not asked:
            return limit
        return min(limit, max(self.MIN_IDLE_TIMEOUT, asked))

    def idle_expired(self, now: float) -> bool:
        return self.in_flight == 0 and now - self.last_activity > self.idle_timeout

    def live_process_count(self) -> int:
        return sum(len(p.tree(scan_group=False)) for p in self.processes.values() if p.running)

    def check_process_quota(self) -> bool:
        return self.live_process_count() < self.host.quotas.MaxProcessesPerShell

    def close(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            procs = list(self.processes.values())
            self.cond.notify_all()
        for p in procs:
            p.kill_tree()
        for p in procs:
            p.join(2)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- WS-Man ops (overridden) ----------------------------------------------------------
    def command(self, req: wsman.Request) -> list[ET.Element]:
        raise wsman.action_not_supported(req.action)

    def send(self, req: wsman.Request) -> list[ET.Element]:
        raise wsman.action_not_supported(req.action)

    def receive(self, req: wsman.Request, timeout: float) -> list[ET.Element]:
        raise wsman.action_not_supported(req.action)

    def signal(self, req: wsman.Request) -> list[ET.Element]:
        raise wsman.action_not_supported(req.action)

    def commands(self) -> list[str]:
        return list(self.processes)

    def shell_xml(self) -> ET.Element:
        el = ET.Element(q("rsp", "Shell"))
        run = int(time.time() - self.created)
        idle = int(time.monotonic() - self.last_activity)
        for tag, value in (
            ("ShellId", self.id),
            ("Name", "WinRM1"),
            ("ResourceUri", self.resource_uri),
            ("Owner", self.owner.principal),
            ("ClientIP", self.client_ip),
            ("ProcessId", str(os.getpid())),
            ("IdleTimeOut", f"PT{self.idle_timeout:.3f}S"),
            ("InputStreams", self.input_streams),
            ("OutputStreams", self.output_streams),
            ("ShellRunTime", f"P0DT0H0M{run}S"),
            ("ShellInactivity", f"P0DT0H0M{idle}S"),
            ("State", self.state),
        ):
            ET.SubElement(el, q("rsp", tag)).text = value
        return el


# -- PowerShell ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """How one PSRP session configuration runs a native command (windows-facts.md §1-§4).

    ``starts_before_input``: PowerShell 7 starts the process in ``Prepare()`` and streams each
    input object to it; Windows PowerShell 5.1 accumulates all input and starts the process only
    in ``Complete()``, after EndOfPipelineInput (§1.1, §1.9). ``input_encoding`` is the default
    ``$OutputEncoding`` (§1.5, §1.10); ``output_encoding`` what stdout is decoded with in a WinRM
    session, which has no console (§2.4-2.5). ``version_table`` is the ``$PSVersionTable`` the
    server sends in APPLICATION_PRIVATE_DATA when the pool opens (sim/README.md, "PSVersionTable").
    """

    profile: str
    configuration: str
    starts_before_input: bool
    input_encoding: str
    version_table: tuple[tuple[str, str], ...]
    output_encoding: str = "cp1252"

    def private_data(self) -> dict[str, Any]:
        """APPLICATION_PRIVATE_DATA: the server's ``$PSVersionTable``, versions as System.Version."""
        table = {k: (v if k == "PSEdition" else PSVersion(v)) for k, v in self.version_table}
        return {"PSVersionTable": table}


WINDOWS_POWERSHELL_51 = Endpoint(
    "windows-powershell-5.1",
    "Microsoft.PowerShell",
    False,
    "ascii",
    (
        ("PSVersion", "5.1.17763.1"),
        ("PSEdition", "Desktop"),
        ("BuildVersion", "10.0.17763.1"),
        ("CLRVersion", "4.0.30319.42000"),
        ("WSManStackVersion", "3.0"),
    ),
)
POWERSHELL_7 = Endpoint(
    "powershell-7",
    "PowerShell.7",
    True,
    "utf-8",
    (("PSVersion", "7.4.6"), ("PSEdition", "Core"), ("WSManStackVersion", "3.0")),
)
PROFILES = {e.profile: e for e in (WINDOWS_POWERSHELL_51, POWERSHELL_7)}


class PipelineRun:
    """One PSRP pipeline and (if it names a native command) its process.

    A pipeline beyond the pool's ``max_runspaces`` waits until a runspace is free (§5.1); the
    client sees it running meanwhile.
    """

    def __init__(self, shell: PSRPShell, command_id: str) -> None:
        self.shell = shell
        self.endpoint = shell.endpoint
        self.command_id = command_id
        self.pipeline = psrpcore.ServerPipeline(shell.pool, uuid.UUID(command_id))
        self.process: NativeProcess | None = None
        self.started = False  # created by the client (CreatePipeline arrived)
        self.begun = False  # has a runspace: running, or failed at once
        self.done = False
        self.closed = False  # torn down by a Signal (no final state for the client)
        self.kill_reason: str | None = None
        self.argv: list[str] | None = None
        self.no_input = True
        self.input_ended = False
        self.pending: list[str] = []  # input not yet written to the process
        self.held: list[tuple[str, str]] = []  # PowerShell 7: output until the next input (§1.12)
        self.error_lines = 0
        self._failure: ErrorRecord | None = None

    @property
    def state(self) -> PSInvocationState:
        return self.pipeline.state

    def start(self, metadata: Any) -> None:
        """CreatePipeline: exactly one native command, or a PowerShell-like failure."""
        self.started = True
        self.no_input = bool(getattr(metadata, "no_input", True))
        commands = list(getattr(metadata, "commands", []) or [])
        cmd = commands[0] if commands else None
        name = str(cmd.command_text).strip() if cmd is not None else ""
        if cmd is None or cmd.is_script or len(commands) != 1:
            first = name.split()[0] if name.split() else name
            self._failure = command_not_found(first)
        else:
            exe = _resolve(name, self.shell.process_env().get("PATH", ""))
            if exe is None:
                self._failure = command_not_found(name)
            else:
                self.argv = [exe, *_arguments(cmd.parameters)]
        self.shell.admit(self)

    def begin(self) -> None:
        """A runspace is free for this pipeline: run it."""
        self.begun = True
        self.pipeline.start()
        if self._failure is not None:
            return self._fail(self._failure)
        if self.endpoint.starts_before_input or self.no_input or self.input_ended:
            self._spawn()

    def _spawn(self) -> None:
        assert self.argv is not None
        exe = self.argv[0]
        if not self.shell.check_process_quota():
            return self._fail(_native_failed(exe, NOT_ENOUGH_QUOTA))
        try:
            self.process = NativeProcess(
                self.argv,
                self.shell.process_env(),
                self.shell.cwd,
                on_output=self._on_output,
                on_exit=self._on_exit,
                mode="lines",
                encoding=self.endpoint.output_encoding,
                account=self.shell.account,
            )
        except OSError as e:
            log.info("host %s: cannot start %s: %s", self.shell.host.name, exe, e)
            return self._fail(_native_failed(exe, e.strerror or str(e)))
        self.shell.processes[self.command_id] = self.process
        self.shell.host.record_start(self.shell, self.command_id, self.argv)
        if self.endpoint.starts_before_input:
            for value in self.pending:
                self._write_streamed(value)
            self.pending.clear()
            if self.no_input or self.input_ended:
                self.process.close_stdin()
        else:
            # 5.1: everything gathered goes through one Out-String, in $OutputEncoding (ASCII,
            # so anything else becomes '?'), in a single write; then stdin is closed (§1.4-1.6).
            text = "".join(f"{v}\r\n" for v in self.pending)
            self.pending.clear()
            if text:
                self.process.write(text.encode(self.endpoint.input_encoding, errors="replace"))
            self.process.close_stdin()

    def _write_streamed(self, value: Any) -> None:
        """PowerShell 7: ``Out-String -Stream`` per object, one ``WriteLine`` per line (§1.10)."""
        assert self.process is not None
        lines = str(value).splitlines() or [""]
        data = "".join(f"{ln}\r\n" for ln in lines).encode(self.endpoint.input_encoding, errors="replace")
        self.process.write(data)

    def _fail(self, record: ErrorRecord) -> None:
        self.pipeline._change_state(PSInvocationState.Failed, record)
        self._end()

    def _end(self) -> None:
        self.done = True
        self.shell.runspace_freed()

    def _on_output(self, stream: str, text: object) -> None:
        with self.shell.cond:
            if self.closed or self.pipeline.state != PSInvocationState.Running:
                return
            if self.endpoint.starts_before_input and not (self.no_input or self.input_ended):
                self.held.append((stream, str(text)))
                return
            self._emit(stream, str(text))
            self.shell.drain()

    def _emit(self, stream: str, text: str) -> None:
        if stream == "stdout":
            self.pipeline.write_output(text)
            return
        # A remote session's native stderr line: an ErrorRecord around a RemoteException, the
        # first NativeCommandError, the rest NativeCommandErrorMessage (§3.1).
        self.error_lines += 1
        self.pipeline.write_error(
            NETException(Message=text),
            ErrorCategoryInfo(Category=ErrorCategory.NotSpecified, Reason="RemoteException"),
            target_object=text,
            fully_qualified_error_id="NativeCommandError"
            if self.error_lines == 1
            else "NativeCommandErrorMessage",
        )

    def _release_held(self) -> None:
        held, self.held = self.held, []
        for stream, text in held:
            self._emit(stream, text)

    def _on_exit(self, code: int) -> None:
        with self.shell.cond:
            self.shell.host.record_exit(self.shell, self.command_id, code)
            if self.closed:
                return
            if self.pipeline.state == PSInvocationState.Running:
                self._release_held()
                if self.kill_reason:
                    # Not documented (§7.5): the stand-in fails the pipeline with its reason.
                    self.pipeline._change_state(
                        PSInvocationState.Failed,
                        _error_record(
                            self.kill_reason,
                            "ShellQuotaExceeded",
                            ErrorCategory.ResourceUnavailable,
                            "QuotaExceeded",
                        ),
                    )
                else:
                    # Any exit code: Completed, and no message carries the code (§3.4-3.5).
                    self.pipeline.complete()
            self._end()
            self.shell.drain()

    def input(self, value: Any) -> None:
        if self.process is not None and self.endpoint.starts_before_input:
            self._release_held()
            self._write_streamed(value)
        else:
            self.pending.append(str(value))

    def end_input(self) -> None:
        self.input_ended = True
        if not self.begun:
            return
        if self.endpoint.starts_before_input:
            if self.process is not None:
                self._release_held()
                self.process.close_stdin()
        elif self.process is None and self._failure is None and not self.done:
            self._spawn()

    def stop(self) -> None:
        """StopCommand (the spec's ``crtl_c``): the process tree killed, state Stopped (§4.1)."""
        if self.process is not None and self.process.running:
            self.process.kill_live_tree()
        if self.pipeline.state in (PSInvocationState.Running, PSInvocationState.Stopping):
            self.pipeline.stop()
        if not self.done:
            self._end()

    def close(self) -> None:
        """The command closed (any other signal, §4.2): the tree killed, no final state sent."""
        self.closed = True
        if self.process is not None and self.process.running:
            self.process.kill_live_tree()
        with contextlib.suppress(Exception):
            self.pipeline.close()
        if not self.done:
            self._end()


def _native_failed(exe: str, why: str) -> ErrorRecord:
    return _error_record(
        f'Program "{Path(exe).name}" failed to run: {why}',
        "NativeCommandFailed",
        ErrorCategory.ResourceUnavailable,
        "Win32Exception",
        target=exe,
    )


def _resolve(name: str, path: str) -> str | None:
    if not name:
        return None
    if os.path.isabs(name):
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    if os.sep in name:
        return None
    return shutil.which(name, path=path)


def _arguments(parameters: list[tuple[str | None, Any]]) -> list[str]:
    """Native-command argument list as PowerShell passes it (``-Name value`` for named ones)."""
    out: list[str] = []
    for name, value in parameters:
        if name:
            if value is True:
                out.append(f"-{name}")
                continue
            out.append(f"-{name}")
        if isinstance(value, (list, tuple)):
            out.extend(str(v) for v in value)
        elif value is not None:
            out.append(str(value))
    return out


class PSRPShell(Shell):
    """A PowerShell runspace pool exposed as a WinRS shell."""

    kind = "psrp"

    def __init__(self, *args: Any, creation_xml: bytes, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.endpoint = endpoint
        self.pool = psrpcore.ServerRunspacePool(application_private_data=endpoint.private_data())
        self.queues: dict[str | None, deque[bytes]] = {None: deque()}
        self.runs: dict[str, PipelineRun] = {}
        self.waiting: deque[PipelineRun] = deque()  # created, waiting for a free runspace
        with self.cond:
            self.feed(creation_xml, None)

    # -- runspaces (§5) -------------------------------------------------------------------
    def busy(self) -> int:
        return sum(1 for r in self.runs.values() if r.begun and not r.done)

    def admit(self, run: PipelineRun) -> None:
        self.waiting.append(run)
        self.runspace_freed()

    def runspace_freed(self) -> None:
        while self.waiting and self.busy() < max(1, self.pool.max_runspaces):
            run = self.waiting.popleft()
            if not run.closed:
                run.begin()

    # PSRP fragments are cut at this size; a Receive answer then packs as many as fit the
    # client's MaxEnvelopeSize (and the host's MaxEnvelopeSizekb), base64 and envelope included.
    fragment_size = 32 * 1024

    def receive_budget(self, req: wsman.Request) -> int:
        limit = self.host.quotas.MaxEnvelopeSizekb * 1024
        if req.max_envelope_size:
            limit = min(limit, req.max_envelope_size)
        return max(self.fragment_size, (limit - 4096) * 3 // 4)

    def drain(self) -> None:
        """Move psrpcore's outgoing fragments into per-target queues (pool or pipeline)."""
        while True:
            payload = self.pool.data_to_send(self.fragment_size)
            if payload is None:
                break
            key = str(payload.pipeline_id).upper() if payload.pipeline_id else None
            self.queues.setdefault(key, deque()).append(bytes(payload.data))
        self.cond.notify_all()

    def feed(self, data: bytes, command_id: str | None) -> None:
        pid = uuid.UUID(command_id) if command_id else None
        self.pool.receive_data(psrpcore.PSRPPayload(data, psrpcore.StreamType.default, pid))
        while True:
            event = self.pool.next_event()
            if event is None:
                break
            self._handle(event)
        self.drain()

    def _handle(self, event: Any) -> None:
        pid = str(event.pipeline_id).upper() if getattr(event, "pipeline_id", None) else None
        if isinstance(event, psrpcore.CreatePipelineEvent):
            run = self.runs.get(pid or "")
            if run is not None:
                run.start(event.pipeline)
        elif isinstance(event, psrpcore.GetCommandMetadataEvent):
            run = self.runs.get(pid or "")
            if run is not None:
                run.started = run.begun = True
                run.pipeline.start()
                run._fail(command_not_found("Get-Command"))
        elif isinstance(event, psrpcore.PipelineInputEvent):
            run = self.runs.get(pid or "")
            if run is not None:
                run.input(event.data)
        elif isinstance(event, psrpcore.EndOfPipelineInputEvent):
            run = self.runs.get(pid or "")
            if run is not None:
                run.end_input()
        elif isinstance(event, psrpcore.GetAvailableRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, max(0, self.pool.max_runspaces - self.busy()))
        elif isinstance(
            event,
            (psrpcore.SetMaxRunspacesEvent, psrpcore.SetMinRunspacesEvent, psrpcore.ResetRunspaceStateEvent),
        ):
            self.pool.runspace_availability_response(event.ci, True)
            self.runspace_freed()

    # -- ops -----------------------------------------------------------------------------
    def command(self, req: wsman.Request) -> list[ET.Element]:
        body = req.first()
        assert body is not None
        command_id = (body.attrib.get("CommandId") or str(uuid.uuid4())).upper()
        args = [a.text or "" for a in body.findall("rsp:Arguments", NS)]
        with self.cond:
            self.touch()
            run = PipelineRun(self, command_id)
            self.runs[command_id] = run
            self.queues.setdefault(command_id, deque())
            for a in args:
                self.feed(base64.b64decode(a), command_id)
        resp = ET.Element(q("rsp", "CommandResponse"))
        ET.SubElement(resp, q("rsp", "CommandId")).text = command_id
        return [resp]

    def send(self, req: wsman.Request) -> list[ET.Element]:
        body = req.first()
        assert body is not None
        with self.cond:
            self.touch()
            for stream in body.findall("rsp:Stream", NS):
                cid = stream.attrib.get("CommandId")
                self.feed(base64.b64decode(stream.text or ""), cid.upper() if cid else None)
        return [ET.Element(q("rsp", "SendResponse"))]

    def receive(self, req: wsman.Request, timeout: float) -> list[ET.Element]:
        body = req.first()
        ds = body.find("rsp:DesiredStream", NS) if body is not None else None
        cid = ds.attrib.get("CommandId") if ds is not None else None
        key = cid.upper() if cid else None
        deadline = time.monotonic() + timeout
        with self.cond:
            self.touch()
            while True:
                if self.closed:
                    raise wsman.shell_not_found(self.id)
                q_ = self.queues.get(key)
                run = self.runs.get(key) if key else None
                if q_:
                    break
                if run is not None and run.done:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise wsman.operation_timeout()
                self.cond.wait(left)
            chunks: list[bytes] = []
            budget = self.receive_budget(req)
            while q_ and (not chunks or budget - len(q_[0]) > 0):
                chunk = q_.popleft()
                budget -= len(chunk)
                chunks.append(chunk)
            finished = run is not None and run.done and not q_
        resp = ET.Element(q("rsp", "ReceiveResponse"))
        for chunk in chunks:
            attrib = {"Name": "stdout"}
            if cid:
                attrib["CommandId"] = cid
            ET.SubElement(resp, q("rsp", "Stream"), attrib).text = base64.b64encode(chunk).decode()
        if cid:
            state = wsman.STATE_DONE if finished else wsman.STATE_RUNNING
            ET.SubElement(resp, q("rsp", "CommandState"), {"CommandId": cid, "State": state})
        return [resp]

    def signal(self, req: wsman.Request) -> list[ET.Element]:
        body = req.first()
        assert body is not None
        cid = (body.attrib.get("CommandId") or "").upper()
        code_el = body.find("rsp:Code", NS)
        code = (code_el.text or "").strip() if code_el is not None else ""
        with self.cond:
            self.touch()
            run = self.runs.get(cid)
            if run is not None:
                if code == PS_STOP_SIGNAL:
                    run.stop()
                else:
                    # The PowerShell plugin compares against the spec's spelling only; any other
                    # code (pypsrp's ``ctrl_c``, terminate) closes the command (§4.2). Its
                    # process stays the shell's: what the stop missed dies with the shell (§4.5).
                    run.close()
                    self.runs.pop(cid, None)
                    self.queues.pop(cid, None)
                self.drain()
        resp = ET.Element(q("rsp", "SignalResponse"))
        return [resp]

    def commands(self) -> list[str]:
        return [cid for cid, r in self.runs.items() if r.started]

    def disconnect(self, idle_timeout: float | None = None) -> None:
        """Disconnect; a Disconnect's IdleTimeOut overrides the Create's (MS-PSRP 3.1.5.3.16)."""
        with self.cond:
            self.state = "Disconnected"
            if idle_timeout:
                self.idle_timeout = self.capped_idle_timeout(idle_timeout)
            if self.pool.state == RunspacePoolState.Opened:
                self.pool.disconnect()

    def reconnect(self) -> None:
        with self.cond:
            self.state = "Connected"
            if self.pool.state == RunspacePoolState.Disconnected:
                self.pool.reconnect()

    def connect(self, connect_xml: bytes) -> bytes:
        """A new client takes over the disconnected pool (``RunspacePool.connect()`` from another
        process). The answer carries the server's SESSION_CAPABILITY (MS-PSRP 3.1.5.3.15); the
        RUNSPACEPOOL_INIT_DATA that follows comes with the next Receive."""
        with self.cond:
            self.touch()
            if self.pool.state == RunspacePoolState.Opened:
                self.pool.disconnect()
            self.queues[None] = deque()
            self.pool.connect()
            self.pool.prepare_message(self.pool.our_capability)
            self.feed(connect_xml, None)
            self.state = "Connected"
            data = b"".join(self.queues[None])
            self.queues[None] = deque()
            first, rest = _split_first_message(data)
            if rest:
                self.queues[None].append(rest)
            return first

    def close(self) -> None:
        with self.cond:
            for run in self.runs.values():
                if run.process is not None and run.process.running:
                    run.process.kill_tree()
        super().close()


def _split_first_message(data: bytes) -> tuple[bytes, bytes]:
    """Split a run of PSRP fragments after the first complete message."""
    off = 0
    while off + 21 <= len(data):
        flags = data[off + 16]
        length = int.from_bytes(data[off + 17 : off + 21], "big")
        off += 21 + length
        if flags & 0x2:  # end fragment
            return data[:off], data[off:]
    return data, b""


# -- cmd -------------------------------------------------------------------------------------
class CmdCommand:
    def __init__(self, shell: CmdShell, command_id: str, command_line: str) -> None:
        self.shell = shell
        self.id = command_id
        self.command_line = command_line
        self.out: deque[tuple[str, bytes]] = deque()
        self.exit_code: int | None = None
        self.process: NativeProcess | None = None

    def on_output(self, stream: str, chunk: object) -> None:
        with self.shell.cond:
            self.out.append((stream, bytes(chunk) if isinstance(chunk, (bytes, bytearray)) else b""))
            self.shell.cond.notify_all()

    def on_exit(self, code: int) -> None:
        with self.shell.cond:
            self.exit_code = code
            self.shell.host.record_exit(self.shell, self.id, code)
            self.shell.cond.notify_all()


class CmdShell(Shell):
    """``cmd`` shell: a command line runs through the host's shell (``/bin/sh -c`` standing in
    for ``cmd.exe /c``); raw stdout/stderr bytes and the exit code come back as WinRS streams."""

    kind = "cmd"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cmds: dict[str, CmdCommand] = {}

    def command(self, req: wsman.Request) -> list[ET.Element]:
        body = req.first()
        assert body is not None
        command_id = (body.attrib.get("CommandId") or str(uuid.uuid4())).upper()
        exe_el = body.find("rsp:Command", NS)
        exe = (exe_el.text or "").strip() if exe_el is not None else ""
        args = [a.text or "" for a in body.findall("rsp:Arguments", NS)]
        line = " ".join([exe, *args])
        with self.cond:
            self.touch()
            if not self.check_process_quota():
                raise WSManFault(
                    1816,
                    f"The Windows Remote Shell cannot run the command: {NOT_ENOUGH_QUOTA}.",
                    subcode="w:InternalError",
                )
            cmd = CmdCommand(self, command_id, line)
            self.cmds[command_id] = cmd
            argv = ["/bin/sh", "-c", line]
            cmd.process = NativeProcess(
                argv,
                self.process_env(),
                str(self.profile),  # winrs starts in %USERPROFILE% (winrs /?, -directory)
                cmd.on_output,
                cmd.on_exit,
                mode="bytes",
                account=self.account,
            )
            self.processes[command_id] = cmd.process
            self.host.record_start(self, command_id, argv)
        resp = ET.Element(q("rsp", "CommandResponse"))
        ET.SubElement(resp, q("rsp", "CommandId")).text = command_id
        return [resp]

    def send(self, req: wsman.Request) -> list[ET.Element]:
        body = req.first()
        assert body is not None
        with self.cond:
            self.touch()
            for stream in body.findall("rsp:Stream", NS):
                cmd = self.cmds.get((stream.attrib.get("CommandId") or "").upper())
                if cmd is None or cmd.process is None:
                    continue
                if stream.text:
                    cmd.process.write(base64.b64decode(stream.text))
                if stream.attrib.get("End", "").lower() == "true":
                    cmd.process.close_stdin()
        return [ET.Element(q("rsp", "SendResponse"))]

    def receive(self, req: wsman.Request, timeout: float) -> list[ET.Element]:
        body = req.first()
        ds = body.find("rsp:DesiredStream", NS) if body is not None else None
        cid = (ds.attrib.get("CommandId") or "").upper() if ds is not None else ""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.touch()
            cmd = self.cmds.get(cid)
            if cmd is None:
                raise wsman.shell_not_found(self.id)
            while not cmd.out and cmd.exit_code is None:
                if self.closed:
                    raise wsman.shell_not_found(self.id)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise wsman.operation_timeout()
                self.cond.wait(left)
            items = list(cmd.out)
            cmd.out.clear()
            done = cmd.exit_code is not None
        resp = ET.Element(q("rsp", "ReceiveResponse"))
        for stream, chunk in items:
            ET.SubElement(
                resp, q("rsp", "Stream"), {"Name": stream, "CommandId": cid}
            ).text = base64.b64encode(chunk).decode()
        if done:
            for stream in ("stdout", "stderr"):
                ET.SubElement(resp, q("rsp", "Stream"), {"Name": stream, "CommandId": cid, "End": "true"})
            st = ET.SubElement(resp, q("rsp", "CommandState"), {"CommandId": cid, "State": wsman.STATE_DONE})
            ET.SubElement(st, q("rsp", "ExitCode")).text = str(cmd.exit_code)
        else:
            ET.SubElement(resp, q("rsp", "CommandState"), {"CommandId": cid, "State": wsman.STATE_RUNNING})
        return [resp]

    def signal(self, req: wsman.Request) -> list[ET.Element]:
        body = req.first()
        assert body is not None
        cid = (body.attrib.get("CommandId") or "").upper()
        with self.cond:
            self.touch()
            cmd = self.cmds.get(cid)
            if cmd is not None and cmd.process is not None:
                if cmd.process.running:
                    cmd.process.kill_tree()
                code_el = body.find("rsp:Code", NS)
                if code_el is not None and (code_el.text or "").strip().lower() == TERMINATE:
                    self.cmds.pop(cid, None)
                    self.processes.pop(cid, None)
        return [ET.Element(q("rsp", "SignalResponse"))]

"""``airflow winexec hosts|check|tickets``: what an operator asks when a host refuses work.

Airflow glue only: the commands read ``[winexec]`` the way the scheduler does (:func:`winexec.config.load`),
get tickets with :class:`winexec.tickets.TicketStore` and talk to hosts through
:mod:`winexec.transport` -- the same code paths launches use, so a passing check means a task gets
through. Output is a table for people or ``--output json`` for scripts. They run wherever the
scheduler's configuration and keytabs are (typically the scheduler host), never in the scheduler.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from winexec.config import HostSpec, Settings

if TYPE_CHECKING:
    import argparse

    from airflow.cli.cli_config import GroupCommand

    from winexec.tickets import TicketStore


# -- the commands' data ------------------------------------------------------------------------
@dataclass
class Step:
    """One line of ``airflow winexec check``."""

    step: str
    ok: bool
    detail: str
    fix: str = ""
    host: str = ""
    principal: str = ""


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def _settings(check_files: bool = True, team: str | None = None) -> Settings:
    """``[winexec]``, or with ``--team`` that team's own ``[<team>=winexec]`` (multi-team mode)."""
    from winexec.config import airflow_getter, load

    return load(airflow_getter(team), check_files=check_files)


def _store(settings: Settings, principals: Iterable[str]) -> tuple[TicketStore, dict[str, str]]:
    """A ticket store (not started) with every principal whose keytab is usable; errors by principal."""
    from winexec.tickets import TicketError, TicketStore

    store = TicketStore()
    errors: dict[str, str] = {}
    for principal in principals:
        try:
            store.ensure(principal, settings.keytab_for)
        except TicketError as e:
            errors[principal] = str(e)
    return store, errors


def _pick_hosts(settings: Settings, name: str | None) -> list[HostSpec]:
    if not name:
        return list(settings.hosts)
    wanted = name.lower()
    for h in settings.hosts:
        if wanted in (h.name, h.name.split(".")[0], h.connect_address):
            return [h]
    known = ", ".join(h.name for h in settings.hosts)
    raise SystemExit(f"host {name!r} is not in [winexec] hosts ({known})")


def _parallel(fn: Callable[[HostSpec], Any], hosts: list[HostSpec]) -> list[Any]:
    """One probe per host at once: a dead host costs its connect timeout once, not once per host."""
    if len(hosts) <= 1:
        return [fn(h) for h in hosts]
    with ThreadPoolExecutor(max_workers=min(16, len(hosts)), thread_name_prefix="winexec-cli") as pool:
        return list(pool.map(fn, hosts))


def host_rows(settings: Settings, principal: str | None = None) -> list[dict[str, Any]]:
    """Per host: health of the authenticated channel, slots, and what the host says it runs."""
    from winexec import maintenance
    from winexec.transport import HostUnreachable, LaunchError, classify, open_channel

    principal = principal or settings.default_principal
    store, errors = _store(settings, [principal])
    try:
        drains = {h: str(d) for h, d in maintenance.drained().items()}
    except Exception as e:  # the hosts' own health is still worth showing
        unknown = f"unknown: cannot read Airflow's database ({type(e).__name__})"
        drains = {h.name: unknown for h in settings.hosts}

    def probe(host: HostSpec) -> dict[str, Any]:
        row: dict[str, Any] = {
            "host": host.name,
            "endpoint": f"{host.scheme}://{host.connect_address}:{host.port}",
            "health": "ok",
            "slots": host.slots,
            "queues": " ".join(sorted(host.queues)) or "(all)",
            "drained": drains.get(host.name, ""),
            "used": None,
            "free": None,
            "running": [],
            "last_error": "",
        }
        t0 = time.monotonic()
        try:
            if principal in errors:
                raise RuntimeError(errors[principal])
            with open_channel(settings, host, principal, False, store) as channel:
                runs = channel.agent("--runs")
            used = int(runs.get("count") or 0)
            row.update(
                used=used,
                free=max(0, host.slots - used),
                running=[_run_label(r) for r in runs.get("runs") or []],
            )
        except Exception as e:
            err = e if isinstance(e, LaunchError) else classify(e, host, principal)
            row["health"] = "down" if isinstance(err, HostUnreachable) else "error"
            row["last_error"] = err.reason
        row["probe_seconds"] = round(time.monotonic() - t0, 2)
        return row

    try:
        return _parallel(probe, list(settings.hosts))
    finally:
        store.close()


def _run_label(run: dict[str, Any]) -> str:
    """The task, for the CLI principal's own runs; another principal's run id and principal only
    (its record on the host is not ours to read)."""
    return str(run.get("task") or f"{run.get('run_id')} ({run.get('principal')})")


def ticket_rows(settings: Settings, principal: str | None = None) -> list[dict[str, Any]]:
    """Each configured principal's TGT as the scheduler gets it: from its keytab, from the KDC."""
    from winexec.tickets import TicketError

    principals = [principal] if principal else settings.static_principals()
    store, errors = _store(settings, principals)
    rows: list[dict[str, Any]] = []
    try:
        for p in principals:
            row: dict[str, Any] = {
                "principal": p,
                "keytab": settings.keytab_for(p) or "",
                "ccache": "",
                "expires": None,
                "renew_till": None,
                "ok": False,
                "error": errors.get(p, ""),
            }
            if p not in errors:
                try:
                    cred = store.get(p)
                    st = store.status(p)
                    row.update(
                        ccache=st.ccache,
                        expires=_when(cred.expires_at),
                        renew_till=_when(cred.renew_till),
                        ok=True,
                    )
                except TicketError as e:
                    row["error"] = str(e)
            rows.append(row)
    finally:
        store.close()
    return rows


def _spn_step(settings: Settings, host: HostSpec, principal: str, ccache: str) -> Step:
    """Ask the KDC for a service ticket to ``HTTP/<host>`` with the principal's TGT."""
    import gssapi

    step = Step(f"service ticket HTTP/{host.name}", False, "", host=host.name, principal=principal)
    try:
        creds = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
        target = gssapi.Name(f"HTTP@{host.name}", gssapi.NameType.hostbased_service)
        flags = int(gssapi.RequirementFlag.mutual_authentication)
        if settings.delegated_anywhere(principal):
            flags |= int(gssapi.RequirementFlag.delegate_to_peer)
        gssapi.SecurityContext(name=target, creds=creds, usage="initiate", flags=flags).step()
    except gssapi.exceptions.GSSError as e:
        text = str(e)
        step.detail = f"the KDC gave no ticket for HTTP/{host.name}: {text[:300]}"
        if "not found in Kerberos database" in text or "Server not found" in text:
            step.fix = (
                f"register the SPN on the host's computer account: setspn -S HTTP/{host.name} "
                f"{host.name.split('.')[0].upper()} (and check [winexec] hosts names the FQDN)"
            )
        else:
            step.fix = "check the realm's KDC and krb5.conf [domain_realm] for this host"
        return step
    step.ok = True
    step.detail = "granted"
    return step


def check_steps(
    settings: Settings, host_name: str | None, principal: str | None, canary: bool = False
) -> list[Step]:
    """Everything between the scheduler and a task on a host, one step at a time, with the fix.

    ``canary``: as every configured principal (unless ``principal`` names one), the agent also
    tries what a task needs on the host (:mod:`winexec.agent.canary`), and each host's WinRM
    quotas are read and set against its hosts entry.
    """
    if principal:
        principals = [principal]
    else:
        principals = settings.static_principals() if canary else [settings.default_principal]
    steps = [Step("settings", True, f"[winexec] valid: {len(settings.hosts)} host(s)")]
    hosts = _pick_hosts(settings, host_name)
    store, errors = _store(settings, principals)
    try:
        creds = {}
        for p in principals:
            cred = _ticket_steps(settings, store, errors.get(p), p, steps)
            if cred is not None:
                creds[p] = cred
        for host in hosts:
            quotas = _Quotas()
            for p, cred in creds.items():
                steps.extend(_host_steps(settings, store, host, p, cred.ccache, quotas if canary else None))
            if canary and creds:
                steps.append(quotas.step(host))
    finally:
        store.close()
    return steps


def _ticket_steps(
    settings: Settings, store: TicketStore, error: str | None, principal: str, steps: list[Step]
) -> Any:
    """The keytab and TGT steps of one principal; its credential, or ``None`` when either failed."""
    from winexec.tickets import TicketError

    if error is not None:
        steps.append(
            Step(
                "keytab",
                False,
                error,
                fix="export the principal's keytab and set [winexec] keytabs/keytab_dir/default_keytab",
                principal=principal,
            )
        )
        return None
    steps.append(Step("keytab", True, str(settings.keytab_for(principal)), principal=principal))
    try:
        cred = store.get(principal)
    except TicketError as e:
        steps.append(Step("TGT", False, str(e), fix=e.message, principal=principal))
        return None
    steps.append(
        Step(
            "TGT",
            True,
            f"valid until {_when(cred.expires_at)}, renewable until {_when(cred.renew_till)}",
            principal=principal,
        )
    )
    return cred


def _host_steps(
    settings: Settings,
    store: TicketStore,
    host: HostSpec,
    principal: str,
    ccache: str,
    quotas: _Quotas | None,
) -> list[Step]:
    """Service ticket, shell and the agent on ``host`` as ``principal``; with ``quotas``, the canary."""
    from winexec.transport import LaunchError, classify, open_channel

    delegate = settings.delegated_anywhere(principal)
    spn = _spn_step(settings, host, principal, ccache)
    if not spn.ok:
        return [spn]
    shell = Step("open shell", False, "", host=host.name, principal=principal)
    steps = [spn, shell]
    canary: dict[str, Any] = {}
    try:
        with open_channel(settings, host, principal, delegate, store) as channel:
            shell.ok, shell.detail = True, f"WinRM shell as {principal} (delegate={delegate})"
            if quotas is None:
                info = channel.agent("--self-check")
            else:
                steps.append(_endpoint_step(channel.powershell(), host, principal))
                canary = channel.agent("--canary")
                info = canary.get("self_check") or {}
                quotas.read(channel)
    except LaunchError as e:
        target = Step("agent self-check", False, "", host=host.name, principal=principal)
        if not shell.ok:
            target = shell
        else:
            steps.append(target)
        target.ok, target.detail, target.fix = False, e.reason, _fix_for(e, settings)
        return steps
    except Exception as e:
        err = classify(e, host, principal)
        shell.ok, shell.detail, shell.fix = False, err.reason, _fix_for(err, settings)
        return steps
    steps.extend(_self_check_steps(info, host, principal, delegate))
    for c in canary.get("checks") or []:
        steps.append(Step(c["name"], bool(c["ok"]), c["detail"], c.get("fix") or "", host.name, principal))
    return steps


def _endpoint_step(table: dict[str, str], host: HostSpec, principal: str) -> Step:
    """The endpoint's PowerShell, as the host said when the shell opened."""
    version = table.get("PSVersion") or "unknown"
    major = version.split(".")[0]
    ok = major.isdigit() and int(major) >= 5
    return Step(
        "endpoint",
        ok,
        f"{host.configuration}: PowerShell {version} ({table.get('PSEdition') or 'Desktop'}), "
        f"remoting protocol {table.get('PSRemotingProtocolVersion') or 'unknown'}",
        fix=""
        if ok
        else "install Windows Management Framework 5.1 on the host (Windows Server 2016 and later ship "
        "it), or name a PowerShell 7 endpoint with ?configuration= in its hosts entry",
        host=host.name,
        principal=principal,
    )


class _Quotas:
    """One host's WinRM quotas as the first principal allowed to read them saw them."""

    def __init__(self) -> None:
        self.found: dict[str, int] | None = None
        self.refused: list[str] = []

    def read(self, channel: Any) -> None:
        from winexec.transport import QuotasUnreadable

        if self.found is not None:
            return
        try:
            self.found = channel.quotas()
        except QuotasUnreadable:
            self.refused.append(channel.principal)
        except Exception as e:  # the canary goes on; the quota step says what happened
            self.refused.append(f"{channel.principal} ({e})")

    def step(self, host: HostSpec) -> Step:
        entry = {"max_shells_per_user": host.max_shells_per_user, "max_users": host.max_users}
        names = {"max_shells_per_user": "MaxShellsPerUser", "max_users": "MaxConcurrentUsers"}
        placed = f"placement allows {host.shells_per_user} shells per user and {host.users} users at once"
        if self.found is None:
            said = [k for k, v in entry.items() if v is not None]
            return Step(
                "WinRM quotas",
                True,
                f"not readable by {', '.join(self.refused)} (Windows lets only Administrators read "
                f"WinRM's configuration); {placed} "
                + (
                    f"(from its hosts entry: {', '.join(said)})"
                    if len(said) == 2
                    else "(the strictest defaults where its hosts entry says nothing): to use the "
                    "host's own, run this check with an administrator principal, or read them there "
                    "(winrm get winrm/config/winrs) and write ?max_shells_per_user=N&max_users=N "
                    "into its hosts entry"
                ),
                host=host.name,
            )
        have = ", ".join(f"{k}={v}" for k, v in sorted(self.found.items()))
        over = [
            f"{k}={v} but the host allows {names[k]}={self.found[names[k]]}"
            for k, v in entry.items()
            if v is not None and names[k] in self.found and v > self.found[names[k]]
        ]
        if over:
            return Step(
                "WinRM quotas",
                False,
                f"{have}; its hosts entry says {'; '.join(over)}: the host would refuse shells placement "
                "thinks it may open",
                fix="lower them in its [winexec] hosts entry, or raise the quotas on the host as an "
                "administrator, both the WinRS one and the endpoint's own (the smaller wins): "
                "Set-Item WSMan:\\localhost\\Shell\\<quota> N and Set-Item "
                f"WSMan:\\localhost\\Plugin\\{host.configuration}\\Quotas\\<quota> N",
                host=host.name,
            )
        memory = self.found.get("MaxMemoryPerShellMB")
        return Step(
            "WinRM quotas",
            True,
            f"{have}; {placed}" + (f"; a task's processes together may use {memory} MB" if memory else ""),
            host=host.name,
        )


def _fix_for(err: Any, settings: Settings) -> str:
    kind = getattr(err, "kind", "")
    return {
        "unreachable": "start WinRM (winrm quickconfig), open TCP 5985/5986 in the firewall, "
        "check [winexec] hosts",
        "auth": "add the principal to Remote Management Users on the host; check the SPN and keytab",
        "python_missing": f"install Python with winexec on the host or set [winexec] python "
        f"(now {settings.python!r}) to its full path",
        "full": "raise the host's WinRM quotas (MaxShellsPerUser, MaxConcurrentOperationsPerUser)",
        "ticket": "see the ticket error; fix the keytab or the KDC",
    }.get(kind, "see the error; run python -m winexec.agent --self-check on the host")


#: What a logon holds (the agent's ``tickets_seen``, read with klist) and what to do about it
#: when a grants rule wants the principal's TGT forwarded there.
_NOT_DELEGATED = {
    "no TGT": (
        "a grants rule says delegate, but the logon holds only the ticket it was accepted with: "
        "no forwarded TGT arrived",
        "clear 'Account is sensitive and cannot be delegated' on the principal in AD (the KDC then "
        "issues it no forwardable TGT) and check that krb5.conf does not set enforce_ok_as_delegate; "
        "the scheduler forwards the TGT itself, the host's computer account need not be trusted for "
        "delegation",
    ),
    "TGT, not forwarded": (
        "a grants rule says delegate, but the logon's TGT was not forwarded by the scheduler (an "
        "endpoint with its own RunAs account?)",
        "use the default Microsoft.PowerShell endpoint, or one without RunAsCredential",
    ),
    "no Kerberos logon": (
        "the host accepted the logon with NTLM, not Kerberos: nothing can be delegated",
        "connect by the host's name with its HTTP/<host> SPN registered (setspn -Q), not by address",
    ),
}


def _delegation_step(info: dict[str, Any], host: HostSpec, principal: str, delegate: bool) -> Step:
    """Whether the second hop the grants ask for can happen, as the host's klist sees the logon."""
    seen = str(info.get("tickets_seen") or "unknown")
    delegated = bool(info.get("delegated"))
    if not delegate:
        ok, fix = True, ""
        detail = (
            f"no TGT forwarded (no [winexec] grants rule says delegate for {principal}): a second hop "
            "works only where the target service allows it by resource-based constrained delegation"
        )
        if delegated:
            ok, detail = False, f"a forwarded TGT of {info.get('principal')} is there, though no rule asks"
            fix = "report this: winexec forwards a TGT only where a grants rule says delegate"
    elif delegated:
        ok, fix = True, ""
        who = info.get("principal")
        detail = f"forwarded TGT of {who} arrived (a grants rule says delegate; the host's klist shows it)"
    else:
        ok = False
        detail, fix = _NOT_DELEGATED.get(
            seen, (f"a grants rule says delegate, but the host reports {seen!r}", "")
        )
    return Step("delegation", ok, detail, fix=fix, host=host.name, principal=principal)


def _self_check_steps(info: dict[str, Any], host: HostSpec, principal: str, delegate: bool) -> list[Step]:
    def mib(n: Any) -> str:
        return f"{int(n) // (1024 * 1024)} MiB" if isinstance(n, int) else "unknown"

    missing = ", ".join(info.get("problems") or [])
    steps = [
        Step(
            "agent",
            bool(info.get("ok")),
            f"Python {info.get('python')}, Task SDK {info.get('task_sdk')}, winexec {info.get('winexec')} "
            f"({info.get('executable')})" + (f"; {missing}" if missing else ""),
            fix="" if info.get("ok") else "pip install winexec for that interpreter on the host",
            host=host.name,
            principal=principal,
        )
    ]
    steps.append(_delegation_step(info, host, principal, delegate))
    mem, disk = info.get("memory_free"), info.get("disk_free")
    low = (isinstance(mem, int) and mem < 256 * 1024 * 1024) or (isinstance(disk, int) and disk < 1024**3)
    steps.append(
        Step(
            "resources",
            not low,
            f"free memory {mib(mem)}, free disk {mib(disk)} ({info.get('spool')})",
            fix="free memory or disk on the host (tasks need both)" if low else "",
            host=host.name,
            principal=principal,
        )
    )
    return steps


# -- printing ---------------------------------------------------------------------------------
def _print(rows: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    from airflow.cli.simple_table import AirflowConsole

    AirflowConsole().print_as(data=rows, output=output)


def _table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]


# -- command functions (argparse namespace in, output out) --------------------------------------
def _quiet(args: argparse.Namespace) -> None:
    """Keep winexec's progress logs (ticket acquired, ...) out of the output unless ``--verbose``."""
    import logging

    if not getattr(args, "verbose", False):
        from winexec.transport import MESSAGE_LOGGERS  # (which sets them first; raised after)

        for name in ("winexec", "pypsrp", *MESSAGE_LOGGERS):
            logging.getLogger(name).setLevel(logging.WARNING)


def hosts_command(args: argparse.Namespace) -> None:
    """``airflow winexec hosts [drain|resume HOST]``."""
    _quiet(args)
    action = getattr(args, "action", None) or "list"
    if action != "list":
        _maintain(args, action)
        return
    rows = host_rows(_settings(False, getattr(args, "team", None)), getattr(args, "principal", None))
    _print(rows if args.output == "json" else _table_rows(rows), args.output)
    if any(r["health"] != "ok" for r in rows):
        raise SystemExit(1)


def _maintain(args: argparse.Namespace, action: str) -> None:
    """``drain HOST`` / ``resume HOST``: for every scheduler on this database, from its next host
    refresh (``host_refresh_interval``) or start."""
    from winexec import maintenance

    settings = _settings(False, getattr(args, "team", None))
    name = getattr(args, "name", None)
    if not name:
        raise SystemExit(f"airflow winexec hosts {action} needs a host: airflow winexec hosts {action} HOST")
    host = _pick_hosts(settings, name)[0].name
    comment = getattr(args, "comment", None) or ""
    if action == "drain":
        record = maintenance.drain(host, comment)
        print(
            f"{host} {record}. It gets no new tasks from any scheduler within host_refresh_interval "
            f"({settings.host_refresh_interval:g} s); its running tasks finish. "
            f"Undo: airflow winexec hosts resume {host}"
        )
    elif maintenance.resume(host):
        every = f"{settings.host_refresh_interval:g} s"
        print(f"{host} resumed: back in placement within host_refresh_interval ({every})")
    else:
        print(f"{host} was not drained")


def tickets_command(args: argparse.Namespace) -> None:
    """``airflow winexec tickets``."""
    _quiet(args)
    rows = ticket_rows(_settings(False, getattr(args, "team", None)), getattr(args, "principal", None))
    _print(rows if args.output == "json" else _table_rows(rows), args.output)
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)


def check_command(args: argparse.Namespace) -> None:
    """``airflow winexec check [--canary]``: exit status 1 when any step failed."""
    _quiet(args)
    from winexec.config import WinexecConfigError

    try:
        settings = _settings(True, getattr(args, "team", None))
    except WinexecConfigError as e:
        steps = [Step("settings", False, p, fix="fix the option in airflow.cfg") for p in e.problems]
    else:
        steps = check_steps(
            settings,
            getattr(args, "host", None),
            getattr(args, "principal", None),
            canary=bool(getattr(args, "canary", False)),
        )
    if args.output == "json":
        _print([asdict(s) for s in steps], "json")
    else:
        for s in steps:
            where = " ".join(x for x in (s.host, s.principal) if x)
            line = f"[{'PASS' if s.ok else 'FAIL'}] {s.step}{f' ({where})' if where else ''}: {s.detail}"
            print(line + (f"\n       fix: {s.fix}" if s.fix and not s.ok else ""))
    if not all(s.ok for s in steps):
        raise SystemExit(1)


# -- registration ---------------------------------------------------------------------------
def get_cli_commands() -> list[GroupCommand]:
    """The ``airflow winexec`` group, for the executor's ``get_cli_commands`` and the provider."""
    from airflow.cli.cli_config import (
        ARG_OUTPUT,
        ARG_VERBOSE,
        ActionCommand,
        Arg,
        GroupCommand,
        lazy_load_command,
    )

    arg_host = Arg(("--host",), help="only this host (its name as in [winexec] hosts)")
    arg_principal = Arg(("--principal",), help="the principal to connect as (default: default_principal)")
    arg_action = Arg(
        ("action",),
        nargs="?",
        choices=("list", "drain", "resume"),
        default="list",
        help="list (default); drain HOST: no new tasks on it for any scheduler, its running tasks "
        "finish; resume HOST: back in placement",
    )
    arg_name = Arg(
        ("name",), nargs="?", metavar="HOST", help="the host to drain or resume, as [winexec] hosts names it"
    )
    arg_comment = Arg(("--comment",), help="why the host is drained (shown by airflow winexec hosts)")
    arg_team = Arg(("--team",), help="a team's executor (multi-team mode): its own [<team>=winexec]")
    arg_canary = Arg(
        ("--canary",),
        action="store_true",
        help="also run the agent once on each host as every configured principal (or --principal): "
        "PowerShell, Task SDK import time, a contained process tree, run folder, paths, WinRM quotas",
    )
    return [
        GroupCommand(
            name="winexec",
            help="Inspect the Windows hosts, tickets and the path from the scheduler to a task",
            subcommands=(
                ActionCommand(
                    name="hosts",
                    help="Each host's health (an authenticated WinRM shell), slots, queues, drain and "
                    "running winexec tasks; drain or resume a host",
                    func=lazy_load_command("winexec.cli.hosts_command"),
                    args=(
                        arg_action,
                        arg_name,
                        arg_comment,
                        arg_team,
                        arg_principal,
                        ARG_OUTPUT,
                        ARG_VERBOSE,
                    ),
                ),
                ActionCommand(
                    name="check",
                    help="Check settings, keytab, TGT, service ticket, shell and the agent, with fixes",
                    func=lazy_load_command("winexec.cli.check_command"),
                    args=(arg_host, arg_principal, arg_canary, arg_team, ARG_OUTPUT, ARG_VERBOSE),
                ),
                ActionCommand(
                    name="tickets",
                    help="Each principal's TGT, acquired now from its keytab as the scheduler does",
                    func=lazy_load_command("winexec.cli.tickets_command"),
                    args=(arg_principal, arg_team, ARG_OUTPUT, ARG_VERBOSE),
                ),
            ),
        )
    ]

"""The ``[winexec]`` settings: declared once, read with Airflow's ``conf``, validated once at start.

``OPTIONS`` is the single source of truth: the provider info ``config`` section (what
``airflow config list --section winexec`` shows) is generated from it, and :func:`load` reads and
validates every option from it. Validation collects *all* problems and raises one
:class:`WinexecConfigError` whose message names each option and how to fix it, so an operator
fixes the file once instead of once per restart.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

from winexec.grants import Grant, parse_grants

SECTION = "winexec"
VERSION_ADDED = "0.1.0"

OptionType = Literal["string", "boolean", "integer", "float"]


@dataclass(frozen=True)
class Option:
    """One ``[winexec]`` option as the provider info schema describes it."""

    name: str
    type: OptionType
    default: str | None
    description: str
    example: str | None = None
    sensitive: bool = False

    def provider_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "description": self.description,
            "version_added": VERSION_ADDED,
            "type": self.type,
            "example": self.example,
            "default": self.default,
        }
        if self.sensitive:
            info["sensitive"] = True
        return info


_PAIRS = "Comma or newline separated ``key=value`` pairs."

OPTIONS: tuple[Option, ...] = (
    # -- hosts ------------------------------------------------------------------------------
    Option(
        "hosts",
        "string",
        "",
        "The Windows hosts, comma or newline separated. Each entry is ``[scheme://]name[:port]"
        "[?slots=N&address=A&configuration=C&max_shells_per_user=N&max_users=N&queues=Q1+Q2]``: "
        "``name`` is the "
        "host's FQDN (the Kerberos SPN is "
        "``HTTP/<name>``), scheme ``http`` (default, port 5985) or ``https`` (port 5986), ``slots`` how "
        "many tasks may run on it at once (default ``default_slots``), ``address`` where to connect "
        "instead of resolving ``name`` (the SPN still uses ``name``), ``configuration`` the PSRP "
        "endpoint (default ``Microsoft.PowerShell``, Windows PowerShell 5.1; ``PowerShell.7`` where "
        "PowerShell 7 is installed and enabled for remoting), ``max_shells_per_user`` and ``max_users`` "
        "the host's WinRM quotas MaxShellsPerUser and MaxConcurrentUsers (defaults 25 and 5, the "
        "strictest a Windows Server 2016-2022 source reports; read the host's with "
        "``airflow winexec check --canary`` as an administrator principal, or ``winrm get "
        "winrm/config/winrs`` and ``Get-PSSessionConfiguration Microsoft.PowerShell | fl *`` on it): "
        "placement never opens more shells there than they allow; ``queues`` the Airflow queues whose "
        "tasks it runs (default every queue; an SSIS host: ``queues=ssis``), a task whose queue no "
        "host serves fails at once with that reason. Re-read every ``host_refresh_interval``: "
        "a removed host gets no new tasks, its running tasks finish.",
        "https://win01.corp.example?slots=8, http://win02.corp.example:5985?address=10.0.0.12",
    ),
    Option(
        "hosts_file",
        "string",
        "",
        "Optional file with more host entries (same syntax as ``hosts``, one per line, ``#`` "
        "comments). Re-read every ``host_refresh_interval``, so hosts can be added or drained "
        "without restarting the scheduler.",
        "/etc/airflow/winexec-hosts.txt",
    ),
    Option("default_slots", "integer", "4", "Task slots of a host whose entry has no ``slots=``.", "4"),
    Option(
        "host_refresh_interval",
        "float",
        "60",
        "Seconds between re-reads of ``hosts``/``hosts_file`` while the scheduler runs; also how soon "
        "a running scheduler honours ``airflow winexec hosts drain`` or ``resume``.",
        "60",
    ),
    Option(
        "host_failure_threshold",
        "integer",
        "3",
        "Consecutive launch failures attributed to a host that take it out of placement.",
        "3",
    ),
    Option(
        "host_cooldown",
        "float",
        "60",
        "Seconds a failed host stays out of placement before one probe launch may use it again.",
        "60",
    ),
    # -- transport --------------------------------------------------------------------------
    Option(
        "cert_validation",
        "string",
        "true",
        "HTTPS certificate validation: ``true`` (system CA store), ``false`` (never in production), "
        "or the path of a CA bundle file.",
        "/etc/ssl/certs/corp-ca.pem",
    ),
    Option(
        "message_encryption",
        "boolean",
        "True",
        "Encrypt WS-Management messages with the Kerberos session key. Over HTTP this is the only "
        "protection of the workload's token; over HTTPS TLS already protects it.",
        "True",
    ),
    Option(
        "allow_unencrypted_http",
        "boolean",
        "False",
        "Allow ``message_encryption = False`` with ``http://`` hosts (the token then travels in "
        "clear text). Only for debugging.",
        "False",
    ),
    Option("connect_timeout", "integer", "30", "Seconds to establish a TCP/TLS connection to a host.", "30"),
    Option(
        "operation_timeout",
        "integer",
        "20",
        "WS-Management OperationTimeout in seconds; must be below ``read_timeout``.",
        "20",
    ),
    Option("read_timeout", "integer", "30", "Seconds to wait for an HTTP response from a host.", "30"),
    Option(
        "poll_timeout",
        "integer",
        "1",
        "Seconds one output poll of a task may wait on the host (WS-Man Receive long-poll). "
        "Shorter polls a task more often; longer spends fewer requests per running task.",
        "1",
    ),
    Option(
        "io_workers",
        "integer",
        "16",
        "Threads doing all network I/O (launch, poll, stop) for all running tasks. The scheduler "
        "loop itself never waits on the network.",
        "32",
    ),
    # -- the host side ----------------------------------------------------------------------
    Option(
        "python",
        "string",
        "python.exe",
        "The Python interpreter on the hosts that has ``winexec`` installed; it runs "
        "``<python> -m winexec.agent``.",
        r"C:\Python312\python.exe",
    ),
    # -- identity ---------------------------------------------------------------------------
    Option(
        "default_principal",
        "string",
        "",
        "The Kerberos principal a task runs as when no mapping below names another one.",
        "svc-airflow@CORP.EXAMPLE",
    ),
    Option(
        "default_keytab",
        "string",
        "",
        "Keytab of ``default_principal``.",
        "/etc/airflow/keytabs/svc-airflow.keytab",
    ),
    Option(
        "keytabs",
        "string",
        "",
        f"Keytab per principal: ``principal=path``. {_PAIRS} A principal not listed here uses "
        "``<keytab_dir>/<name>.keytab`` (``name`` is the principal before ``@``, ``/`` as ``_``).",
        "svc-etl@CORP.EXAMPLE=/etc/airflow/keytabs/etl.keytab",
    ),
    Option(
        "keytab_dir",
        "string",
        "",
        "Directory holding ``<name>.keytab`` for principals not listed in ``keytabs``.",
        "/etc/airflow/keytabs",
    ),
    Option(
        "queue_principals",
        "string",
        "",
        f"Principal per Airflow queue: ``queue=principal``. {_PAIRS}",
        "finance=svc-finance@CORP.EXAMPLE",
    ),
    Option(
        "pool_principals",
        "string",
        "",
        f"Principal per Airflow pool: ``pool=principal``. {_PAIRS} Wins over ``queue_principals``.",
        "sqlserver=svc-sql@CORP.EXAMPLE",
    ),
    Option(
        "honor_run_as_user",
        "boolean",
        "True",
        "Run a task with ``run_as_user`` as that principal (``user`` becomes ``user@<realm of "
        "default_principal>``). Wins over pool and queue mappings.",
        "True",
    ),
    Option(
        "honor_executor_config",
        "boolean",
        "True",
        'Run a task with ``executor_config={"winexec": {"principal": ...}}`` as that principal. '
        "Wins over everything else.",
        "True",
    ),
    Option(
        "grants",
        "string",
        "",
        "Which principals may run which DAGs' tasks, one rule per line: ``principal: selector ... "
        "[default] [delegate]``, a selector being ``dag_id=<glob>``, ``bundle=``, ``tag=`` or "
        "``team=``. With rules, a task runs only as a principal a rule grants to its DAG, however "
        "it was chosen; ``default`` makes the rule's principal the DAG's default, ``delegate`` "
        "forwards its TGT to the host. Without rules, only ``default_principal`` and the pool and "
        "queue mappings may be used, and nothing is forwarded. See docs/security.md.",
        "svc-sql@CORP.EXAMPLE: tag=sqlserver delegate",
    ),
    Option(
        "audit_file",
        "string",
        "",
        "JSON-lines file the audit trail is appended to (every identity decision and task outcome; "
        "also in Airflow's audit log). Empty: ``winexec/audit.jsonl`` under ``[logging] "
        "base_log_folder``.",
        "/var/log/airflow/winexec-audit.jsonl",
    ),
    # -- liveness ---------------------------------------------------------------------------
    Option(
        "heartbeat_interval",
        "float",
        "5",
        "Seconds between the agent's heartbeats.",
        "5",
    ),
    Option(
        "missed_heartbeats",
        "integer",
        "6",
        "Heartbeat intervals without a heartbeat after which a task is hung: it is stopped, its "
        "process tree killed, and it fails.",
        "6",
    ),
    Option(
        "start_timeout",
        "float",
        "120",
        "Seconds a freshly launched agent may take to send its first heartbeat (starting Python "
        "and the Task SDK on a busy host) before the task counts as hung.",
        "120",
    ),
    Option(
        "keepalive_timeout",
        "float",
        "300",
        "A task's WinRM shell asks its host to delete it, and end the task's processes, once the "
        "executor has sent it no request for this many seconds (the shell's IdleTimeOut; 0: the "
        "host's own IdleTimeout). At least 60 (Windows' minimum); longer gives a restarted "
        "scheduler time to adopt running tasks.",
        "300",
    ),
    Option(
        "warm_runners",
        "integer",
        "0",
        "Above 0, tasks launch through one warm agent per host and principal (a WinRM ``cmd`` "
        "shell whose agent takes each task's start line as it comes), each agent keeping this many "
        "task runners started ahead of their tasks; each runner runs one task. 0: every task in a "
        "WinRM shell and agent of its own. A preview: a restarted scheduler does not adopt the "
        'runs of warm agents (docs/architecture.md, "Warm agents").',
        "2",
    ),
    Option(
        "execution_timeout_grace",
        "float",
        "30",
        "Seconds past a task's ``execution_timeout`` before it is killed from outside.",
        "30",
    ),
    # -- launch retries ---------------------------------------------------------------------
    Option(
        "launch_attempts",
        "integer",
        "3",
        "Attempts to launch a task when the failure is transient (host unreachable, host full); "
        "a failure attributed to the host moves the next attempt to another host.",
        "3",
    ),
    Option("launch_backoff", "float", "2", "Seconds before the second launch attempt; doubles.", "2"),
    Option("launch_backoff_max", "float", "30", "Upper bound of the launch backoff in seconds.", "30"),
)

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

_TRUE = {"true", "t", "1", "yes", "y", "on"}
_FALSE = {"false", "f", "0", "no", "n", "off"}


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean")


def _coerce_default(o: Option) -> Any:
    raw = o.default or ""
    if o.type == "integer":
        return int(raw or 0)
    if o.type == "float":
        return float(raw or 0)
    if o.type == "boolean":
        return parse_bool(raw or "false")
    return raw


def _default(name: str) -> Any:
    """The option's declared default, typed as ``load`` types it: declared once, in ``OPTIONS``."""
    return _coerce_default(OPTIONS_BY_NAME[name])


#: Options that ``grants`` replaced: set, they stop the start-up with the way to say it now.
RETIRED = {
    "allowed_principals": "grant each principal to the DAGs it may run in grants, e.g. "
    "'svc-etl@CORP.EXAMPLE: dag_id=*'",
    "delegate": "add 'delegate' to the grants rule of each principal whose tasks need a second hop",
    "delegate_overrides": "delegation is per grants rule now: add 'delegate' to the rules that need it",
}


def provider_config() -> dict[str, Any]:
    """The provider info ``config`` section, generated from :data:`OPTIONS`."""
    return {
        SECTION: {
            "description": "WindowsKerberosExecutor: Windows hosts, identities, transport and liveness.",
            "options": {o.name: o.provider_info() for o in OPTIONS},
        }
    }


def _problems_message(problems: list[str]) -> str:
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"invalid [{SECTION}] configuration ({len(problems)} problem(s)):\n{lines}"


# ``WinexecConfigError`` subclasses Airflow's ``AirflowConfigException``, but this module must not
# import Airflow when it is loaded: Airflow's own start-up reads the provider info, which reads
# :data:`OPTIONS` from here, and importing Airflow from here would close that cycle. So the class
# is built on first use (module ``__getattr__``); type checkers see the plain definition.
if TYPE_CHECKING:
    from airflow.exceptions import AirflowConfigException

    class WinexecConfigError(AirflowConfigException):
        """Every problem found in ``[winexec]``, one per line, each naming the option and the fix."""

        problems: list[str]

        def __init__(self, problems: list[str]) -> None: ...


_error_class: Any = None


def _config_error_class() -> type[WinexecConfigError]:
    global _error_class
    if _error_class is None:
        from airflow.exceptions import AirflowConfigException

        class WinexecConfigError(AirflowConfigException):
            """Every problem found in ``[winexec]``, one per line, each naming the option and the fix."""

            def __init__(self, problems: list[str]) -> None:
                self.problems = problems
                super().__init__(_problems_message(problems))

        WinexecConfigError.__module__ = __name__
        _error_class = WinexecConfigError
    return _error_class  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    if name == "WinexecConfigError":
        return _config_error_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- typed settings ---------------------------------------------------------------------------
#: The strictest MaxShellsPerUser / MaxConcurrentUsers a source reports for a Windows Server
#: 2016-2022 PSRP shell (winexec/sim/README.md, "Limits and faults"): what placement assumes of a
#: host whose entry does not say and whose quotas the executor may not read.
DEFAULT_MAX_SHELLS_PER_USER = 25
DEFAULT_MAX_USERS = 5


@dataclass(frozen=True)
class HostSpec:
    """One configured host. ``name`` is the SPN host name; ``address`` is where to connect."""

    name: str
    scheme: Literal["http", "https"] = "http"
    port: int = 5985
    slots: int = 4
    address: str = ""
    #: the PSRP session configuration (endpoint): ``Microsoft.PowerShell`` is Windows PowerShell
    #: 5.1, on every Windows Server; ``PowerShell.7`` exists once PowerShell 7's Enable-PSRemoting ran
    configuration: str = "Microsoft.PowerShell"
    #: WinRM's MaxShellsPerUser and MaxConcurrentUsers on the host (the smaller of the WinRS and the
    #: endpoint's own quota), as the entry gives them or the executor read them; ``None``: unknown
    max_shells_per_user: int | None = None
    max_users: int | None = None
    #: the Airflow queues whose tasks may run here (``?queues=ssis+etl``); empty: every queue
    queues: frozenset[str] = frozenset()

    def serves(self, queue: str | None) -> bool:
        """Whether a task of ``queue`` may be placed here (an SSIS task only where SSIS is)."""
        return not self.queues or (queue or "") in self.queues

    @property
    def shells_per_user(self) -> int:
        """MaxShellsPerUser in effect: known, else the strictest a 2016-2022 source reports."""
        return self.max_shells_per_user or DEFAULT_MAX_SHELLS_PER_USER

    @property
    def users(self) -> int:
        """MaxConcurrentUsers in effect: known, else the strictest a 2016-2022 source reports."""
        return self.max_users or DEFAULT_MAX_USERS

    @property
    def connect_address(self) -> str:
        return self.address or self.name

    @property
    def ssl(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.name}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """The validated ``[winexec]`` section."""

    hosts: tuple[HostSpec, ...]
    #: ``hosts`` as read at start: the fallback when a refresh finds the option nowhere else.
    hosts_raw: str = ""
    hosts_file: str = _default("hosts_file")
    default_slots: int = _default("default_slots")
    host_refresh_interval: float = _default("host_refresh_interval")
    host_failure_threshold: int = _default("host_failure_threshold")
    host_cooldown: float = _default("host_cooldown")
    cert_validation: bool | str = True
    message_encryption: bool = _default("message_encryption")
    allow_unencrypted_http: bool = _default("allow_unencrypted_http")
    connect_timeout: int = _default("connect_timeout")
    operation_timeout: int = _default("operation_timeout")
    read_timeout: int = _default("read_timeout")
    poll_timeout: int = _default("poll_timeout")
    io_workers: int = _default("io_workers")
    python: str = _default("python")
    default_principal: str = _default("default_principal")
    default_keytab: str = _default("default_keytab")
    keytabs: Mapping[str, str] = field(default_factory=dict)
    keytab_dir: str = _default("keytab_dir")
    queue_principals: Mapping[str, str] = field(default_factory=dict)
    pool_principals: Mapping[str, str] = field(default_factory=dict)
    honor_run_as_user: bool = _default("honor_run_as_user")
    honor_executor_config: bool = _default("honor_executor_config")
    grants: tuple[Grant, ...] = ()
    audit_file: str = _default("audit_file")
    heartbeat_interval: float = _default("heartbeat_interval")
    missed_heartbeats: int = _default("missed_heartbeats")
    start_timeout: float = _default("start_timeout")
    keepalive_timeout: float = _default("keepalive_timeout")
    warm_runners: int = _default("warm_runners")
    execution_timeout_grace: float = _default("execution_timeout_grace")
    launch_attempts: int = _default("launch_attempts")
    launch_backoff: float = _default("launch_backoff")
    launch_backoff_max: float = _default("launch_backoff_max")

    @property
    def realm(self) -> str:
        """Realm of ``default_principal``: completes bare ``run_as_user`` names."""
        return self.default_principal.rpartition("@")[2]

    @property
    def hung_after(self) -> float:
        return self.heartbeat_interval * self.missed_heartbeats

    def keytab_for(self, principal: str) -> str | None:
        """The keytab path configured for ``principal`` (not checked for existence here)."""
        if principal in self.keytabs:
            return self.keytabs[principal]
        if principal == self.default_principal and self.default_keytab:
            return self.default_keytab
        if self.keytab_dir:
            safe = principal.split("@")[0].replace("/", "_")
            return str(Path(self.keytab_dir) / f"{safe}.keytab")
        return None

    def static_principals(self) -> list[str]:
        """Principals named in the configuration (tasks may add others at run time)."""
        named = {self.default_principal} if self.default_principal else set()
        named |= set(self.queue_principals.values()) | set(self.pool_principals.values())
        named |= set(self.keytabs) | {g.principal for g in self.grants}
        return sorted(named)

    def configured_principals(self) -> frozenset[str]:
        """What a task may run as without ``grants``: what the administrator mapped."""
        named = {self.default_principal} | set(self.queue_principals.values())
        return frozenset(named | set(self.pool_principals.values()))

    def delegated_anywhere(self, principal: str) -> bool:
        """Whether some rule forwards ``principal``'s TGT (for some DAG)."""
        return any(g.delegate and g.principal == principal for g in self.grants)

    def encryption_for(self, host: HostSpec) -> str:
        """pypsrp ``encryption=``: WS-Man message encryption over HTTP, TLS alone over HTTPS."""
        if host.ssl:
            return "auto"
        return "always" if self.message_encryption else "never"


# -- parsing helpers --------------------------------------------------------------------------
#: A PSRP session configuration name (``Register-PSSessionConfiguration -Name``).
_CONFIGURATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: A shell's IdleTimeOut cannot be shorter (MS-WSMV IdleTimeoutms: "minimum value MUST be 60000";
#: PowerShell's own client refuses less).
MIN_KEEPALIVE = 60.0
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_PRINCIPAL = re.compile(r"^[^\s@=,]+(@[^\s@=,]+)?$")


def split_entries(text: str) -> list[str]:
    """Split a comma/newline separated list, dropping blanks and ``#`` comments."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        out.extend(p.strip() for p in line.split(","))
    return [p for p in out if p]


def parse_host(entry: str, default_slots: int = 4) -> HostSpec:
    """Parse one ``hosts`` entry; ``ValueError`` says what is wrong and how to write it."""
    raw = entry.strip()
    text = raw if "://" in raw else f"http://{raw}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"entry {raw!r}: scheme {parts.scheme!r} is not http or https")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"entry {raw!r}: the port is not a number between 1 and 65535") from None
    name = (parts.hostname or "").lower()
    if not name or not _HOSTNAME.match(name):
        raise ValueError(f"entry {raw!r}: {name!r} is not a host name (write e.g. win01.corp.example)")
    if parts.path not in ("", "/") or parts.username or parts.password or parts.fragment:
        raise ValueError(f"entry {raw!r}: only scheme://name:port?slots=N&address=A is allowed")
    query = parse_qs(parts.query, keep_blank_values=True)
    allowed = ("slots", "address", "configuration", "max_shells_per_user", "max_users", "queues")
    unknown = set(query) - set(allowed)
    if unknown:
        raise ValueError(
            f"entry {raw!r}: unknown parameter(s) {sorted(unknown)}; allowed: {', '.join(allowed)}"
        )
    configuration = query.get("configuration", ["Microsoft.PowerShell"])[-1].strip()
    if not _CONFIGURATION.match(configuration):
        raise ValueError(
            f"entry {raw!r}: configuration={configuration!r} is not a PSRP session configuration name "
            "(write e.g. Microsoft.PowerShell or PowerShell.7)"
        )
    counts: dict[str, int | None] = {"slots": default_slots, "max_shells_per_user": None, "max_users": None}
    for key in counts:
        if key not in query:
            continue
        try:
            counts[key] = int(query[key][-1])
        except ValueError:
            raise ValueError(f"entry {raw!r}: {key} must be a whole number") from None
        if counts[key] < (2 if key == "max_shells_per_user" else 1):  # type: ignore[operator]
            least = "2 (a task's shell, and one to read its log)" if key == "max_shells_per_user" else "1"
            raise ValueError(f"entry {raw!r}: {key} must be at least {least}")
    address = query.get("address", [""])[-1].strip()
    if "address" in query and not address:
        raise ValueError(f"entry {raw!r}: address= is empty")
    queues = frozenset(q for value in query.get("queues", []) for q in value.split())  # "+" is a space
    if "queues" in query and not queues:
        raise ValueError(f"entry {raw!r}: queues= is empty (write e.g. queues=ssis+default, or leave it out)")
    return HostSpec(
        name=name,
        scheme="https" if scheme == "https" else "http",
        port=port or (5986 if scheme == "https" else 5985),
        slots=int(counts["slots"] or default_slots),
        address=address,
        configuration=configuration,
        max_shells_per_user=counts["max_shells_per_user"],
        max_users=counts["max_users"],
        queues=queues,
    )


def parse_hosts(text: str, default_slots: int = 4) -> tuple[tuple[HostSpec, ...], list[str]]:
    """Parse a host list; returns the hosts and a problem per bad or duplicate entry."""
    hosts: dict[str, HostSpec] = {}
    problems: list[str] = []
    for entry in split_entries(text):
        try:
            host = parse_host(entry, default_slots)
        except ValueError as e:
            problems.append(str(e))
            continue
        if host.name in hosts:
            problems.append(f"entry {entry!r}: host {host.name} is listed twice; keep one entry per host")
            continue
        hosts[host.name] = host
    return tuple(hosts.values()), problems


def parse_pairs(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse ``key=value`` pairs; a problem per malformed or repeated key."""
    out: dict[str, str] = {}
    problems = []
    for entry in split_entries(text):
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            problems.append(f"{entry!r} is not key=value")
        elif key in out:
            problems.append(f"{key!r} is given twice")
        else:
            out[key] = value
    return out, problems


# -- reading ----------------------------------------------------------------------------------
Getter = Callable[[str], str]


def airflow_getter(team_name: str | None = None) -> Getter:
    """Read ``[winexec]`` with Airflow's ``conf`` (env vars, airflow.cfg, secrets backends).

    With ``team_name`` (Airflow's multi-team mode), a team's own section: ``[<team>=winexec]``
    in airflow.cfg or ``AIRFLOW__<TEAM>___WINEXEC__<OPTION>``, as Airflow resolves it; nothing
    falls back to another team's or the global section, so teams share no host or principal.
    """
    from airflow.configuration import conf

    team = {"team_name": team_name} if team_name else {}

    def get(name: str) -> str:
        default = OPTIONS_BY_NAME[name].default if name in OPTIONS_BY_NAME else ""
        value = conf.get(SECTION, name, fallback=default, **team)
        return "" if value is None else str(value)

    return get


def airflow_log_folder() -> Path | None:
    """This machine's ``[logging] base_log_folder``: where Airflow here reads task logs, and where
    winexec puts the reasons of tasks that never ran and its audit trail."""
    from airflow.configuration import conf

    base = conf.get("logging", "base_log_folder", fallback="")
    return Path(base).expanduser() if base else None


def mapping_getter(values: Mapping[str, Any]) -> Getter:
    """Read from a plain mapping (tests, tools); missing options take their declared default."""

    def get(name: str) -> str:
        if name in values:
            v = values[name]
            return str(v) if not isinstance(v, str) else v
        return (OPTIONS_BY_NAME[name].default or "") if name in OPTIONS_BY_NAME else ""

    return get


def load(get: Getter | None = None, *, check_files: bool = True) -> Settings:
    """Read every option, validate, and return :class:`Settings` or raise :class:`WinexecConfigError`.

    ``check_files`` also checks that keytabs, the CA bundle and the hosts file exist and are
    readable: a missing keytab is an operator error best reported at start, not at first launch.
    """
    get = get or airflow_getter()
    problems: list[str] = []
    values: dict[str, Any] = {}

    def opt(name: str, why: str) -> None:
        problems.append(f"[{SECTION}] {name}: {why}")

    # scalar options by declared type
    for o in OPTIONS:
        raw = get(o.name).strip()
        try:
            if o.type == "integer":
                values[o.name] = int(raw)
            elif o.type == "float":
                values[o.name] = float(raw)
            elif o.type == "boolean":
                values[o.name] = parse_bool(raw)
            else:
                values[o.name] = raw
        except ValueError:
            kind = {"integer": "a whole number", "float": "a number", "boolean": "true or false"}[o.type]
            opt(o.name, f"{raw!r} is not {kind}; set e.g. {o.name} = {o.example or o.default}")
            values[o.name] = _coerce_default(o)

    # ranges
    for name, low in (
        ("default_slots", 1),
        ("host_failure_threshold", 1),
        ("connect_timeout", 1),
        ("operation_timeout", 1),
        ("read_timeout", 1),
        ("poll_timeout", 1),
        ("io_workers", 1),
        ("missed_heartbeats", 1),
        ("launch_attempts", 1),
        ("warm_runners", 0),
    ):
        if values[name] < low:
            opt(name, f"must be at least {low} (got {values[name]})")
    for name in ("host_refresh_interval", "heartbeat_interval"):
        if values[name] <= 0:
            opt(name, f"must be greater than 0 (got {values[name]})")
    for name in (
        "host_cooldown",
        "start_timeout",
        "keepalive_timeout",
        "execution_timeout_grace",
        "launch_backoff",
    ):
        if values[name] < 0:
            opt(name, f"must not be negative (got {values[name]})")
    if values["launch_backoff_max"] < values["launch_backoff"]:
        opt("launch_backoff_max", "must be at least launch_backoff")
    if values["read_timeout"] <= values["operation_timeout"]:
        opt("read_timeout", "must be greater than operation_timeout (pypsrp requires it); raise it")
    if values["read_timeout"] <= values["poll_timeout"] + 2:
        opt("poll_timeout", "must be at least 3 s below read_timeout; lower poll_timeout")
    if values["keepalive_timeout"] and values["keepalive_timeout"] < MIN_KEEPALIVE:
        opt("keepalive_timeout", f"must be 0 or at least {MIN_KEEPALIVE:g} (WinRM's smallest IdleTimeout)")
    elif values["keepalive_timeout"] and values["keepalive_timeout"] < 3 * values["heartbeat_interval"]:
        opt("keepalive_timeout", "must be 0 or at least three heartbeat_interval")

    # hosts
    hosts_text = values["hosts_raw"] = values["hosts"]
    if values["hosts_file"]:
        path = Path(values["hosts_file"])
        try:
            hosts_text += "\n" + path.read_text()
        except OSError as e:
            opt("hosts_file", f"cannot read {path}: {e.strerror}; create it or clear hosts_file")
    hosts, host_problems = parse_hosts(hosts_text, values["default_slots"])
    for p in host_problems:
        opt("hosts", f"{p}; write e.g. http://win01.corp.example:5985?slots=4")
    if not hosts and not host_problems:
        opt("hosts", "no Windows host configured; set hosts = https://win01.corp.example (or hosts_file)")
    values["hosts"] = hosts

    # transport security
    cv_raw = values["cert_validation"]
    cert_validation: bool | str
    try:
        cert_validation = parse_bool(cv_raw) if cv_raw else True
    except ValueError:
        cert_validation = cv_raw
        if check_files and not Path(cv_raw).is_file():
            opt("cert_validation", f"{cv_raw!r} is neither true/false nor an existing CA bundle file")
    values["cert_validation"] = cert_validation
    http_hosts = [h for h in hosts if not h.ssl]
    if not values["message_encryption"] and http_hosts and not values["allow_unencrypted_http"]:
        opt(
            "message_encryption",
            f"off while {http_hosts[0]} uses http: the task token would travel in clear text; "
            "turn message_encryption on, use https:// hosts, or set allow_unencrypted_http = True",
        )
    if not values["python"]:
        opt("python", r"empty; set the interpreter on the hosts, e.g. python = C:\Python312\python.exe")

    # identity
    for name in ("keytabs", "queue_principals", "pool_principals"):
        pairs, pair_problems = parse_pairs(values[name])
        for p in pair_problems:
            opt(name, f"{p}; write key=value pairs, comma or newline separated")
        values[name] = pairs
    values["grants"], grant_problems = parse_grants(values["grants"])
    for p in grant_problems:
        opt("grants", p)
    for name, fix in RETIRED.items():
        if get(name).strip():
            opt(name, f"no longer an option: {fix} (docs/security.md)")

    default = values["default_principal"]
    if not default:
        opt("default_principal", "empty; set the principal tasks run as, e.g. svc-airflow@CORP.EXAMPLE")
    elif not _PRINCIPAL.match(default) or "@" not in default:
        opt("default_principal", f"{default!r} is not user@REALM; write e.g. svc-airflow@CORP.EXAMPLE")
    named = [("queue_principals", p) for p in values["queue_principals"].values()] + [
        ("pool_principals", p) for p in values["pool_principals"].values()
    ]
    named += [("keytabs", p) for p in values["keytabs"]]
    for name, principal in named:
        if not _PRINCIPAL.match(principal):
            opt(name, f"{principal!r} is not a principal; write user@REALM")

    settings = Settings(**values)
    if check_files:
        _check_keytabs(settings, opt)
    if problems:
        raise _config_error_class()(problems)
    return settings


def _check_keytabs(s: Settings, opt: Callable[[str, str], None]) -> None:
    """Each statically named principal must have a readable keytab."""
    for principal in s.static_principals():
        path = s.keytab_for(principal)
        if path is None:
            which = "default_keytab" if principal == s.default_principal else "keytabs"
            opt(which, f"no keytab for {principal}; add it to {which} or set keytab_dir")
            continue
        if not os.access(path, os.R_OK):
            which = (
                "keytabs"
                if principal in s.keytabs
                else (
                    "default_keytab"
                    if principal == s.default_principal and s.default_keytab
                    else "keytab_dir"
                )
            )
            opt(which, f"keytab {path} for {principal} is missing or not readable by the scheduler")


def reread_hosts(
    settings: Settings, config_file: str | None = None, team_name: str | None = None
) -> tuple[tuple[HostSpec, ...], list[str]]:
    """Re-read the host list while the scheduler runs (Airflow's ``conf`` is read once).

    Order as Airflow resolves it: ``AIRFLOW__WINEXEC__HOSTS`` if set, else ``[winexec] hosts`` from
    airflow.cfg read afresh; plus ``hosts_file``. A team's executor reads its own:
    ``AIRFLOW__<TEAM>___WINEXEC__HOSTS``, ``[<team>=winexec]``. Returns the hosts and any problems
    (the caller keeps the previous list on problems).
    """
    section = f"{team_name}={SECTION}" if team_name else SECTION
    env = f"AIRFLOW__{team_name.upper()}___WINEXEC__HOSTS" if team_name else "AIRFLOW__WINEXEC__HOSTS"
    text = os.environ.get(env)
    if text is None:
        path = config_file or os.environ.get("AIRFLOW_CONFIG") or _default_airflow_cfg()
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
            text = parser.get(section, "hosts", fallback=None)
        except configparser.Error as e:
            return (), [f"[{SECTION}] hosts: cannot re-read {path}: {e}"]
    if text is None:
        text = settings.hosts_raw
    if settings.hosts_file:
        try:
            text += "\n" + Path(settings.hosts_file).read_text()
        except OSError as e:
            return (), [f"[{SECTION}] hosts_file: cannot read {settings.hosts_file}: {e.strerror}"]
    hosts, problems = parse_hosts(text, settings.default_slots)
    if not hosts and not problems:
        problems.append(f"[{SECTION}] hosts: the list became empty; keeping the previous hosts")
    return hosts, [f"[{SECTION}] hosts: {p}" for p in problems]


def _default_airflow_cfg() -> str:
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(home, "airflow.cfg")

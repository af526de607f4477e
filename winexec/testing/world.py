"""A whole winexec installation on one machine: realm, stand-in Windows hosts, Airflow.

The demo, the end-to-end tests and the benchmarks all need the same thing: a real MIT KDC, N
``winexec.sim`` hosts, the "Python installed on each host" and an Airflow (api-server, scheduler,
dag-processor on SQLite) whose airflow.cfg says ``executor = winexec.WindowsKerberosExecutor``
with a ``[winexec]`` section naming those hosts. The executor is configured only the production
way (airflow.cfg plus ``KRB5_CONFIG`` in the scheduler's environment), never from here.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winexec.config import DEFAULT_MAX_SHELLS_PER_USER, DEFAULT_MAX_USERS, SECTION
from winexec.sim.accounts import share
from winexec.sim.cluster import SimCluster
from winexec.sim.kdc import Realm
from winexec.sim.testing import running_cluster
from winexec.testing.airflow_stack import AirflowStack

EXECUTOR = "winexec.WindowsKerberosExecutor"


@dataclass
class World:
    realm: Realm
    cluster: SimCluster
    stack: AirflowStack
    python: Path  # the command the hosts run the agent with

    def principal(self, name: str) -> str:
        return self.realm.principal(name)


def host_python(path: Path, env: Mapping[str, str]) -> Path:
    """The interpreter "installed on the hosts": this venv's python with the hosts' own settings.

    A Windows host has its own AIRFLOW_HOME, DAGs folder and log folder (system environment); the
    stand-in starts native commands with a clean environment, so a wrapper supplies them.
    """
    exports = "".join(f"export {k}='{v}'\n" for k, v in env.items())
    path.write_text(f"#!/bin/sh\n{exports}exec '{sys.executable}' \"$@\"\n")
    path.chmod(0o755)
    return path


def host_entry(host: Any, slots: int, name: str | None = None, configuration: str = "") -> str:
    """One stand-in host as a ``[winexec] hosts`` entry: its SPN name, port, slots, loopback
    address, the PSRP endpoint and the host's WinRM shell quotas when not the defaults (as an
    operator who read them writes them)."""
    entry = f"http://{name or host.name}:{host.http_port}?slots={slots}&address={host.address}"
    if configuration:
        entry += f"&configuration={configuration}"
    quotas = {
        "max_shells_per_user": (host.quotas.MaxShellsPerUser, DEFAULT_MAX_SHELLS_PER_USER),
        "max_users": (host.quotas.MaxConcurrentUsers, DEFAULT_MAX_USERS),
    }
    for key, (value, default) in quotas.items():
        if value != default and value >= 2:
            entry += f"&{key}={value}"
    return entry


def hosts_option(cluster: SimCluster, slots: int, configurations: Sequence[str] = ()) -> str:
    """``[winexec] hosts`` for every host of ``cluster``; ``configurations[i]`` names host i's
    PSRP endpoint ("" or missing: the default)."""
    ends = list(configurations) + [""] * len(cluster.hosts)
    return ", ".join(host_entry(h, slots, configuration=c) for h, c in zip(cluster.hosts, ends, strict=False))


def peak(intervals: Iterable[tuple[float, float]]) -> int:
    """Most of these (start, end) intervals open at once."""
    steps = [(t, step) for start, end in intervals for t, step in ((start, 1), (end, -1))]
    now = top = 0
    for _, step in sorted(steps):
        now += step
        top = max(top, now)
    return top


def peak_concurrency(entries: list[dict[str, Any]]) -> int:
    """Most task runs (agent pipelines in run mode) ever at once on one host, from the stand-in's
    own record."""
    return peak((e["time"], e["ended"] or float("inf")) for e in entries if e["argv"][-1] == "winexec.agent")


def merge_config(*configs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """airflow.cfg sections merged left to right (later options win)."""
    out: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        for section, values in cfg.items():
            out.setdefault(section, {}).update(values)
    return out


@contextlib.contextmanager
def windows_world(
    workdir: Path,
    dags_folder: Path,
    *,
    hosts: int = 3,
    slots: int = 3,
    principals: tuple[str, ...] = ("airflow", "alice"),
    winexec: Mapping[str, str] | None = None,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    host_env: Mapping[str, str] | None = None,
    windows_like: bool = True,
    triggerer: bool = False,
    endpoints: Sequence[str] = (),
    teams: Mapping[str, tuple[Sequence[int], str]] | None = None,
) -> Iterator[World]:
    """Start everything under ``workdir``; stop everything (no process left) on exit.

    The first principal is ``[winexec] default_principal``; every principal's keytab lands in
    ``keytab_dir``, so tasks may map to any of them. ``host_env`` adds to the hosts' environment
    and ``winexec``/``config`` override airflow.cfg options. ``triggerer`` adds ``airflow
    triggerer`` (deferrable operators; the triggers run on this machine, the tasks on the hosts).
    ``endpoints[i]``: the PSRP endpoint winexec uses on host i (e.g. ``PowerShell.7``; the hosts
    then have PowerShell 7 installed); the default is Microsoft.PowerShell, Windows PowerShell 5.1.
    ``teams`` turns on Airflow's multi-team mode: team ``name: (host indices, principal)`` gets a
    winexec of its own (``[core] executor = ...;name=winexec...``) whose ``[name=winexec]`` names
    only those hosts, with that principal as its default; the teams exist in Airflow's database.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    # The hosts' Airflow home and the log share are folders every principal's account
    # uses (with accounts of their own: see winexec.sim.accounts); the DAGs are read by all.
    share(workdir, writable=True)
    share(dags_folder)
    home = workdir / "airflow-home"
    home.mkdir(exist_ok=True)
    host_home = workdir / "host-home"
    host_home.mkdir(exist_ok=True)
    with running_cluster(
        workdir / "realm",
        hosts,
        principals,
        windows_like=windows_like,
        powershell7="PowerShell.7" in endpoints,
    ) as (realm, cluster):
        python = host_python(
            workdir / "host-python",
            {
                "AIRFLOW_HOME": str(host_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                # the hosts write task logs where the api-server reads them (a share, in production)
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                # a small, shared machine answers slowly at times
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
                **(host_env or {}),
            },
        )
        default = realm.principal(principals[0])
        section = {
            "hosts": hosts_option(cluster, slots, endpoints),
            "python": str(python),
            "default_principal": default,
            "default_keytab": str(realm.keytab_path(default)),
            "keytab_dir": str(realm.workdir / "keytabs"),
            **(winexec or {}),
        }
        base: dict[str, dict[str, Any]] = {"core": {"parallelism": str(hosts * slots)}, "winexec": section}
        executor = EXECUTOR
        for team, (indices, principal) in (teams or {}).items():
            own = realm.principal(principal)
            base[f"{team}={SECTION}"] = {
                **section,
                "hosts": ", ".join(host_entry(cluster.hosts[i], slots) for i in indices),
                "default_principal": own,
                "default_keytab": str(realm.keytab_path(own)),
            }
            executor += f";{team}={EXECUTOR}"
        if teams:
            base["core"]["multi_team"] = "True"
        with AirflowStack(
            dags_folder,
            home=home,
            executor=executor,
            scheduler=True,
            dag_processor=True,
            triggerer=triggerer,
            config=merge_config(base, config or {}),
            env=realm.env(),
            teams=tuple(teams or ()),
        ) as stack:
            yield World(realm=realm, cluster=cluster, stack=stack, python=python)

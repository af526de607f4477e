"""The world ``airflow winexec`` commands are tested in: a realm, two stand-in hosts, ``[winexec]``
from ``AIRFLOW__WINEXEC__*`` variables as ``airflow`` would read them; one per test module."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from winexec.sim import SimCluster
from winexec.sim.accounts import share
from winexec.sim.kdc import Realm
from winexec.sim.testing import running_cluster
from winexec.testing.world import host_entry, host_python, hosts_option

__all__ = ["Env", "_lines", "_run", "env"]


@dataclass
class Env:
    realm: Realm
    cluster: SimCluster
    env: dict[str, str]

    def host_entry(self, i: int, name: str | None = None) -> str:
        h = self.cluster.hosts[i]
        return host_entry(h, 3, name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cli")
    share(tmp, writable=True)  # the hosts' Airflow home and logs: folders all principals use
    with running_cluster(tmp / "realm", 2, ("airflow", "alice")) as (realm, cluster):
        python = host_python(
            tmp / "host-python",
            {
                "AIRFLOW_HOME": str(tmp / "host-home"),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp / "host-logs"),
            },
        )
        default, alice = realm.principal("airflow"), realm.principal("alice")
        values = {
            "AIRFLOW__WINEXEC__HOSTS": hosts_option(cluster, 3),
            "AIRFLOW__WINEXEC__PYTHON": str(python),
            "AIRFLOW__WINEXEC__DEFAULT_PRINCIPAL": default,
            "AIRFLOW__WINEXEC__DEFAULT_KEYTAB": str(realm.keytab_path(default)),
            "AIRFLOW__WINEXEC__KEYTAB_DIR": str(realm.workdir / "keytabs"),
            "AIRFLOW__WINEXEC__KEYTABS": f"{alice}={realm.keytab_path(alice)}",
            # alice's tasks get her TGT forwarded (a second hop); the default principal's do not
            "AIRFLOW__WINEXEC__GRANTS": f"{default}: dag_id=*; {alice}: dag_id=* delegate",
            "AIRFLOW__WINEXEC__CONNECT_TIMEOUT": "5",
            "AIRFLOW__WINEXEC__OPERATION_TIMEOUT": "5",
            "AIRFLOW__WINEXEC__READ_TIMEOUT": "15",
        }
        with pytest.MonkeyPatch.context() as mp:
            for k, v in values.items():
                mp.setenv(k, v)
            yield Env(realm, cluster, values)


def _args(**kw: Any) -> argparse.Namespace:
    kw.setdefault("output", "json")
    kw.setdefault("host", None)
    kw.setdefault("principal", None)
    return argparse.Namespace(**kw)


def _lines(out: str) -> list[str]:
    """The step lines of ``airflow winexec check``'s table."""
    return [ln for ln in out.splitlines() if ln.startswith("[")]


def _run(fn: Any, capsys: pytest.CaptureFixture[str], **kw: Any) -> tuple[int, str]:
    code = 0
    try:
        fn(_args(**kw))
    except SystemExit as e:
        code = int(e.code) if isinstance(e.code, int) else 1
    return code, capsys.readouterr().out

"""Fixtures the stand-in's own tests share: one realm and cluster per module.

A module imports them (``from tests.sim_fixtures import host, realm, sim``) and may set
``SIM_HOSTS`` / ``SIM_PRINCIPALS`` to size its cluster (1 host, the ``airflow`` user by default)
and ``SIM_CLUSTER`` for other SimCluster options.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from winexec.sim import SimCluster, SimHost
from winexec.sim.kdc import Realm
from winexec.sim.testing import running_cluster


@pytest.fixture(scope="module")
def sim(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Realm, SimCluster]]:
    hosts = getattr(request.module, "SIM_HOSTS", 1)
    principals = getattr(request.module, "SIM_PRINCIPALS", ("airflow",))
    extra = getattr(request.module, "SIM_CLUSTER", {})  # more SimCluster options
    with running_cluster(tmp_path_factory.mktemp("simrealm"), hosts, principals, **extra) as rc:
        yield rc


@pytest.fixture
def realm(sim: tuple[Realm, SimCluster]) -> Realm:
    return sim[0]


@pytest.fixture
def host(sim: tuple[Realm, SimCluster]) -> SimHost:
    return sim[1].hosts[0]


def run_python(
    host: SimHost, realm: Realm, principal: str, *args: str, delegate: bool = False
) -> dict[str, Any]:
    """``python <args>`` as a native command in a PSRP shell of ``principal`` on ``host``; its last
    JSON line (the tests' probes print one)."""
    import json
    import sys

    from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool

    from winexec.sim.testing import wsman

    with RunspacePool(wsman(host, realm, principal, delegate=delegate)) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet(sys.executable)
        for arg in args:
            ps.add_argument(arg)
        ps.invoke()
        assert ps.state == PSInvocationState.COMPLETED, ps.streams.error
        lines = [str(o) for o in ps.output if str(o).startswith("{")]
        assert lines, "\n".join(str(e) for e in ps.streams.error)
        result: dict[str, Any] = json.loads(lines[-1])
        return result

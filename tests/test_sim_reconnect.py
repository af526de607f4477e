"""Disconnected sessions: a pipeline outlives its client and a new client process adopts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool

from tests import sim_fixtures
from winexec.sim import SimHost
from winexec.sim.kdc import Realm
from winexec.sim.testing import kinit, wsman

PY = sys.executable
# the stand-in's shared fixtures (tests/sim_fixtures.py)
host, realm, sim = sim_fixtures.host, sim_fixtures.realm, sim_fixtures.sim
SCRIPT = (
    "import time\n"
    "print('first', flush=True)\n"
    "time.sleep(1.5)\n"
    "print('second', flush=True)\n"
    "print('third', flush=True)\n"
)

ADOPT = r"""
import json, sys
import spnego
from pypsrp.powershell import RunspacePool
from pypsrp.wsman import WSMan

port, fqdn, ccache, principal, pool_id = sys.argv[1:]
w = WSMan("127.0.0.1", port=int(port), auth="kerberos", ssl=False, negotiate_hostname_override=fqdn,
          username=spnego.KerberosCCache(ccache="FILE:" + ccache, principal=principal), operation_timeout=5)
pools = RunspacePool.get_runspace_pools(w)
pool = next(p for p in pools if p.id.upper() == pool_id.upper())
pool.connect()
shells = pool.create_disconnected_power_shells()
ps = shells[0]
out = ps.connect()
print(json.dumps({"pools": [p.id for p in pools], "pipelines": len(shells), "output": out,
                  "state": int(ps.state)}))
pool.close()
"""


def _started(pool: RunspacePool) -> PowerShell:
    ps = PowerShell(pool)
    ps.add_cmdlet(PY).add_argument("-c").add_argument(SCRIPT)
    ps.begin_invoke()
    end = time.monotonic() + 15
    while not ps.output:
        assert time.monotonic() < end
        ps.poll_invoke(timeout=2)
    assert ps.output == ["first"]
    return ps


def test_new_client_process_adopts_disconnected_pipeline(realm: Realm, host: SimHost) -> None:
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    _started(pool)
    pool.disconnect()
    assert host.shells()[0].state == "Disconnected"
    time.sleep(2)  # output produced while nobody listens is buffered

    cc = kinit(realm, "airflow")
    proc = subprocess.run(
        [PY, "-c", ADOPT, str(host.http_port), host.name, str(cc), f"airflow@{realm.name}", str(pool.id)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **realm.env()},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert str(pool.id).upper() in [p.upper() for p in result["pools"]]
    assert result["pipelines"] == 1
    assert result["output"] == ["second", "third"]
    assert result["state"] == int(PSInvocationState.COMPLETED)
    assert host.shell_count == 0  # the adopting client closed it


def test_same_client_reconnects(realm: Realm, host: SimHost) -> None:
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    ps = _started(pool)
    pool.disconnect()
    time.sleep(0.5)
    pool.connect()
    assert host.shells()[0].state == "Connected"
    ps.state = PSInvocationState.RUNNING
    ps.end_invoke()
    assert ps.output == ["first", "second", "third"]
    pool.close()


def test_other_user_cannot_see_or_take_the_shell(realm: Realm, host: SimHost) -> None:
    realm.add_principal("mallory")
    pool = RunspacePool(wsman(host, realm))
    pool.open()
    try:
        other = wsman(host, realm, "mallory")
        assert RunspacePool.get_runspace_pools(other) == []
    finally:
        pool.close()

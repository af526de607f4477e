"""The stand-in's lifecycle: fast start, hosts added and removed, nothing left behind; the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from pypsrp.powershell import PowerShell, RunspacePool

from winexec.sim import SimCluster
from winexec.sim.kdc import Realm
from winexec.sim.testing import running_cluster, wsman

PY = sys.executable


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def test_five_hosts_start_in_seconds_and_stop_leaves_nothing(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    t0 = time.monotonic()
    with running_cluster(tmp_path / "realm", hosts=5) as (realm, cluster):
        elapsed = time.monotonic() - t0
        assert elapsed < 10, f"realm + 5 hosts took {elapsed:.1f} s"
        names = [h.name for h in cluster.hosts]
        assert names == [f"win0{i}.{realm.domain}" for i in range(1, 6)]
        ports = [p for h in cluster.hosts for p in (h.http_port, h.https_port)]
        assert len(set(ports)) == 10 and all(_listening(p) for p in ports)
        workdir = cluster.workdir
        # Leave work running: stop() must still clean up.
        pool = RunspacePool(wsman(cluster.hosts[4], realm))
        pool.open()
        ps = PowerShell(pool)
        ps.add_cmdlet(PY).add_argument("-c").add_argument("import time; print(1, flush=True); time.sleep(60)")
        ps.begin_invoke()
        while not ps.output:
            ps.poll_invoke(timeout=2)
        pid = cluster.hosts[4].processes()[0]["pid"]
    assert not any(_listening(p) for p in ports)
    assert not workdir.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    end = time.monotonic() + 5
    while True:
        leftover = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        children = [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before]
        children = [p for p in children if p.status() != psutil.STATUS_ZOMBIE]
        if not leftover and not children:
            break
        assert time.monotonic() < end, f"left running: {leftover} {children}"
        time.sleep(0.1)


def test_add_and_remove_host(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "realm", hosts=1) as (realm, cluster):
        added = cluster.add_host()
        assert added.name == f"win02.{realm.domain}"
        with RunspacePool(wsman(added, realm)) as pool:
            ps = PowerShell(pool)
            ps.add_cmdlet(PY).add_argument("-c").add_argument("print('on win02')")
            assert ps.invoke() == ["on win02"]
        port = added.http_port
        cluster.remove_host("win02")
        assert [h.short_name for h in cluster.hosts] == ["win01"]
        assert not _listening(port)
        with pytest.raises(KeyError):
            cluster.host("win02")
        assert cluster.add_host().short_name == "win03"  # names are never reused ...
        again = cluster.add_host("win02")  # ... unless asked for: the host comes back re-keyed
        with RunspacePool(wsman(again, realm)) as pool:
            ps = PowerShell(pool)
            ps.add_cmdlet(PY).add_argument("-c").add_argument("print('back')")
            assert ps.invoke() == ["back"]
        with pytest.raises(ValueError):
            cluster.add_host("win02")


def test_cluster_context_manager(tmp_path: Path, realm: Realm) -> None:
    with SimCluster(realm, hosts=1, workdir=tmp_path / "c") as cluster:
        h = cluster.hosts[0]
        assert h.ca_cert.exists() and h.keytab is not None and h.keytab.exists()
        assert _listening(h.http_port)
    assert not _listening(h.http_port)


def test_cli_json_and_clean_shutdown(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [PY, "-m", "winexec.sim", "--hosts", "2", "--json", "--principal", "bob", "--short-tickets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("KRB5")},
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["realm"] == "WINEXEC.TEST"
        assert set(info["principals"]) == {"airflow", "bob"}
        assert all(Path(k).exists() for k in info["principals"].values())
        assert [h["name"] for h in info["hosts"]] == ["win01.winexec.test", "win02.winexec.test"]
        h = info["hosts"][0]
        assert set(h) == {"name", "address", "http_port", "https_port", "ca_cert"}
        assert _listening(h["http_port"]) and _listening(h["https_port"])
        # A client that knows only the JSON line can use the host.
        env = {**os.environ, "KRB5_CONFIG": info["krb5_conf"], "KRB5CCNAME": f"FILE:{tmp_path}/cc"}
        subprocess.run(
            ["kinit", "-k", "-t", info["principals"]["bob"], "-f", "bob@WINEXEC.TEST"], env=env, check=True
        )
        client = (
            "import sys\n"
            "from pypsrp.client import Client\n"
            "c = Client('127.0.0.1', port=int(sys.argv[1]), ssl=True, auth='kerberos',\n"
            "           cert_validation=sys.argv[3], negotiate_hostname_override=sys.argv[2])\n"
            "from pypsrp.powershell import PowerShell, RunspacePool\n"
            "with RunspacePool(c.wsman) as pool:\n"
            "    ps = PowerShell(pool)\n"
            "    ps.add_cmdlet(sys.executable).add_argument('-c')\n"
            "    ps.add_argument('import os; print(os.environ[\"USERNAME\"])')\n"
            "    print(ps.invoke()[0])\n"
        )
        out = subprocess.run(
            [PY, "-c", client, str(h["https_port"]), h["name"], h["ca_cert"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.stdout.strip() == "bob", out.stderr[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    assert rc == 0
    assert not _listening(info["hosts"][0]["http_port"])
    assert not Path(info["krb5_conf"]).exists()

"""Client-side helpers for tests against the stand-in: tickets and unmodified pypsrp clients.

Clients get their TGT the way the executor does: from the principal's keytab into a FILE
ccache (``kinit -k -f``), never from the developer's own cache.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winexec.sim.kdc import Realm

if TYPE_CHECKING:
    from winexec.sim.cluster import SimCluster


def kinit(realm: Realm, principal: str, ccache: Path | None = None, forwardable: bool = True) -> Path:
    """A FILE ccache holding ``principal``'s TGT, obtained from its keytab."""
    princ = realm.principal(principal)
    keytab = realm.keytab_path(princ)
    if not keytab.exists():
        realm.add_principal(princ)
    path = ccache or realm.workdir / f"cc-{princ.split('@')[0].replace('/', '_')}"
    argv = ["kinit", "-k", "-t", str(keytab), "-c", f"FILE:{path}"]
    argv += ["-f"] if forwardable else ["-F"]
    subprocess.run(
        [*argv, princ], env={**os.environ, **realm.env()}, check=True, capture_output=True, timeout=30
    )
    return path


def wsman(
    host: Any,
    realm: Realm,
    principal: str = "airflow",
    *,
    ccache: Path | None = None,
    ssl: bool = False,
    delegate: bool = False,
    **kwargs: Any,
) -> Any:
    """A ``pypsrp.wsman.WSMan`` for ``host`` (a SimHost) as ``principal`` from its ccache."""
    import spnego
    from pypsrp.wsman import WSMan

    princ = realm.principal(principal)
    cc = ccache or kinit(realm, princ)
    kw: dict[str, Any] = {
        "port": host.https_port if ssl else host.http_port,
        "auth": "kerberos",
        "ssl": ssl,
        "negotiate_hostname_override": host.name,
        "negotiate_delegate": delegate,
        "username": spnego.KerberosCCache(ccache=f"FILE:{cc}", principal=princ),
        "operation_timeout": 5,
    }
    if ssl:
        kw["cert_validation"] = str(host.ca_cert)
    kw.update(kwargs)
    return WSMan(host.address, **kw)


@contextlib.contextmanager
def running_cluster(
    workdir: Path, hosts: int = 2, principals: tuple[str, ...] = ("airflow",), **kwargs: Any
) -> Iterator[tuple[Realm, SimCluster]]:
    """A started realm (this process's MIT Kerberos pointed at it) and cluster; both stopped after."""
    from winexec.sim.cluster import SimCluster

    saved = {k: os.environ.get(k) for k in ("KRB5_CONFIG", "KRB5_KDC_PROFILE", "KRB5CCNAME")}
    realm = Realm(workdir=workdir).start()
    os.environ.update(realm.env())
    cluster: SimCluster | None = None
    try:
        for p in principals:
            realm.add_principal(p)
        cluster = SimCluster(realm, hosts=hosts, **kwargs).start()
        yield realm, cluster
    finally:
        if cluster is not None:
            cluster.stop()
        realm.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

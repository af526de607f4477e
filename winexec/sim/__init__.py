"""The stand-in for Windows: a real KDC plus WinRM/PSRP endpoints on loopback.

``SimCluster``/``SimHost``/``Quotas`` are imported lazily so ``winexec.sim.kdc`` stays usable
without the test-only dependencies (psrpcore, cryptography) the endpoints need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from winexec.sim.cluster import Quotas, SimCluster, SimHost

__all__ = ["Quotas", "SimCluster", "SimHost"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from winexec.sim import cluster

        return getattr(cluster, name)
    raise AttributeError(f"module 'winexec.sim' has no attribute {name!r}")

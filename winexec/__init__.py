"""winexec: run Airflow tasks on Windows hosts over PSRP, each as its own Kerberos principal.

The executor is resolved lazily so that ``import winexec`` (and the Windows-host side,
``winexec.agent``) never pulls in airflow-core, which the hosts do not install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["WindowsKerberosExecutor", "__version__"]

if TYPE_CHECKING:
    from winexec.executor import WindowsKerberosExecutor


def __getattr__(name: str) -> Any:
    if name == "WindowsKerberosExecutor":
        from winexec.executor import WindowsKerberosExecutor

        return WindowsKerberosExecutor
    raise AttributeError(f"module 'winexec' has no attribute {name!r}")

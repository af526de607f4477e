"""winexec: run Airflow tasks on Windows hosts over PSRP, each as its own Kerberos principal.

The executor is resolved lazily so that ``import winexec`` (and the Windows-host side,
``winexec.agent``) never needs the scheduler side's dependencies, the ``scheduler`` extra, which
the hosts do not install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["WindowsKerberosExecutor", "__version__"]

#: what the executor imports from the ``scheduler`` extra, most of it only when it starts
_SCHEDULER_SIDE = ("airflow", "pypsrp", "spnego", "gssapi", "krb5")

if TYPE_CHECKING:
    from winexec.executor import WindowsKerberosExecutor


def _scheduler_side_missing() -> str | None:
    from importlib.util import find_spec

    for mod in _SCHEDULER_SIDE:
        try:
            if find_spec(mod) is None:
                return mod
        except ValueError:  # in sys.modules without a spec: importable
            pass
    return None


def __getattr__(name: str) -> Any:
    if name == "WindowsKerberosExecutor":
        missing = _scheduler_side_missing()
        try:
            if missing:
                raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
            from winexec.executor import WindowsKerberosExecutor
        except ImportError as e:
            if (e.name or "").partition(".")[0] not in _SCHEDULER_SIDE:
                raise
            raise ImportError(
                f'winexec.WindowsKerberosExecutor needs {e.name}: pip install "winexec[scheduler]"',
                name=e.name,
            ) from e
        return WindowsKerberosExecutor
    raise AttributeError(f"module 'winexec' has no attribute {name!r}")

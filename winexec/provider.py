"""Provider registration: Airflow's ProvidersManager reads this through the entry point.

The ``config`` section comes from :data:`winexec.config.OPTIONS`, the same declarations the
executor validates against, so ``airflow config list --section winexec`` and the validator
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import winexec


def get_provider_info() -> dict[str, Any]:
    from winexec.config import provider_config

    return {
        "package-name": "winexec",
        "name": "winexec",
        "description": "Runs Airflow tasks on Windows hosts over PowerShell Remoting with Kerberos.",
        "versions": [winexec.__version__],
        "executors": ["winexec.WindowsKerberosExecutor"],
        "config": provider_config(),
        "cli": ["winexec.provider.get_cli_commands"],
    }


def get_cli_commands() -> list[Any]:
    """``airflow winexec …`` commands, once ``winexec.cli`` provides them; none until then."""
    try:
        from winexec import cli  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return []
    get = getattr(cli, "get_commands", None) or getattr(cli, "get_cli_commands", None)
    return list(get()) if callable(get) else []

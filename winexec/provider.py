"""Provider registration: Airflow's ProvidersManager reads this through the entry point."""

from __future__ import annotations

from typing import Any

import winexec


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "winexec",
        "name": "winexec",
        "description": "Runs Airflow tasks on Windows hosts over PowerShell Remoting with Kerberos.",
        "versions": [winexec.__version__],
        "executors": ["winexec.WindowsKerberosExecutor"],
    }

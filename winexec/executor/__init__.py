"""The Airflow side of winexec: ``WindowsKerberosExecutor`` and the parts it hands work to.

See :mod:`winexec.executor.executor` for how they divide it, and docs/architecture.md.
"""

from __future__ import annotations

from winexec.executor.executor import WindowsKerberosExecutor
from winexec.executor.records import Phase, TaskRecord

__all__ = ["Phase", "TaskRecord", "WindowsKerberosExecutor"]

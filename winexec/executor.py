"""Airflow glue: maps BaseExecutor calls onto the pool, launcher and watchdog (placeholder)."""

from __future__ import annotations

from airflow.executors.base_executor import BaseExecutor


class WindowsKerberosExecutor(BaseExecutor):
    """Runs each task instance on a Windows host over PSRP as the task's own principal."""

"""The executor's end-to-end DAG once more, on the hosts' PowerShell 7 endpoint (``PowerShell.7``,
``configuration=`` in ``[winexec] hosts``): it starts the agent before its input and streams it,
where Windows PowerShell 5.1, the default, starts it only after (sim README, fidelity table)."""

from __future__ import annotations

from tests.test_executor_e2e import stack, test_a_whole_dag_runs_on_the_windows_hosts, world

POWERSHELL7 = True

__all__ = ["stack", "test_a_whole_dag_runs_on_the_windows_hosts", "world"]

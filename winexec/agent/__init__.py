"""The Windows-host side of winexec: ``python -m winexec.agent``.

Runs one Airflow task instance under the Task SDK's own supervision, without ``os.fork``: the
task runner is started with ``subprocess.Popen`` and talks to the supervisor over loopback TCP
(see :mod:`winexec.agent.coordinator`). The agent speaks :mod:`winexec.protocol` on stdin/stdout.

Only ``apache-airflow-task-sdk`` (and psutil, which it already requires) may be imported here:
the hosts never install airflow-core.
"""

from __future__ import annotations

"""End to end: a real Airflow (api-server, scheduler, dag-processor on SQLite) with
``executor = winexec.WindowsKerberosExecutor`` running a whole DAG on three stand-in Windows hosts.

The executor lives inside the scheduler process, so everything it needs comes the way it would
in production: the ``[winexec]`` section in airflow.cfg and the realm's ``KRB5_CONFIG`` in the
scheduler's environment.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_launcher import DAG_ID, DAGS, WINDOWS_LIKE, host_python
from winexec.sim.testing import running_cluster
from winexec.testing.airflow_stack import AirflowStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    tmp = tmp_path_factory.mktemp("e2e")
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "winexec_e2e_dag.py", dags)
    shutil.copy(DAGS / "winexec_adopt_dag.py", dags)
    with running_cluster(tmp / "realm", 3, ("airflow", "alice"), windows_like=WINDOWS_LIKE) as (
        realm,
        cluster,
    ):
        hosts = ", ".join(f"http://{h.name}:{h.http_port}?slots=3&address={h.address}" for h in cluster.hosts)
        # what the hosts have installed: the agent's Python, with the host's own Airflow settings
        host_home = tmp / "host-home"
        host_home.mkdir()
        (tmp / "home").mkdir()
        logs = tmp / "home" / "logs"
        python = host_python(
            tmp / "host-python",
            {
                "AIRFLOW_HOME": str(host_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                # a shared 2-core test machine under load answers slowly
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
                "WINEXEC_SPOOL": str(tmp / "spool"),
                "WINEXEC_E2E_SECOND_HOP": f"HTTP@{cluster.hosts[1].name}",
            },
        )
        winexec_cfg = {
            "hosts": hosts,
            "python": str(python),
            "default_principal": realm.principal("airflow"),
            "default_keytab": str(realm.keytab_path(realm.principal("airflow"))),
            "keytab_dir": str(realm.workdir / "keytabs"),
            "heartbeat_interval": "1",
            "missed_heartbeats": "10",
            "keepalive_timeout": "60",
            "execution_timeout_grace": "5",
            "operation_timeout": "5",
            "read_timeout": "15",
            "connect_timeout": "5",
            "io_workers": "8",
            "launch_backoff": "0.5",
        }
        config: dict[str, dict[str, Any]] = {
            "winexec": winexec_cfg,
            "core": {"parallelism": "16"},
            "scheduler": {"task_queued_timeout": "300"},
        }
        with AirflowStack(
            dags,
            home=tmp / "home",
            executor="winexec.WindowsKerberosExecutor",
            scheduler=True,
            dag_processor=True,
            config=config,
            env=realm.env(),
        ) as s:
            s.set_variable("winexec_e2e_var", "hello")
            yield s


def test_a_whole_dag_runs_on_the_windows_hosts(stack: AirflowStack) -> None:
    run_id = stack.trigger(DAG_ID)
    try:
        state = stack.wait_for_run(DAG_ID, run_id, timeout=420)
    except Exception:
        print(stack.log_tail("scheduler", 20000))
        raise
    tis = {(t["task_id"], t["map_index"]): t for t in stack.task_instances(DAG_ID, run_id)}
    states = {k: t["state"] for k, t in tis.items()}
    assert state == "failed", states  # too_slow must fail; everything else must succeed
    assert states.pop(("too_slow", -1)) == "failed"
    assert states.pop(("unknown_principal", -1)) == "failed"
    assert all(s == "success" for s in states.values()), states
    assert len([k for k in states if k[0].startswith("parallel_")]) == 10
    assert {k[1] for k in states if k[0] == "mapped"} == {0, 1, 2}
    assert tis[("flaky", -1)]["try_number"] == 2
    assert stack.xcom(DAG_ID, run_id, "read_variable") == "hello/airflow"
    hop = stack.xcom(DAG_ID, run_id, "double_hop")
    assert hop["client"] == "alice@WINEXEC.TEST" and hop["user"] == "alice"
    # spread over the pool (every sim host is this machine, so TI.hostname cannot tell them apart)
    launched = re.findall(r"launched on (win\d+)\.", stack.log_tail("scheduler", 10_000_000))
    assert len(set(launched)) >= 2, launched
    # a task the executor could not start: the reason is in the task's log, as Airflow shows it
    log = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/unknown_principal/logs/1")
    text = str(log)
    assert "winexec: could not start the task" in text and "nobody.keytab" in text, text[-2000:]


def test_running_tasks_survive_a_scheduler_restart(stack: AirflowStack) -> None:
    """The old scheduler detaches (end()), the new one reattaches to the agent by run id."""
    dag_id = "winexec_adopt"
    run_id = stack.trigger(dag_id, conf={"sleep": 25})
    stack.wait_for_ti(dag_id, run_id, "long_sleep", {"running"}, timeout=180)
    old = stack.procs["scheduler"]
    os.killpg(old.pid, signal.SIGTERM)
    old.wait(90)
    stack._spawn("scheduler", "scheduler")
    assert stack.wait_for_run(dag_id, run_id, timeout=240) == "success"
    ti = stack.task_instance(dag_id, run_id, "long_sleep")
    assert ti["try_number"] == 1  # the same try finished: adopted, not reset and re-run
    assert stack.xcom(dag_id, run_id, "long_sleep") == "slept through a scheduler restart"
    log = stack.log_tail("scheduler", 10_000_000)
    assert "left running on" in log and "adopted TaskInstanceKey(dag_id='winexec_adopt'" in log

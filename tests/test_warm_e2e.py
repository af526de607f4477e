"""End to end on warm agents (``[winexec] warm_runners``): the whole e2e DAG on two Windows
PowerShell 5.1 stand-in hosts, each task a start line streamed to its principal's warm agent."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.test_launcher import DAG_ID, DAGS
from winexec.testing.world import World, windows_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("warm")
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "winexec_e2e_dag.py", dags)
    with windows_world(
        tmp,
        dags,
        hosts=2,
        slots=3,
        principals=("airflow", "alice"),
        triggerer=True,  # deferrable_sensor
        host_env={"WINEXEC_E2E_SECOND_HOP": "HTTP@win02.winexec.test"},
        winexec={
            "warm_runners": "2",
            "heartbeat_interval": "1",
            "missed_heartbeats": "10",
            "keepalive_timeout": "60",
            "execution_timeout_grace": "5",
            "operation_timeout": "5",
            "read_timeout": "15",
            "connect_timeout": "5",
            "launch_backoff": "0.5",
            "grants": f"airflow@WINEXEC.TEST: dag_id=*\nalice@WINEXEC.TEST: dag_id={DAG_ID} delegate",
        },
        config={"core": {"parallelism": "16"}, "scheduler": {"task_queued_timeout": "300"}},
    ) as w:
        w.stack.set_variable("winexec_e2e_var", "hello")
        yield w


@pytest.mark.timeout(600)
def test_the_e2e_dag_runs_on_warm_agents_one_shell_per_host_and_principal(world: World) -> None:
    stack = world.stack
    run_id = stack.trigger(DAG_ID)
    try:
        state = stack.wait_for_run(DAG_ID, run_id, timeout=420)
    except Exception:
        print(stack.log_tail("scheduler", 20000))
        raise
    tis = {(t["task_id"], t["map_index"]): t for t in stack.task_instances(DAG_ID, run_id)}
    states = {k: t["state"] for k, t in tis.items()}
    assert state == "failed", states  # too_slow must fail (execution_timeout); the rest succeed
    assert states.pop(("too_slow", -1)) == "failed"
    assert states.pop(("unknown_principal", -1)) == "failed"
    assert all(s == "success" for s in states.values()), (states, stack.log_tail("scheduler", 20000))
    assert tis[("flaky", -1)]["try_number"] == 2
    assert stack.xcom(DAG_ID, run_id, "read_variable") == "hello/airflow"
    hop = stack.xcom(DAG_ID, run_id, "double_hop")  # alice's forwarded TGT reached her warm agent
    assert hop["client"] == "alice@WINEXEC.TEST" and hop["user"] == "alice"
    tasks = len(tis) - 1  # unknown_principal never reached a host
    warm_starts, psrp_task_agents = 0, 0
    for h in world.cluster.hosts:
        for entry in h.pipeline_log:
            line = " ".join(entry["argv"])
            if "winexec.agent --warm" in line:
                assert entry["endpoint"] == "cmd"
                warm_starts += 1
            elif line.endswith("winexec.agent"):
                psrp_task_agents += 1
    assert psrp_task_agents == 0, "a task took the one-shell-per-task path"
    # One warm agent per (host, principal) that ran something: 2 hosts x 2 principals at most.
    assert 1 <= warm_starts <= 4, warm_starts
    assert warm_starts < tasks

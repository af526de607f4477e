"""Airflow 3.3's multi-team mode with winexec, end to end: ``[core] multi_team``, two teams in
Airflow's database, each owning a DAG bundle, and ``[core] executor`` giving each team a winexec
of its own (``winexec...;team_a=winexec...;team_b=winexec...``). Each team's executor reads only
its ``[<team>=winexec]``: its own host and its own principal.

Real api-server, scheduler and dag-processor; the tasks run through the Task SDK on the stand-in
hosts, and their logs are read back through the api-server (a team's log reader).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import pytest

from winexec.testing.world import World, windows_world

from .test_launcher import DAGS

#: team: (index of its one host, its principal, that host's COMPUTERNAME)
TEAMS = {"team_a": (1, "alice", "WIN02"), "team_b": (2, "bob", "WIN03")}
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("teams")
    dags = tmp / "dags"
    bundles = []
    for team in TEAMS:
        folder = dags / team
        folder.mkdir(parents=True)
        shutil.copy(DAGS / "winexec_team_dag.py", folder / f"winexec_{team}.py")
        bundles.append(
            {
                "name": f"{team}_dags",
                "classpath": LOCAL_BUNDLE,
                "kwargs": {"path": str(folder)},
                "team_name": team,
            }
        )
    # a host initializes the task's bundle by name, as the Task SDK does: it needs the names and
    # paths, not the teams (it is not the multi-team deployment; Airflow refuses team names there)
    on_hosts = [{k: v for k, v in b.items() if k != "team_name"} for b in bundles]
    with windows_world(
        tmp,
        dags,
        hosts=3,
        slots=2,
        principals=("airflow", "alice", "bob"),
        teams={team: ((index,), principal) for team, (index, principal, _) in TEAMS.items()},
        host_env={"AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(on_hosts)},
        winexec={
            "heartbeat_interval": "1",
            "missed_heartbeats": "10",
            "operation_timeout": "5",
            "read_timeout": "15",
            "connect_timeout": "5",
        },
        config={
            "dag_processor": {"dag_bundle_config_list": json.dumps(bundles)},
            "scheduler": {"task_queued_timeout": "300"},
        },
    ) as w:
        yield w


@pytest.mark.timeout(600)
def test_each_teams_tasks_run_on_its_own_host_as_its_own_principal(world: World) -> None:
    stack = world.stack
    runs = {team: stack.trigger(f"winexec_{team}") for team in TEAMS}
    for team, run_id in runs.items():
        state = stack.wait_for_run(f"winexec_{team}", run_id, timeout=420)
        assert state == "success", stack.log_tail("scheduler", 8000)
    log = stack.log_tail("scheduler", 10_000_000)
    for team in TEAMS:  # the scheduler made one winexec per team, each from its own section
        assert f"winexec (team {team}): 1 host(s)" in log, log[-5000:]
    for team, (_, user, computer) in TEAMS.items():
        dag_id = f"winexec_{team}"
        assert stack.xcom(dag_id, runs[team], "whoami") == {"user": user, "host": computer}
        path = f"/dags/{dag_id}/dagRuns/{runs[team]}/taskInstances/whoami/logs/1"
        task_log = str(stack.api("GET", path))  # found by the team's executor's log reader
        m = re.search(r"winexec: running on (WIN0\d) as WINEXEC\\+(\w+) \((\S+)\)", task_log)
        assert m and m.groups() == (computer, user, world.principal(user)), task_log[:3000]


def test_the_cli_shows_a_teams_own_hosts_and_principal(world: World) -> None:
    """``airflow winexec hosts|tickets --team T`` read ``[T=winexec]``, not the global section."""
    stack = world.stack
    everyone = json.loads(stack.cli("winexec", "hosts", "-o", "json", check=False).stdout)
    assert len(everyone) == 3
    for team, (index, user, _) in TEAMS.items():
        res = stack.cli("winexec", "hosts", "--team", team, "-o", "json", check=False)
        assert [r["host"] for r in json.loads(res.stdout)] == [world.cluster.hosts[index].name], res.stderr
        res = stack.cli("winexec", "tickets", "--team", team, "-o", "json")
        assert [(r["principal"], r["ok"]) for r in json.loads(res.stdout)] == [(world.principal(user), True)]

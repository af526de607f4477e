"""End to end: a real Airflow (api-server, scheduler, dag-processor, triggerer on SQLite) with
``executor = winexec.WindowsKerberosExecutor`` running a whole DAG on three stand-in Windows hosts.

The executor lives inside the scheduler process, so everything it needs comes the way it would
in production: the ``[winexec]`` section in airflow.cfg and the realm's ``KRB5_CONFIG`` in the
scheduler's environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_launcher import DAG_ID, DAGS
from winexec import protocol
from winexec.testing.airflow_stack import AirflowStack, StackError
from winexec.testing.world import World, peak_concurrency, windows_world

SLOTS = 3


#: The PSRP endpoint of each host's entry: win01 and win02 on the default, Microsoft.PowerShell
#: (Windows PowerShell 5.1), win03 on PowerShell 7's PowerShell.7 (sim README, fidelity table).
ENDPOINTS = ("", "", "PowerShell.7")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e")
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "winexec_e2e_dag.py", dags)
    shutil.copy(DAGS / "winexec_adopt_dag.py", dags)
    shutil.copy(DAGS / "winexec_scheduled_dag.py", dags)
    shutil.copy(DAGS / "winexec_deadline_dag.py", dags)
    with windows_world(
        tmp,
        dags,
        hosts=3,
        slots=SLOTS,
        principals=("airflow", "alice"),
        triggerer=True,  # deferrable_sensor
        endpoints=ENDPOINTS,
        host_env={"WINEXEC_E2E_SECOND_HOP": "HTTP@win02.winexec.test"},
        winexec={
            "heartbeat_interval": "1",
            "missed_heartbeats": "10",
            "keepalive_timeout": "60",
            "execution_timeout_grace": "5",
            "operation_timeout": "5",
            "read_timeout": "15",
            "connect_timeout": "5",
            "io_workers": "8",
            "launch_backoff": "0.5",
            "host_refresh_interval": "5",  # a drain or resume is honoured within seconds
            "queue_principals": "alice_q=alice@WINEXEC.TEST",  # connection tests of queue alice_q
            # the pool's principal everywhere; alice, with her TGT forwarded, only for the DAG
            # whose double_hop needs it; nobody for nothing
            "grants": f"airflow@WINEXEC.TEST: dag_id=*\nalice@WINEXEC.TEST: dag_id={DAG_ID} delegate",
        },
        # more than the pool's 9 slots: the executor, not Airflow, must hold tasks back
        config={
            "core": {"parallelism": "16", "test_connection": "Enabled"},
            "scheduler": {"task_queued_timeout": "300"},
        },
    ) as w:
        w.stack.set_variable("winexec_e2e_var", "hello")
        yield w


@pytest.fixture(scope="module")
def stack(world: World) -> AirflowStack:
    return world.stack


def _log_text(
    stack: AirflowStack, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int
) -> str:
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
    return str(stack.api("GET", path, params={"map_index": map_index}))


@pytest.mark.timeout(600)
def test_a_whole_dag_runs_on_the_windows_hosts(world: World, stack: AirflowStack) -> None:
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
    # no fork on the host path: the hosts are windows-like, and the task saw no os.fork
    assert stack.xcom(DAG_ID, run_id, "hello")["fork"] is False
    # each task ran on a stand-in host as the principal it maps to, as its own log says
    hosts = set()
    for (task_id, map_index), ti in tis.items():
        if task_id == "unknown_principal":
            continue
        log = _log_text(stack, DAG_ID, run_id, task_id, ti["try_number"], map_index)
        who = "alice@WINEXEC.TEST" if task_id == "double_hop" else "airflow@WINEXEC.TEST"
        m = re.search(r"winexec: running on (WIN0[123]) as WINEXEC\\+(\w+) \((\S+)\)", log)
        assert m and m.group(3) == who, (task_id, log[:3000])
        hosts.add(m.group(1))
    assert len(hosts) >= 2, hosts  # spread over the pool
    # Sensors hand the same try back to the executor: each poke of a reschedule-mode sensor, and
    # a deferred task resuming after its trigger fired. Every one ran on a host, as that try.
    assert stack.xcom(DAG_ID, run_id, "reschedule_sensor") == {"pokes": 3, "try_number": 1}
    for task_id, runs in (("reschedule_sensor", 3), ("deferrable_sensor", 2)):
        assert tis[(task_id, -1)]["try_number"] == 1, tis[(task_id, -1)]
        log = _log_text(stack, DAG_ID, run_id, task_id, 1, -1)
        assert len(re.findall(r"winexec: running on WIN0[123] as ", log)) == runs, (task_id, log[-5000:])
    # every agent ran on the endpoint its host's entry names, and both endpoints ran tasks
    for h, endpoint in zip(world.cluster.hosts, ENDPOINTS, strict=True):
        profile = "powershell-7" if endpoint == "PowerShell.7" else "windows-powershell-5.1"
        agents = [e for e in h.pipeline_log if "winexec.agent" in " ".join(e["argv"])]
        assert agents and {e["endpoint"] for e in agents} == {profile}, (h.name, agents[:3])
    # the pool's slots were respected throughout, as counted by the hosts themselves
    for h in world.cluster.hosts:
        assert 0 < peak_concurrency(h.pipeline_log) <= SLOTS, (h.name, h.pipeline_log)
    # a task the rules refuse: the reason, naming principal, DAG and the rule it lacks, in its log
    log = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/unknown_principal/logs/1")
    text = str(log)
    refusal = f"nobody@WINEXEC.TEST (from executor_config) is not granted to DAG {DAG_ID} (bundle dags-folder"
    assert refusal in text and f"'nobody@WINEXEC.TEST: dag_id={DAG_ID}'" in text, text[-2000:]
    # the audit trail has a success, a failure and the refusal, in Airflow's audit log and the file
    audit_file, deadline = stack.log_folder / "winexec" / "audit.jsonl", time.monotonic() + 30
    while True:  # the scheduler reports the outcome, then writes the trail within a heartbeat or two
        trail = [json.loads(line) for line in audit_file.read_text().splitlines()]
        mine = {(e["task_id"], e["event"]): e for e in trail if e["run_id"] == run_id}
        if ("too_slow", "ended") in mine or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert mine[("hello", "launched")]["host"] and mine[("hello", "launched")]["shell"]
    assert mine[("hello", "started")]["host_user"]
    assert {k: mine[(k, "ended")]["outcome"] for k in ("hello", "too_slow")} == {
        "hello": "success",
        "too_slow": "failed",
    }
    assert mine[("too_slow", "ended")]["reason"]
    assert refusal in mine[("unknown_principal", "refused")]["reason"]
    hop = mine[("double_hop", "launched")]
    assert (hop["principal"], hop["source"], hop["delegated"]) == (
        "alice@WINEXEC.TEST",
        "executor_config",
        True,
    )
    assert hop["grant"] == f"grants rule 2 (alice@WINEXEC.TEST: dag_id={DAG_ID} delegate)"
    # no rule forwards the pool principal's TGT, and none arrived on the host; alice's did
    assert mine[("hello", "launched")]["delegated"] is False
    assert mine[("hello", "started")]["delegated"] is False
    assert mine[("double_hop", "started")]["delegated"] is True
    seen = {}
    for task_id in ("hello", "too_slow", "unknown_principal"):
        params = {"dag_id": DAG_ID, "run_id": run_id, "task_id": task_id, "event_prefix_pattern": "winexec."}
        for e in stack.api("GET", "/eventLogs", params=params)["event_logs"]:
            assert e["owner"] == "winexec", e
            seen[(task_id, e["event"])] = json.loads(e["extra"])
    assert seen[("hello", "winexec.ended")]["outcome"] == "success"
    assert seen[("hello", "winexec.launched")]["principal"] == "airflow@WINEXEC.TEST"
    assert seen[("too_slow", "winexec.ended")]["outcome"] == "failed"
    assert refusal in seen[("unknown_principal", "winexec.refused")]["reason"]
    assert "eyJ" not in json.dumps([trail, list(seen.values())])  # never a secret: no Airflow JWT


def test_a_scheduled_runs_task_succeeds_and_its_log_keeps_airflows_path(stack: AirflowStack) -> None:
    """The scheduler's own run of a ``@daily`` DAG: its run id holds ``:``, which NTFS refuses (the
    hosts are windows-like). The host writes the log under an NTFS-safe name; Airflow reads it
    under its own path, through the API and in the log folder."""
    dag_id, deadline = "winexec_scheduled", time.monotonic() + 120
    while True:  # once the dag-processor has it; then the scheduler makes its latest run
        try:
            stack.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
            break
        except StackError:
            assert time.monotonic() < deadline, "the DAG never appeared"
            time.sleep(1)
    while not (runs := stack.api("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]):
        assert time.monotonic() < deadline, "the scheduler made no run of the @daily DAG"
        time.sleep(1)
    run_id = runs[0]["dag_run_id"]
    assert runs[0]["run_type"] == "scheduled" and ":" in run_id, runs[0]
    state = stack.wait_for_run(dag_id, run_id, timeout=240)
    deadline = time.monotonic() + 60
    while True:  # the log is copied from the host once its shell is closed, after the outcome
        log = _log_text(stack, dag_id, run_id, "on_schedule", 1, -1)
        if f"scheduled task of {run_id}" in log or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state == "success", (log[-3000:], stack.log_tail("scheduler", 5000))
    assert stack.xcom(dag_id, run_id, "on_schedule") == run_id
    assert f"scheduled task of {run_id}" in log and "winexec: running on WIN0" in log, log[-3000:]
    relative = f"dag_id={dag_id}/run_id={run_id}/task_id=on_schedule/attempt=1.log"
    assert f"scheduled task of {run_id}" in (stack.log_folder / relative).read_text()
    assert (stack.log_folder / protocol.host_path(relative)).is_file()  # what the host wrote


def test_running_tasks_survive_a_scheduler_restart(world: World, stack: AirflowStack) -> None:
    """The old scheduler detaches (end()), the new one reattaches to the agent by run id."""
    dag_id = "winexec_adopt"
    run_id = stack.trigger(dag_id, conf={"sleep": 25})
    stack.wait_for_ti(dag_id, run_id, "long_sleep", {"running"}, timeout=180)
    # while it runs: no token (every Airflow JWT starts "eyJ") in any host process's argv or env
    procs = [p for h in world.cluster.hosts for p in h.processes()]
    assert any("winexec.agent" in " ".join(p["argv"]) for p in procs), procs
    for p in procs:
        assert "eyJ" not in " ".join(p["argv"]) and "eyJ" not in str(p["env"]), p["argv"]
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


def _agent_runs(host: Any, since: float) -> int:
    """Task launches on ``host`` since then (not the CLI's ``--runs`` or a ``--stop``)."""
    return sum(1 for e in host.pipeline_log if e["time"] >= since and e["argv"][-1] == "winexec.agent")


def _wait_in_log(stack: AirflowStack, text: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while stack.log_tail("scheduler", 10_000_000).count(text) < count:
        assert time.monotonic() < deadline, (text, stack.log_tail("scheduler", 5000))
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_a_drained_host_gets_no_new_task_after_a_restart_until_resumed(
    world: World, stack: AirflowStack
) -> None:
    """``airflow winexec hosts drain`` lives in Airflow's database: the running scheduler honours it
    at its next host refresh, a restarted one from its start, and ``resume`` undoes it."""
    dag_id, win01 = "winexec_adopt", world.cluster.hosts[0]
    out = stack.cli("winexec", "hosts", "drain", win01.name, "--comment", "patch Tuesday").stdout
    assert out.startswith(f"{win01.name} drained by ") and ": patch Tuesday." in out, out
    rows = {
        r["host"]: r
        for r in json.loads(stack.cli("winexec", "hosts", "--output", "json", check=False).stdout)
    }
    assert rows[win01.name]["drained"].endswith(": patch Tuesday") and rows[win01.name]["health"] == "ok"
    assert [rows[h.name]["drained"] for h in world.cluster.hosts[1:]] == ["", ""]
    gone = f"winexec: {win01.name} gets no new tasks, drained by "
    _wait_in_log(stack, gone, 1)  # the running scheduler, at its next refresh

    old = stack.procs["scheduler"]
    os.killpg(old.pid, signal.SIGTERM)
    old.wait(90)
    stack._spawn("scheduler", "scheduler")
    _wait_in_log(stack, gone, 2)  # the new one, from its start
    since = time.time()
    runs = [stack.trigger(dag_id, conf={"sleep": 3}) for _ in range(4)]
    assert [stack.wait_for_run(dag_id, r, timeout=240) for r in runs] == ["success"] * 4
    assert _agent_runs(win01, since) == 0
    assert sum(_agent_runs(h, since) for h in world.cluster.hosts[1:]) == 4

    assert stack.cli("winexec", "hosts", "resume", win01.name).stdout.startswith(f"{win01.name} resumed")
    _wait_in_log(stack, f"winexec: {win01.name} resumed: back in placement", 1)
    since = time.time()
    run = stack.trigger(dag_id, conf={"sleep": 1})
    assert stack.wait_for_run(dag_id, run, timeout=240) == "success"
    assert _agent_runs(win01, since) == 1  # idle longest of the idle hosts: placed first
    assert "was not drained" in stack.cli("winexec", "hosts", "resume", win01.name).stdout


def _test_connection(stack: AirflowStack, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Enqueue a connection test through Airflow's REST API and poll it to its result."""
    token = stack.api("POST", "/connections/enqueue-test", json=body)["token"]
    deadline = time.monotonic() + timeout
    while True:
        result = stack.api(
            "GET", "/connections/enqueue-test", headers={"Airflow-Connection-Test-Token": token}
        )
        if result["state"] in ("success", "failed"):
            return dict(result)
        assert time.monotonic() < deadline, (result, stack.log_tail("scheduler", 5000))
        time.sleep(0.5)


@pytest.mark.timeout(300)
def test_a_connection_test_runs_on_a_host_as_its_queues_principal(world: World, stack: AirflowStack) -> None:
    """Airflow's connection test, asked through its REST API, runs on a Windows host as the
    principal of its queue: a folder only alice's account may enter is there for alice's test
    (queue alice_q) and refused to the pool's principal's (default queue). The connection's
    password reaches neither a command line nor the scheduler's log."""
    from winexec.sim.accounts import account_for, private_dir

    folder = private_dir(world.python.parent / "alice-only", account_for("alice"))
    (folder / "report.xlsx").write_text("quarterly")
    password = "pw-" + uuid.uuid4().hex
    body = {
        "conn_type": "fs",
        "extra": json.dumps({"path": str(folder / "report.xlsx")}),
        "login": "CORP\\alice",
        "password": password,
    }
    since = time.time()
    alices = _test_connection(stack, {**body, "connection_id": "alice_share", "queue": "alice_q"})
    assert alices["state"] == "success", alices
    assert alices["result_message"] == f"Path {folder / 'report.xlsx'} is existing."
    pools = _test_connection(stack, {**body, "connection_id": "pool_share"})
    assert pools["state"] == "failed" and "Permission denied" in pools["result_message"], pools

    log = stack.log_tail("scheduler", 10_000_000)
    assert "connection-test alice_share on win0" in log and "as alice@WINEXEC.TEST (queue)" in log
    assert "connection-test pool_share on win0" in log and "as airflow@WINEXEC.TEST (default)" in log
    runs = [e for h in world.cluster.hosts for e in h.pipeline_log if e["time"] >= since]
    tests = [e for e in runs if e["argv"][-1] == "--test-connection"]
    assert sorted(e["user"] for e in tests) == ["airflow@WINEXEC.TEST", "alice@WINEXEC.TEST"], tests
    assert password not in log and not any(password in " ".join(e["argv"]) for e in runs)


@pytest.mark.timeout(400)
def test_a_missed_deadline_runs_its_callback_once_on_a_host_and_the_run_ends_normally(
    world: World, stack: AirflowStack
) -> None:
    """A DeadlineAlert's SyncCallback goes to the default executor, winexec, which runs it on a
    host as the DAG's tasks would run (grants: the pool's principal); the scheduler goes on."""
    dag_id, since = "winexec_deadline", time.time()
    run_id = stack.trigger(dag_id)
    assert stack.wait_for_run(dag_id, run_id, timeout=300) == "success"
    ledger = stack.log_folder / "deadline-ledger.jsonl"
    deadline = time.monotonic() + 60
    while not ledger.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    lines = [json.loads(x) for x in ledger.read_text().splitlines()] if ledger.exists() else []
    assert len(lines) == 1, (lines, stack.log_tail("scheduler", 5000))
    assert lines[0]["computer"].startswith("WIN0") and lines[0]["user"] == "airflow", lines
    assert lines[0]["run_id"] in (run_id, None)
    calls = [e for h in world.cluster.hosts for e in h.pipeline_log if e["time"] >= since]
    ran = [e for e in calls if e["argv"][-1] == "--callback"]
    assert [e["user"] for e in ran] == ["airflow@WINEXEC.TEST"] and ran[0]["exit_code"] == 0, ran
    log = stack.log_tail("scheduler", 10_000_000)
    assert "winexec: record_missed_deadline on win0" in log and "completed successfully" in log
    assert stack.procs["scheduler"].poll() is None  # the scheduler never crashed on the callback

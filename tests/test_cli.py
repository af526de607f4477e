"""``airflow winexec hosts|check|tickets`` against stand-in hosts, a real KDC and the real agent.

The command functions run in-process with ``[winexec]`` from ``AIRFLOW__WINEXEC__*`` variables, as
``airflow`` would read them; one test runs the real ``airflow winexec`` to prove the group is
registered through the executor/provider.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests import cli_fixtures
from tests.cli_fixtures import Env, _lines, _run
from winexec import cli

env = cli_fixtures.env  # one realm and two stand-in hosts for the module


# -- hosts ---------------------------------------------------------------------------------
def test_hosts_shows_health_slots_and_running_tasks(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    win01 = env.cluster.hosts[0]
    runs = win01.program_data / "winexec" / "runs"
    # a run another principal's agent on WIN01 is running (its agent process: this one, alive):
    # its slot entry is all the CLI's principal may read of it
    me = psutil.Process()
    entry = {
        "run_id": "r1",
        "agent_pid": me.pid,
        "agent_create_time": me.create_time(),
        "computer": win01.short_name.upper(),
        "principal": "WINEXEC\\bob",
        "started": time.time(),
    }
    path = runs / "r1.slot"
    path.write_text(json.dumps(entry))
    (runs / "r0.slot").write_text(json.dumps({**entry, "run_id": "r0", "agent_pid": 2**22 + 1}))  # gone
    try:
        code, out = _run(cli.hosts_command, capsys)
    finally:
        path.unlink()
        (runs / "r0.slot").unlink()
    rows = {r["host"]: r for r in json.loads(out)}
    assert code == 0, out
    one, two = rows[win01.name], rows[env.cluster.hosts[1].name]
    assert one["health"] == "ok" and one["slots"] == 3 and one["used"] == 1 and one["free"] == 2, one
    assert one["running"] == ["r1 (WINEXEC\\bob)"]
    assert two["health"] == "ok" and two["used"] == 0 and two["free"] == 3 and two["last_error"] == ""


def test_hosts_reports_a_host_that_is_down(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    down = env.cluster.hosts[1]
    down.faults.refuse(True)
    try:
        code, out = _run(cli.hosts_command, capsys)
    finally:
        down.faults.refuse(False)
    rows = {r["host"]: r for r in json.loads(out)}
    assert code == 1
    assert rows[down.name]["health"] == "down", rows
    assert "cannot reach WinRM on " + down.name in rows[down.name]["last_error"]
    assert rows[env.cluster.hosts[0].name]["health"] == "ok"
    # the table for people says the same
    code, out = _run(cli.hosts_command, capsys, output="plain")
    assert code == 0 and env.cluster.hosts[0].name in out and "ok" in out


# -- check ---------------------------------------------------------------------------------
def test_check_passes_every_step(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    host = env.cluster.hosts[0].name
    code, out = _run(
        cli.check_command, capsys, output="table", host=host, principal=env.realm.principal("alice")
    )
    lines = _lines(out)
    assert code == 0, out
    assert all(ln.startswith("[PASS]") for ln in lines), out
    steps = [ln.split("]")[1].split("(")[0].split(":")[0].strip() for ln in lines]
    assert steps == [
        "settings",
        "keytab",
        "TGT",
        f"service ticket HTTP/{host}",
        "open shell",
        "agent",
        "delegation",
        "resources",
    ], steps
    assert "forwarded TGT of alice@" in out and "Task SDK 1." in out and "free memory" in out
    # the default principal: no rule forwards its TGT, and check says what that leaves
    code, out = _run(cli.check_command, capsys, output="json", host=host)
    delegation = next(s for s in json.loads(out) if s["step"] == "delegation")
    assert code == 0 and delegation["ok"], out
    assert "no TGT forwarded" in delegation["detail"] and "constrained delegation" in delegation["detail"]


def test_check_principal_without_keytab(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(cli.check_command, capsys, output="json", principal="nobody@" + env.realm.name)
    steps = json.loads(out)
    assert code == 1
    assert steps[-1]["step"] == "keytab" and not steps[-1]["ok"]
    assert "nobody.keytab does not exist" in steps[-1]["detail"] and steps[-1]["fix"]


def test_check_missing_spn_and_down_host(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ghost = "ghost." + env.cluster.hosts[0].name.split(".", 1)[1]
    hosts = f"{env.host_entry(0)}, {env.host_entry(1)}, {env.host_entry(0, ghost)}"
    monkeypatch.setenv("AIRFLOW__WINEXEC__HOSTS", hosts)
    env.cluster.hosts[1].faults.refuse(True)
    try:
        code, out = _run(cli.check_command, capsys, output="json")
    finally:
        env.cluster.hosts[1].faults.refuse(False)
    steps = json.loads(out)
    by = {(s["step"], s["host"]): s for s in steps}
    assert code == 1
    spn = by[(f"service ticket HTTP/{ghost}", ghost)]
    assert not spn["ok"] and "setspn -S HTTP/" + ghost in spn["fix"], spn
    shell = by[("open shell", env.cluster.hosts[1].name)]
    assert not shell["ok"] and "cannot reach WinRM" in shell["detail"] and "firewall" in shell["fix"]
    assert by[("agent", env.cluster.hosts[0].name)]["ok"]


def test_check_python_missing_and_bad_settings(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__WINEXEC__PYTHON", "no-such-python.exe")
    code, out = _run(cli.check_command, capsys, output="table", host=env.cluster.hosts[0].name)
    assert code == 1
    fail = [ln for ln in _lines(out) if ln.startswith("[FAIL]")]
    assert len(fail) == 1 and fail[0].startswith("[FAIL] agent self-check"), out
    assert "'no-such-python.exe' is not found on" in out and "fix: install Python with winexec" in out

    monkeypatch.setenv("AIRFLOW__WINEXEC__READ_TIMEOUT", "soon")
    code, out = _run(cli.check_command, capsys, output="table")
    assert code == 1 and "[FAIL] settings: [winexec] read_timeout: 'soon' is not a whole number" in out


# -- tickets -------------------------------------------------------------------------------
def test_tickets_lists_each_principal(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = _run(cli.tickets_command, capsys)
    rows = {r["principal"]: r for r in json.loads(out)}
    assert code == 0, out
    assert set(rows) == {env.realm.principal("airflow"), env.realm.principal("alice")}
    for r in rows.values():
        assert r["ok"] and r["ccache"].startswith("FILE:") and r["expires"] < r["renew_till"], r
    monkeypatch.setenv("AIRFLOW__WINEXEC__QUEUE_PRINCIPALS", f"etl=nobody@{env.realm.name}")
    code, out = _run(cli.tickets_command, capsys)
    rows = {r["principal"]: r for r in json.loads(out)}
    assert code == 1 and not rows[f"nobody@{env.realm.name}"]["ok"]
    assert "nobody.keytab does not exist" in rows[f"nobody@{env.realm.name}"]["error"]


def test_airflow_winexec_is_registered(env: Env, tmp_path: Path) -> None:
    """The real ``airflow`` CLI, configured only through its environment, runs the group."""
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    run_env.update(env.env)
    run_env.update(
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__CORE__EXECUTOR="winexec.WindowsKerberosExecutor",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'airflow.db'}",
        **env.realm.env(),
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    res = subprocess.run(
        [airflow, "winexec", "tickets", "--output", "json"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout[res.stdout.index("[") :])
    assert {r["principal"] for r in rows} == {env.realm.principal("airflow"), env.realm.principal("alice")}
    help_ = subprocess.run(
        [airflow, "winexec", "--help"], env=run_env, capture_output=True, text=True, timeout=180
    )
    assert all(c in help_.stdout for c in ("hosts", "check", "tickets")), help_.stdout

"""``airflow winexec check --canary`` against stand-in hosts: passing, and each failure with its fix.

The canary runs the real agent in a WinRM shell of every configured principal on every host; the
failures are made the way a host really gets them (a run folder nobody prepared, a hosts entry
claiming more shells than the host allows, an interpreter whose Airflow does not import, a
principal that may not read WinRM's configuration). What the stand-in cannot show (a Job Object
that leaks, an NTFS refusal, a PowerShell older than 5.1) is tried at the canary's own boundary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import cli_fixtures
from tests.cli_fixtures import Env, _lines, _run
from winexec import cli
from winexec.agent import canary
from winexec.agent.containment import Containment
from winexec.sim.accounts import share

env = cli_fixtures.env  # one realm and two stand-in hosts for the module

#: what the canary adds, per host and principal, to the steps of a plain check
CANARY_STEPS = ["endpoint", "agent", "delegation", "resources", "Task SDK import", "process tree",
                "run folder", "NTFS-safe paths"]  # fmt: skip


def _canary(capsys: pytest.CaptureFixture[str], **kw: Any) -> tuple[int, list[dict[str, Any]]]:
    code, out = _run(cli.check_command, capsys, canary=True, **kw)
    return code, json.loads(out)


@pytest.fixture
def admin(env: Env) -> Any:
    """The default principal is in each host's Administrators (it may read the WinRM quotas)."""
    for h in env.cluster.hosts:
        h.administrators.add("airflow")
    yield
    for h in env.cluster.hosts:
        h.administrators.clear()


def test_canary_passes_on_every_host_as_every_principal(
    env: Env, admin: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, steps = _canary(capsys)
    assert code == 0, [s for s in steps if not s["ok"]]
    principals = {env.realm.principal("airflow"), env.realm.principal("alice")}
    for host in env.cluster.hosts:
        for p in principals:
            mine = [s["step"] for s in steps if s["host"] == host.name and s["principal"] == p]
            assert mine[2:] == CANARY_STEPS, mine  # after the service ticket and the shell
        by = {s["step"]: s for s in steps if s["host"] == host.name}
        assert (
            "Microsoft.PowerShell: PowerShell 5.1.17763.1 (Desktop), remoting protocol 2.3"
            in (by["endpoint"]["detail"])
        )
        assert "s (interpreter start included" in by["Task SDK import"]["detail"]
        assert "a child and its child in one session, killed whole" in by["process tree"]["detail"]
        assert "mode 0o700" in by["run folder"]["detail"]
        quotas = by["WinRM quotas"]
        assert quotas["principal"] == "" and "MaxShellsPerUser=25" in quotas["detail"], quotas
        assert "MaxConcurrentUsers=5" in quotas["detail"] and "1024 MB" in quotas["detail"]
    # the table an operator reads
    code, out = _run(cli.check_command, capsys, canary=True, output="table")
    assert code == 0 and all(ln.startswith("[PASS]") for ln in _lines(out)), out
    print(out)  # the closing note quotes it


def test_canary_names_each_failure_and_its_fix(
    env: Env, admin: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = env.cluster.hosts
    # WIN01: nobody prepared the run folder; WIN02's entry claims more shells than WinRM allows
    runs = one.program_data / "winexec" / "runs"
    aside = runs.with_name("runs.aside")
    runs.rename(aside)
    monkeypatch.setenv(
        "AIRFLOW__WINEXEC__HOSTS", f"{env.host_entry(0)}, {env.host_entry(1)}&max_shells_per_user=40"
    )
    try:
        code, steps = _canary(capsys)
    finally:
        aside.rename(runs)
    failed = {(s["step"], s["host"]) for s in steps if not s["ok"]}
    assert code == 1
    assert failed == {("run folder", one.name), ("WinRM quotas", two.name)}, failed
    folder = next(s for s in steps if s["step"] == "run folder" and s["host"] == one.name)
    assert "python -m winexec.agent --prepare-spool" in folder["fix"], folder
    quota = next(s for s in steps if s["step"] == "WinRM quotas" and s["host"] == two.name)
    assert "max_shells_per_user=40 but the host allows MaxShellsPerUser=25" in quota["detail"], quota
    assert "lower them in its [winexec] hosts entry" in quota["fix"]
    assert "WSMan:\\localhost\\Plugin\\Microsoft.PowerShell\\Quotas\\<quota> N" in quota["fix"]


def test_canary_says_an_airflow_that_does_not_import(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An interpreter whose Airflow is broken (a stale package shadowing the real one)."""
    stale = tmp_path / "stale" / "airflow"
    stale.mkdir(parents=True)
    (stale / "__init__.py").write_text("raise ImportError('DLL load failed while importing _ssl')\n")
    python = tmp_path / "python"
    python.write_text(
        f'#!/bin/sh\nexport PYTHONPATH="$PYTHONPATH:{stale.parent}"\n'
        f"exec '{env.env['AIRFLOW__WINEXEC__PYTHON']}' \"$@\"\n"
    )
    python.chmod(0o755)
    share(tmp_path)  # the principals' accounts read it, as a host's Program Files
    monkeypatch.setenv("AIRFLOW__WINEXEC__PYTHON", str(python))
    code, steps = _canary(capsys, host=env.cluster.hosts[0].name, principal=env.realm.principal("alice"))
    failed = [s for s in steps if not s["ok"]]
    assert code == 1
    assert [s["step"] for s in failed] == ["Task SDK import"], failed
    assert "DLL load failed while importing _ssl" in failed[0]["detail"]
    assert "pip install winexec" in failed[0]["fix"]


def test_canary_without_administrators_keeps_the_strictest_quotas_and_says_how_to_do_better(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, steps = _canary(capsys)
    quotas = [s for s in steps if s["step"] == "WinRM quotas"]
    assert code == 0 and len(quotas) == 2, steps
    for q in quotas:
        assert q["ok"] and "not readable by airflow@" in q["detail"] and "alice@" in q["detail"], q
        assert "placement allows 25 shells per user and 5 users at once" in q["detail"]
        assert "run this check with an administrator principal" in q["detail"]


# -- what the stand-in cannot show: the canary's own boundary --------------------------------
def test_a_process_tree_left_alive_fails_the_canary(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []

    class Leaky(Containment):
        def kill(self) -> None:  # as a Job Object the child escaped would: nothing dies
            killed.append(1)

    monkeypatch.setattr(canary, "Containment", Leaky)
    check = canary.containment()
    try:
        assert not check["ok"] and "still alive" in check["detail"], check
        assert "outlive" in check["fix"] and killed
    finally:
        for p in psutil.Process().children(recursive=True):  # what the "leaky job" left
            p.kill()


def test_a_path_the_host_refuses_fails_the_canary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder must go")
    monkeypatch.setattr(canary.tempfile, "gettempdir", lambda: str(blocked))
    check = canary.ntfs_names()
    assert not check["ok"] and "cannot write" in check["detail"] and check["fix"], check
    assert "scheduled__2026-01-01T00%3A00%3A00" in check["detail"]  # the name as the host gets it


def test_an_endpoint_older_than_windows_powershell_51_fails() -> None:
    from winexec.config import HostSpec

    host = HostSpec(name="old.example.com")
    step = cli._endpoint_step({"PSVersion": "4.0", "PSRemotingProtocolVersion": "2.2"}, host, "p@R")
    assert not step.ok and "PowerShell 4.0" in step.detail and "Management Framework 5.1" in step.fix
    step = cli._endpoint_step({"PSVersion": "7.4.6", "PSEdition": "Core"}, host, "p@R")
    assert step.ok and "PowerShell 7.4.6 (Core)" in step.detail


def test_the_path_check_leaves_nothing_behind() -> None:
    assert canary.ntfs_names()["ok"]
    assert not (Path(canary.tempfile.gettempdir()) / "winexec-canary").exists()

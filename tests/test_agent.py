"""``python -m winexec.agent`` against a real Airflow Execution API, in windows-like mode.

One Airflow stack (api-server only) per module. Each test triggers its own dag run, queues one
task instance the way the scheduler does, and runs the agent as the stand-in will: the Start
line on stdin, protocol lines on stdout, ``os.fork``/``os.killpg``/``signal.SIGKILL``/``fcntl``...
unavailable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.agent_helpers import AgentProc, WarmProc, windowslike_env
from winexec.protocol import Exit, Start, Started, Stop, parse_line
from winexec.testing.airflow_stack import AirflowStack

DAG_ID = "winexec_agent"
DAGS = Path(__file__).resolve().parent / "agent_dags"


@pytest.fixture(scope="module")
def stack() -> Iterator[AirflowStack]:
    s = AirflowStack()  # its own temp home, dags folder inside
    shutil.copy(DAGS / "winexec_agent_dag.py", s.dags_folder)
    with s:
        s.set_variable("winexec_agent_var", "hello")
        pids = s.process_ids()
        assert pids
        yield s
    assert _gone(pids), "the Airflow stack left processes behind"
    assert not s.home.exists()


@pytest.fixture
def work() -> Iterator[Path]:
    """A private temp dir: pytest's own ``tmp_path`` is pruned by concurrent pytest sessions."""
    d = Path(tempfile.mkdtemp(prefix="winexec-agent-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def spool(work: Path) -> Path:
    d = work / "spool"
    d.mkdir()
    return d


class Runner:
    """Triggers runs, queues task instances and launches agents for one test."""

    def __init__(self, stack: AirflowStack, spool: Path, tmp: Path) -> None:
        self.stack, self.spool, self.tmp = stack, spool, tmp
        self.agents: list[AgentProc] = []
        self.cleanups: list[Any] = []

    def env(self) -> dict[str, str]:
        return windowslike_env(self.stack.agent_env(self.tmp / "host-home"), self.spool)

    def workload(self, task_id: str, run_id: str | None = None, conf: dict[str, Any] | None = None) -> Any:
        run_id = run_id or self.stack.trigger(DAG_ID, conf=conf)
        return run_id, self.stack.queue_workload(DAG_ID, run_id, task_id)

    def launch(self, workload: dict[str, Any], env: dict[str, str] | None = None, **start: Any) -> AgentProc:
        start.setdefault("heartbeat_interval", 0.5)
        msg = Start(
            workload=workload,
            run_id=f"launch-{uuid.uuid4().hex[:8]}",
            server=self.stack.execution_api_url,
            **start,
        )
        task_log = self.stack.log_folder / workload["log_path"]
        agent_env = {**self.env(), **(env or {})}
        agent = AgentProc(msg, agent_env, self.tmp / f"stderr-{len(self.agents)}.log", task_log)
        self.agents.append(agent)
        return agent

    def ti_state(self, run_id: str, task_id: str) -> str:
        return str(self.stack.task_instance(DAG_ID, run_id, task_id)["state"])

    def cleanup(self) -> None:
        for a in self.agents:
            a.kill()
        for c in self.cleanups:
            c()


@pytest.fixture
def runner(stack: AirflowStack, spool: Path, work: Path) -> Iterator[Runner]:
    r = Runner(stack, spool, work)
    yield r
    r.cleanup()


def _assert_protocol_only(agent: AgentProc) -> None:
    assert agent.raw, "no output"
    for line in agent.raw:
        line.decode("ascii")  # ASCII only
        parse_line(line)  # and nothing but protocol lines
    assert agent.events[-1].type == "exit"


def _gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _read_pidfile(path: Path, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.2)
    raise AssertionError("task never wrote its pid file")


def test_success_xcom_and_variable_through_the_execution_api(runner: Runner) -> None:
    run_id, wl = runner.workload("push")
    agent = runner.launch(wl)
    started = agent.wait_for("started")
    assert isinstance(started, Started) and started.pid > 0 and started.user and started.host
    assert started.delegated is False
    ex = agent.finish()
    assert (ex.state, ex.code, ex.ti_state) == ("success", 0, "success"), agent.describe()
    assert agent.of_type("heartbeat")
    _assert_protocol_only(agent)
    assert runner.ti_state(run_id, "push") == "success"
    assert runner.stack.xcom(DAG_ID, run_id, "push") == {"answer": 42}

    _, wl2 = runner.workload("pull", run_id=run_id)
    agent2 = runner.launch(wl2)
    ex2 = agent2.finish()
    assert ex2.state == "success", agent2.describe()
    assert runner.ti_state(run_id, "pull") == "success"
    assert runner.stack.xcom(DAG_ID, run_id, "pull") == "hello!"
    # The task's own log went to the log file, not to the agent's stdout.
    log_file = runner.stack.log_folder / wl["log_path"]
    assert "pushing the answer" in log_file.read_text()
    assert b"pushing the answer" not in b"".join(agent.raw)


@pytest.mark.parametrize(
    ("task_id", "host_config"),
    [
        ("as_alice_at_realm", {}),
        ("as_alice", {}),
        ("as_anyone", {"AIRFLOW__CORE__DEFAULT_IMPERSONATION": "alice"}),
    ],
)
def test_run_as_user_and_default_impersonation_never_reexec_through_sudo(
    runner: Runner, task_id: str, host_config: dict[str, str]
) -> None:
    """The task's identity is the WinRM logon's: a ``run_as_user`` (or ``default_impersonation``)
    that differs from it must not make the Task SDK re-exec through ``sudo`` (no such thing on
    Windows; on the stand-in it would fail the task, or run it as another user)."""
    run_id, wl = runner.workload(task_id)
    agent = runner.launch(wl, env=host_config)
    started = agent.wait_for("started")
    ex = agent.finish()
    assert (ex.state, ex.ti_state) == ("success", "success"), agent.describe()
    ran = runner.stack.xcom(DAG_ID, run_id, task_id)
    assert ran["user"] == agent.env["USERNAME"] != "alice", ran
    assert ran["pid"] == started.pid, ran  # the process the agent started, not one exec'd anew
    log = (runner.stack.log_folder / wl["log_path"]).read_text()
    assert "sudo" not in log, log


def test_failing_task_is_failed_in_airflow(runner: Runner) -> None:
    run_id, wl = runner.workload("fail")
    agent = runner.launch(wl)
    ex = agent.finish()
    assert ex.state == "failed", agent.describe()
    assert ex.ti_state == "failed"
    assert runner.ti_state(run_id, "fail") == "failed"
    _assert_protocol_only(agent)


def test_execution_timeout_kills_the_tree_and_fails_the_task(runner: Runner) -> None:
    pidfile = runner.tmp / "pids.json"
    run_id, wl = runner.workload("sleepy", conf={"pidfile": str(pidfile)})
    agent = runner.launch(wl, execution_timeout=15.0, grace=1.0)  # roomy: CI may be loaded
    facts = _read_pidfile(pidfile)
    assert facts["has_fork"] is False  # windows-like mode reached the task process
    t0 = time.monotonic()
    ex = agent.finish()
    assert ex.state == "timeout", agent.describe()
    assert ex.reason == "execution_timeout of 15 s exceeded"
    assert time.monotonic() - t0 < 40
    assert _gone([facts["pid"], facts["child"]]), "task tree survived the timeout"
    assert runner.ti_state(run_id, "sleepy") in {"failed", "up_for_retry"}
    _assert_protocol_only(agent)


def test_stop_kills_the_tree(runner: Runner) -> None:
    pidfile = runner.tmp / "pids.json"
    run_id, wl = runner.workload("sleepy", conf={"pidfile": str(pidfile)})
    agent = runner.launch(wl, grace=1.0)
    facts = _read_pidfile(pidfile)
    asked = agent.stop("revoked by test")
    assert asked["found"] and asked["run_id"] == agent.start_msg.run_id, asked
    ex = agent.finish()
    assert (ex.state, ex.reason) == ("stopped", "revoked by test"), agent.describe()
    assert _gone([facts["pid"], facts["child"]])
    assert runner.ti_state(run_id, "sleepy") in {"failed", "up_for_retry"}


def test_stdin_eof_alone_does_not_stop_the_task(runner: Runner) -> None:
    _run_id, wl = runner.workload("push")
    agent = runner.launch(wl)
    agent.close_stdin()  # WinRM may close pipeline input right after the Start line
    ex = agent.finish()
    assert ex.state == "success", agent.describe()


def test_second_start_of_the_same_try_is_refused(runner: Runner) -> None:
    _run_id, wl = runner.workload("push")
    first = runner.launch(wl, launch_key="workload-1")
    assert first.finish().state == "success"
    second = runner.launch(wl, launch_key="workload-1")  # the executor retrying the same launch
    ex = second.finish()
    assert ex.state == "duplicate", second.describe()
    assert first.start_msg.run_id in ex.reason
    assert not second.of_type("started")


def test_status_and_stop_by_run_id_and_no_token_on_any_command_line(runner: Runner) -> None:
    import subprocess
    import sys

    pidfile = runner.tmp / "pids.json"
    _, wl = runner.workload("sleepy", conf={"pidfile": str(pidfile)})
    agent = runner.launch(wl, grace=1.0)
    facts = _read_pidfile(pidfile)
    token = wl["token"]
    assert len(token) > 20
    tree = [psutil.Process(agent.proc.pid), *psutil.Process(agent.proc.pid).children(recursive=True)]
    assert len(tree) >= 3  # agent, runner, grandchild
    for p in tree:
        assert token not in " ".join(p.cmdline())
        assert not any(token in v for v in p.environ().values())

    env = runner.env()
    run = agent.start_msg.run_id
    out = subprocess.run(
        [sys.executable, "-m", "winexec.agent", "--status", run],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status = json.loads(out)
    assert status["found"] and status["agent_alive"] and status["task_alive"], status
    assert status["task_pid"] == facts["pid"]
    out = subprocess.run(
        [sys.executable, "-m", "winexec.agent", "--stop", run, "--wait", "30"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["stopped"] is True
    ex = agent.finish()
    assert ex.state == "stopped"
    assert _gone([facts["pid"], facts["child"]])
    # Nothing the agent logged carries the token either.
    assert token not in b"".join(agent.raw).decode()
    files = [f for f in runner.spool.rglob("*") if f.is_file()]
    assert any(f.suffix == ".json" for f in files), files  # the run's record, in its principal's folder
    for f in files:
        assert token not in f.read_text(errors="replace")


def test_supervisor_refusal_is_an_error_exit(runner: Runner) -> None:
    """A TI that is not queued (already ran) is refused by the API: Exit error, nothing left."""
    _run_id, wl = runner.workload("push")
    assert runner.launch(wl).finish().state == "success"
    wl_again = json.loads(json.dumps(wl))
    wl_again["ti"]["try_number"] = 99  # a different try: passes the duplicate check
    agent = runner.launch(wl_again)
    ex = agent.finish()
    assert ex.state == "error", agent.describe()
    assert isinstance(ex, Exit)


# -- the warm agent: one process, many runs of one principal ---------------------------------
def _warm(runner: Runner, runners: int = 2) -> WarmProc:
    w = WarmProc(runner.env(), runner.tmp / f"warm-stderr-{uuid.uuid4().hex[:6]}.log", runners=runners)
    runner.cleanups.append(w.kill)
    return w


def _start(runner: Runner, workload: dict[str, Any], **kw: Any) -> Start:
    kw.setdefault("heartbeat_interval", 0.5)
    return Start(
        workload=workload,
        run_id=f"launch-{uuid.uuid4().hex[:8]}",
        server=runner.stack.execution_api_url,
        **kw,
    )


def _ready_runners(agent_pid: int, count: int = 1, timeout: float = 60) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [
            p
            for p in psutil.Process(agent_pid).children(recursive=True)
            if "winexec.agent.runner" in " ".join(p.cmdline())
        ]
        if len(kids) >= count:
            return kids
        time.sleep(0.2)
    raise AssertionError(f"the warm agent did not pre-start {count} task runner(s)")


def test_warm_agent_runs_streamed_starts_in_prestarted_runners_one_task_each(runner: Runner) -> None:
    warm = _warm(runner)
    prestarted = {p.pid for p in _ready_runners(warm.proc.pid, count=2)}
    time.sleep(1.0)  # the runners are waiting: their Task SDK import is behind them
    run_id, wl = runner.workload("push")
    _, wl2 = runner.workload("push")
    first, second = _start(runner, wl), _start(runner, wl2)
    warm.send(first)
    warm.send(second)  # streamed while the first runs: the agent reads its input as it comes
    s1 = warm.wait_for(first.run_id, "started")
    s2 = warm.wait_for(second.run_id, "started")
    e1 = warm.wait_for(first.run_id, "exit")
    e2 = warm.wait_for(second.run_id, "exit")
    assert (e1.state, e1.ti_state) == ("success", "success"), warm.describe()
    assert (e2.state, e2.ti_state) == ("success", "success"), warm.describe()
    assert runner.ti_state(run_id, "push") == "success"
    assert s1.pid != s2.pid, "two tasks in one runner"
    assert s1.pid in prestarted, "the first task did not get a pre-started runner"
    assert warm.of_run(first.run_id, "heartbeat")
    # A resent start line of a run is never run twice: ignored while the agent knows the run,
    # refused by the run's marker after that.
    warm.send(first)
    time.sleep(2.0)
    assert len(warm.of_run(first.run_id, "started")) == 1, warm.describe()
    assert [e.state for e in warm.of_run(first.run_id, "exit")] in (["success"], ["success", "duplicate"])
    # Stdout held protocol lines only, ASCII, each naming its run.
    for line in warm.raw:
        line.decode("ascii")
        parse_line(line)
    assert not {p.pid for p in _ready_runners(warm.proc.pid)} & {s1.pid, s2.pid}, "a runner reused"
    token = str(wl["token"])
    agent = psutil.Process(warm.proc.pid)
    for p in [agent, *agent.children(recursive=True)]:
        assert token not in " ".join(p.cmdline())
    # End of input: no more tasks; the agent exits and takes its waiting runners with it.
    warm.close_stdin()
    assert warm.proc.wait(30) == 0
    assert _gone([*(prestarted - {s1.pid, s2.pid}), warm.proc.pid])


def test_warm_agent_stops_one_run_and_keeps_the_other(runner: Runner) -> None:
    warm = _warm(runner, runners=1)
    pidfile = runner.tmp / "pids.json"
    run_id, wl = runner.workload("sleepy", conf={"pidfile": str(pidfile)})
    _, wl2 = runner.workload("push")
    sleepy, push = _start(runner, wl, grace=1.0), _start(runner, wl2)
    warm.send(sleepy)
    facts = _read_pidfile(pidfile)
    warm.send(Stop(run_id=sleepy.run_id, reason="revoked by test"))
    ex = warm.wait_for(sleepy.run_id, "exit")
    assert (ex.state, ex.reason) == ("stopped", "revoked by test"), warm.describe()
    assert _gone([facts["pid"], facts["child"]])
    assert runner.ti_state(run_id, "sleepy") in {"failed", "up_for_retry"}
    warm.send(push)  # the agent, and its other runs, go on
    assert warm.wait_for(push.run_id, "exit").state == "success", warm.describe()
    assert warm.proc.poll() is None

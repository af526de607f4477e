"""A real Windows host: the canary, the Job Object as Windows runs it, and a DAG's second hop.

Opt-in (tests/windows/conftest.py names the variables); an addition to the stand-in's suite, never
a substitute. What each test proves is what the stand-in cannot: Windows' own Job Objects, console
control events, NTFS, Active Directory's delegation.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.windows.real_host import DAG_VARIABLES, RealHost, run_python, skip_unless
from winexec import cli

#: A fake agent on the host: a Containment, a child that starts a grandchild (a venv's python.exe
#: is such a launcher), ``ROUNDS`` times; each time whether both are in the job and gone after
#: the kill. Then one tree whose owner dies (TerminateProcess): the job's kill-on-close takes it.
JOB_PROBE = r"""
import json, subprocess, sys, time
import psutil
from winexec.agent.containment import Containment

TREE = ("import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        "print(c.pid, flush=True); time.sleep(300)")

def alive(pid):
    try:
        return psutil.Process(pid).is_running()
    except psutil.Error:
        return False

inside = survivors = 0
for _ in range(ROUNDS):
    box = Containment()
    p = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, text=True, **box.popen_kwargs())
    box.adopt(p)
    grandchild = int(p.stdout.readline())
    inside += bool(box.contains(p.pid) and box.contains(grandchild))
    box.kill()
    p.wait(10)
    time.sleep(0.2)
    survivors += alive(grandchild)
    box.close()

owner = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time\n"
    "from winexec.agent.containment import Containment\n"
    "box = Containment()\n"
    "p = subprocess.Popen([sys.executable, '-c', " + repr(TREE) + "], stdin=subprocess.DEVNULL,"
    " stdout=subprocess.PIPE, text=True, **box.popen_kwargs())\n"
    "box.adopt(p)\n"
    "print(p.pid, p.stdout.readline().strip(), flush=True)\n"
    "time.sleep(300)\n"], stdout=subprocess.PIPE, text=True)
tree = [int(x) for x in owner.stdout.readline().split()]
psutil.Process(owner.pid).kill()  # as taskkill /F of the agent
owner.wait(10)
time.sleep(1)
print(json.dumps({"inside": inside, "survivors": survivors,
                  "orphans": [pid for pid in tree if alive(pid)]}))
"""

#: CTRL_BREAK to the task's process group runs its SIGTERM handler (the SDK's ``on_kill`` path,
#: routed by the runner); short sleeps, as CPython's sleep is not woken by SIGBREAK.
BREAK_PROBE = r"""
import json, os, subprocess, sys, tempfile, time
from winexec.agent.containment import Containment

mark = os.path.join(tempfile.mkdtemp(), "on_kill")
task = ("import signal, sys, time\n"
        "from winexec.agent import runner\n"
        "def on_kill(*_):\n"
        "    open(sys.argv[1], 'w').write('ran')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_kill)\n"
        "runner._route_sigbreak()\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.1)\n")
box = Containment()
p = subprocess.Popen([sys.executable, "-c", task, mark], stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, text=True, **box.popen_kwargs())
box.adopt(p)
p.stdout.readline()
box.terminate()
try:
    code = p.wait(15)
except subprocess.TimeoutExpired:
    code = None
    box.kill()
box.close()
print(json.dumps({"on_kill": os.path.exists(mark), "exit": code}))
"""


def _json_line(lines: list[str]) -> dict:
    return json.loads(next(ln for ln in reversed(lines) if ln.startswith("{")))


def test_the_canary_passes_on_the_host(
    real_host: RealHost, winexec_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from winexec.config import load

    steps = cli.check_steps(load(check_files=True), None, None, canary=True)
    for s in steps:
        print(f"[{'PASS' if s.ok else 'FAIL'}] {s.step} ({s.host} {s.principal}): {s.detail}")
        if not s.ok:
            print(f"       fix: {s.fix}")
    failed = [s for s in steps if not s.ok]
    assert not failed, failed
    names = {s.step for s in steps}
    assert {"endpoint", "Task SDK import", "process tree", "run folder", "NTFS-safe paths"} <= names
    endpoint = next(s for s in steps if s.step == "endpoint")
    assert "Microsoft.PowerShell: PowerShell 5.1." in endpoint.detail, endpoint
    tree = next(s for s in steps if s.step == "process tree")
    assert "in one Job Object" in tree.detail, tree


def test_the_job_object_holds_every_process_and_dies_with_its_owner(
    real_host: RealHost, ccache: Path
) -> None:
    rounds = 50
    result = _json_line(run_python(real_host, ccache, JOB_PROBE.replace("ROUNDS", str(rounds))))
    assert result == {"inside": rounds, "survivors": 0, "orphans": []}, result


def test_a_polite_stop_runs_on_kill_through_ctrl_break(real_host: RealHost, ccache: Path) -> None:
    result = _json_line(run_python(real_host, ccache, BREAK_PROBE))
    assert result["on_kill"] is True, result


def test_a_dag_reaches_a_second_hop_with_its_forwarded_ticket(
    real_host: RealHost, winexec_env: dict[str, str], tmp_path: Path
) -> None:
    skip_unless(DAG_VARIABLES)
    from winexec.testing.airflow_stack import AirflowStack

    api = os.environ["WINEXEC_TEST_API_URL"]
    dags = Path(__file__).parent / "dags"
    section = {
        k.removeprefix("AIRFLOW__WINEXEC__").lower(): v for k, v in winexec_env.items() if "WINEXEC" in k
    }
    with AirflowStack(
        dags,
        home=tmp_path / "home",
        executor="winexec.WindowsKerberosExecutor",
        scheduler=True,
        dag_processor=True,
        port=urlparse(api).port,
        config={
            "winexec": section,
            "core": {"execution_api_server_url": api},
            "api": {"host": "0.0.0.0"},  # the host calls back to it
        },
        env={"KRB5_CONFIG": str(real_host.krb5_conf)},
    ) as stack:
        run_id = stack.trigger(
            "winexec_windows_check", conf={"second_hop": os.environ["WINEXEC_TEST_SECOND_HOP"]}
        )
        t0 = time.monotonic()
        state = stack.wait_for_run("winexec_windows_check", run_id, timeout=600)
        assert state == "success", stack.log_tail("scheduler")
        out = stack.xcom("winexec_windows_check", run_id, "second_hop")
        print(f"second hop in {time.monotonic() - t0:.1f} s: {out}")
    assert out["platform"] == "win32" and out["bytes_read"] > 0 and out["forwarded"] is True, out
    assert out["user"].lower() == real_host.principal.split("@")[0].lower(), out

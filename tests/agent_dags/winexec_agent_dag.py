"""DAG the agent tests run task by task through ``python -m winexec.agent``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from airflow.sdk import Variable, dag, get_current_context, task


@dag(schedule=None, catchup=False)
def winexec_agent() -> None:
    @task
    def push() -> dict[str, int]:
        print("pushing the answer")
        return {"answer": 42}

    @task
    def pull(value: dict[str, int]) -> str:
        assert value == {"answer": 42}, value
        return str(Variable.get("winexec_agent_var")) + "!"

    @task(retries=0)
    def fail() -> None:
        raise RuntimeError("boom from winexec_agent.fail")

    @task(retries=0)
    def sleepy() -> None:
        """Start a grandchild, record the tree and what the platform offers, then hang."""
        conf = get_current_context()["dag_run"].conf or {}
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        facts = {"pid": os.getpid(), "child": child.pid, "has_fork": hasattr(os, "fork")}
        with open(conf["pidfile"], "w") as f:
            json.dump(facts, f)
        time.sleep(600)

    def whoami() -> dict[str, object]:
        """Who the task ran as, and whether it is still the process the supervisor started."""
        import getpass

        return {"user": getpass.getuser(), "pid": os.getpid(), "ppid": os.getppid()}

    # run_as_user is the task's principal: the WinRM logon already is it, so never sudo
    task(task_id="as_alice_at_realm", run_as_user="alice@WINEXEC.TEST")(whoami)()
    task(task_id="as_alice", run_as_user="alice")(whoami)()
    task(task_id="as_anyone")(whoami)()  # the test sets [core] default_impersonation for this one

    pull(push())
    fail()
    sleepy()


winexec_agent()

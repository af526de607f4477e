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

    pull(push())
    fail()
    sleepy()


winexec_agent()

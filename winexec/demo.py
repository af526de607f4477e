"""``python -m winexec.demo``: a DAG run on a pool of stand-in Windows hosts, start to finish.

Brings up a real MIT KDC on loopback, three ``winexec.sim`` hosts in windows-like mode (no fork,
no fcntl... for everything that runs on them) and a real Airflow (api-server, scheduler,
dag-processor, triggerer on SQLite) with ``executor = winexec.WindowsKerberosExecutor``; triggers the
example DAG and prints, per task, its state, try, the host it ran on and the Windows identity it
ran as (both read from the task's own log through the Airflow API). Everything stops on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from winexec.testing.airflow_stack import StackError
from winexec.testing.world import World, windows_world

DAG_ID = "winexec_demo"
#: A run's state when the demo's --timeout came first.
UNFINISHED = "unfinished"
REALM = "WINEXEC.TEST"  # the stand-in realm's (winexec.sim.kdc.Realm)
EXAMPLE = Path(__file__).resolve().parent / "example_dags" / "winexec_demo.py"
#: What the example DAG does on purpose (its docstring says so): the outcome each such task should
#: have, and the note the table shows beside it, so a failed row that was meant to fail says so.
INTENDED = {
    "transform": ("success", "failed its first try on purpose; the retry succeeded"),
    "nightly_ssis_package": ("failed", "stopped at its 5 s execution_timeout, as the DAG intends"),
    "publish_to_share": ("success", "ran as alice; her forwarded ticket reached the share"),
    "wait_for_export_file": ("success", "reschedule sensor: each poke a short run on a host"),
    "wait_for_batch_window": ("success", "deferred: waited in Airflow's triggerer, resumed on a host"),
    "report": ("success", "trigger_rule all_done: runs whatever happened upstream"),
}
#: Words of a log line that says why a task failed.
REASON = re.compile(r"Error\b|Exception\b|Timeout\b|timed out|winexec: (?!running on)")
#: What every task's log starts with (``winexec.agent.runner``).
WHERE = re.compile(r"winexec: running on (\S+) as (\S+)(?: \((\S+)\))?")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m winexec.demo", description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=3, help="stand-in Windows hosts (default 3)")
    p.add_argument("--slots", type=int, default=2, help="task slots per host (default 2)")
    p.add_argument(
        "--dags-folder", type=Path, help="trigger every DAG in this folder once, instead of the example"
    )
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the run, keep Airflow and the hosts up (open the UI) until Ctrl-C",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the DAG run")
    return p


def task_rows(world: World, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """One row per task instance: state, try, and where and as whom its last try ran."""
    rows = []
    tis = world.stack.task_instances(dag_id, run_id)
    for ti in sorted(tis, key=lambda t: (t["task_id"], t["map_index"])):
        host = principal = ""
        lines = task_log_lines(world, dag_id, run_id, ti) if ti["try_number"] else []
        for line in lines:
            m = WHERE.search(line)
            if m:
                host, principal = m.group(1), m.group(3) or m.group(2)
                break
        rows.append(
            {
                "dag_id": dag_id,
                "task_id": ti["task_id"],
                "map_index": ti["map_index"],
                "try_number": ti["try_number"],
                "state": ti["state"],
                "host": host,
                "principal": principal,
                "seconds": round(ti["duration"], 1) if ti.get("duration") is not None else None,
                "note": note(dag_id, ti, lines),
            }
        )
    return rows


def note(dag_id: str, ti: dict[str, Any], lines: list[str]) -> str:
    """Why a row looks as it does: what the example DAG intends, else why a task failed (the last
    log line that says so), or that it was still going when the demo stopped waiting."""
    intended = INTENDED.get(ti["task_id"]) if dag_id == DAG_ID else None
    if intended and intended[0] == ti["state"]:
        return intended[1]
    if ti["state"] == "success" and ti["try_number"] > 1:
        return f"succeeded on try {ti['try_number']}"
    if ti["state"] in ("success", "skipped"):
        return ""
    if ti["state"] in ("failed", "upstream_failed", "up_for_retry"):
        reason = next((ln for ln in reversed(lines) if REASON.search(ln)), "")
        return reason.strip().splitlines()[0][:100] if reason.strip() else ""
    return f"{ti['state'] or 'not started'} when the demo stopped waiting"


def task_log_lines(world: World, dag_id: str, run_id: str, ti: dict[str, Any]) -> list[str]:
    """The task's log (its last try) as Airflow's API serves it, one string per event."""
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
    body = world.stack.api("GET", path, params={"map_index": ti["map_index"]})
    content = body.get("content", []) if isinstance(body, dict) else []
    return [str(e.get("event", "")) if isinstance(e, dict) else str(e) for e in content]


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["dag_id", "task", "state", "try", "host", "principal", "seconds", "note"]
    cells = [
        [
            r["dag_id"],
            r["task_id"] + (f"[{r['map_index']}]" if r["map_index"] >= 0 else ""),
            str(r["state"]),
            str(r["try_number"]),
            r["host"],
            r["principal"],
            "" if r["seconds"] is None else f"{r['seconds']:.1f}",
            r.get("note") or "",
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    return "\n".join(line.rstrip() for line in lines + [fmt.format(*r) for r in cells])


def _dags(workdir: Path, folder: Path | None) -> Path:
    dags = workdir / "dags"
    if folder is not None:
        return folder.resolve()
    dags.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, dags)
    return dags


@contextlib.contextmanager
def _workdir(arg: Path | None) -> Iterator[Path]:
    if arg is not None:
        arg.mkdir(parents=True, exist_ok=True)
        yield arg.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="winexec-demo-") as tmp:
        yield Path(tmp)


def _dag_ids(world: World, custom: bool) -> list[str]:
    if not custom:
        return [DAG_ID]
    dags = world.stack.api("GET", "/dags", params={"limit": 1000})["dags"]
    return sorted(d["dag_id"] for d in dags)


def _run_line(run: dict[str, Any], world: World, args: argparse.Namespace) -> str:
    if run["state"] != UNFINISHED:
        return f"DAG run {run['dag_id']}: {run['state']}"
    logs = world.stack.log_folder / f"dag_id={run['dag_id']}" / f"run_id={run['run_id']}"
    kept = "" if args.workdir else " (gone when the demo ends; --workdir DIR keeps them)"
    return f"DAG run {run['dag_id']}: not finished after {args.timeout:g} s; its logs: {logs}{kept}"


def _terminated(signum: int, _: object) -> None:
    """SIGTERM unwinds like Ctrl-C: every ``with`` below stops what it started (KDC, hosts, Airflow)."""
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    signal.signal(signal.SIGTERM, _terminated)
    with _workdir(args.workdir) as workdir:
        dags = _dags(workdir, args.dags_folder)
        say(f"winexec demo: starting a KDC, {args.hosts} stand-in Windows hosts and Airflow in {workdir}")
        t0 = time.monotonic()
        # A task past its execution_timeout gets 5 s to clean up (on_kill) instead of the default 30:
        # the demo's timed-out task shows the stop without keeping everyone waiting.
        winexec = {
            "execution_timeout_grace": "5",
            # who may run what (docs/security.md): the pool's principal every DAG; alice the
            # example's publish_to_share, with her TGT forwarded for the share (a second hop)
            "grants": f"airflow@{REALM}: dag_id=*\nalice@{REALM}: dag_id={DAG_ID} delegate",
        }
        with windows_world(
            workdir, dags, hosts=args.hosts, slots=args.slots, winexec=winexec, triggerer=True
        ) as world:
            hosts = ", ".join(h.name for h in world.cluster.hosts)
            say(f"  up in {time.monotonic() - t0:.0f} s: hosts {hosts}; Airflow UI {world.stack.api_url}")
            dag_ids = _dag_ids(world, args.dags_folder is not None)
            if not dag_ids:
                say(f"no DAGs in {dags}: nothing to run")
                return 1
            t1 = time.monotonic()
            run_ids = {dag_id: world.stack.trigger(dag_id) for dag_id in dag_ids}
            say(f"  triggered {', '.join(dag_ids)}; waiting for the run(s) to finish")
            deadline = t1 + args.timeout
            runs, rows = [], []
            for dag_id, run_id in run_ids.items():
                try:
                    state = world.stack.wait_for_run(
                        dag_id, run_id, timeout=max(1.0, deadline - time.monotonic())
                    )
                except StackError:  # what it has so far is still worth showing
                    state = UNFINISHED
                runs.append({"dag_id": dag_id, "run_id": run_id, "state": state})
                rows += task_rows(world, dag_id, run_id)
            took = time.monotonic() - t1
            if args.json:
                print(json.dumps({"runs": runs, "seconds": round(took, 1), "tasks": rows}))
            else:
                print()
                print(table(rows))
                print()
                used = len({r["host"] for r in rows if r["host"]})
                for r in runs:
                    print(_run_line(r, world, args))
                print(f"{len(rows)} task instance(s) in {took:.0f} s on {used} host(s)")
            if args.keep_running:
                say(f"Airflow UI: {world.stack.api_url} (any user name is an admin); Ctrl-C stops everything")
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
        return 0 if all(r["state"] == "success" for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

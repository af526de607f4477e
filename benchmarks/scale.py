"""Scale in hosts: the same fan-out DAG on 1, 2, 5 and 10 stand-in hosts (2 slots each).

One Airflow stack with winexec and a 10-host sim cluster; before each point the ``[winexec]
hosts`` line in airflow.cfg is rewritten to the first *k* hosts, and the executor picks the new
list up on its own (``host_refresh_interval``), as an operator would add hosts without a
restart. ``core.parallelism`` is 10 x 2, so the hosts' slots are the only limit. Which hosts ran
the tasks is counted from the sim hosts' pipeline logs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks import _airflow as A
from benchmarks._report import Context, figure, fmt, table

TITLE = "Scale in hosts: the same workload on 1, 2, 5, 10 sim hosts"

SLOTS = 2
POINTS = (1, 2, 5, 10)
REFRESH = 2.0


def run(ctx: Context) -> dict[str, Any]:
    tasks = 10 if ctx.quick else 40
    points = (1, 5) if ctx.quick else POINTS
    most = max(points)
    timeout = 300 if ctx.quick else 1200
    rows: list[dict[str, Any]] = []
    with A.winexec_stack(
        ctx,
        "scale",
        hosts=most,
        slots=SLOTS,
        fanout=tasks,
        chain=2,
        extra={"host_refresh_interval": str(REFRESH)},
    ) as w:
        stack, cluster = w.stack, w.cluster
        all_hosts = stack.extra_config["winexec"]["hosts"].split(", ")
        for k in points:
            stack.extra_config["winexec"]["hosts"] = ", ".join(all_hosts[:k])
            stack.write_config()
            time.sleep(3 * REFRESH)  # the executor re-reads the list every REFRESH seconds
            A.warm_up(stack, ctx)
            before = {h.name: len(h.pipeline_log) for h in cluster.hosts}
            r = A.run_dag(stack, ctx, A.FANOUT_DAG, timeout)
            per_host = {h.name: len(h.pipeline_log) - before[h.name] for h in cluster.hosts}
            used = sum(1 for v in per_host.values() if v)
            rows.append(
                {
                    "hosts": k,
                    "slots": k * SLOTS,
                    "state": r.state,
                    "states": r.states(),
                    "wall_s": r.wall_s,
                    "tasks_per_s": len(r.tis) / r.wall_s if r.wall_s else None,
                    "hosts_used": used,
                    "pipelines_per_host": {n: v for n, v in per_host.items() if v},
                    "latencies": r.latencies(),
                }
            )
            ctx.log.info("scale: %d host(s): %.1f s, %s", k, r.wall_s, r.states())
    base = rows[0]["tasks_per_s"] or 0.0
    for row in rows:
        row["speedup_vs_1_host"] = (row["tasks_per_s"] / base) if base and row["tasks_per_s"] else None
        row["efficiency"] = (row["speedup_vs_1_host"] / (row["hosts"] / rows[0]["hosts"])) if base else None
    best = max(rows, key=lambda r: r["tasks_per_s"] or 0)
    return {
        "params": {
            "tasks": tasks,
            "slots_per_host": SLOTS,
            "points": list(points),
            "windows_like": A.WINDOWS_LIKE,
        },
        "results": {"points": rows},
        "targets": [],
        "notes": [
            f"Throughput peaks at {best['hosts']} host(s) ({fmt(best['tasks_per_s'])} tasks/s). All stand-in "
            "hosts, every agent and task process, the scheduler and the api-server share this machine's "
            "cores, so adding hosts adds slots but no CPU: past the point where the cores are busy "
            "(a few concurrent tasks on 2 cores), more hosts cannot help here. On real Windows hosts each "
            "host brings its own CPU, and the scheduler side's cost per task is what remains.",
        ],
    }


def plot(data: dict[str, Any], path: Path) -> None:
    pts = data["results"]["points"]
    hosts = [p["hosts"] for p in pts]
    tput = [p["tasks_per_s"] or 0 for p in pts]
    with figure(path, ncols=2, width=5.0, height=3.8) as (_fig, (ax1, ax2)):
        ax1.plot(hosts, tput, "o-", color="#4c72b0", label="measured")
        if tput and tput[0]:
            ax1.plot(hosts, [tput[0] * h / hosts[0] for h in hosts], "--", color="grey", label="linear")
        ax1.set_xlabel("hosts (2 slots each)")
        ax1.set_ylabel("tasks / s")
        ax1.set_title(f"{data['params']['tasks']} trivial tasks")
        ax1.set_xticks(hosts)
        ax1.legend()
        ax2.bar([str(h) for h in hosts], [p["wall_s"] for p in pts], color="#4c72b0")
        ax2.set_xlabel("hosts")
        ax2.set_ylabel("wall time, s")


def markdown(data: dict[str, Any]) -> str:
    rows = [
        [
            p["hosts"],
            p["slots"],
            p["state"],
            p["wall_s"],
            p["tasks_per_s"],
            p["speedup_vs_1_host"],
            p["hosts_used"],
            p["latencies"]["queue_to_start_s"].get("p50"),
        ]
        for p in data["results"]["points"]
    ]
    return f"{data['params']['tasks']} trivial tasks per point.\n\n" + table(
        [
            "hosts",
            "slots",
            "run",
            "wall s",
            "tasks/s",
            "speed-up vs first",
            "hosts used",
            "queued->started p50 s",
        ],
        rows,
    )

"""Scheduler cost: ``heartbeat()``/``sync()`` time per scheduler loop, executor memory and threads,
with 10, 100 and 1000 running remote tasks, on warm agents (``warm_runners = 2``).

What runs, and what does not:

- **The executor is the real one**, in a process of its own that holds nothing else (Airflow
  imported, no scheduler, no DB): ``WindowsKerberosExecutor`` configured from a ``[winexec]``
  mapping, its real ``TicketStore`` against the realm's KDC, its real transport (pypsrp, Kerberos
  with delegation, message encryption) and I/O worker pool. The benchmark feeds it workloads the
  way ``BaseExecutor.queue_workload`` does (into ``queued_tasks``) and calls ``heartbeat()`` in a
  loop the way the scheduler does.
- **The hosts are real stand-in hosts** (``winexec.sim``, 10 of them, in the benchmark's main
  process): each has one Kerberos-authenticated WinRS shell for the principal, its warm agent
  fed each task's start line by a real WS-Man Send, its output read by one long-polled Receive.
- **The remote process is not the agent**: 1000 real task runners do not fit on this machine.
  ``[winexec] python`` points at a small shell script that speaks the warm agent's protocol:
  ``started`` for each start line, then a ``heartbeat`` line per run every
  ``heartbeat_interval``. To the executor it is indistinguishable from long-sleeping tasks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._report import Context, figure, fmt, summary, table, target

TITLE = "Scheduler cost: heartbeat()/sync() time, memory and threads vs running remote tasks"

HOSTS = 10
HEARTBEAT_INTERVAL = 5.0
LOOP_INTERVAL = 0.25  # seconds between heartbeat() calls, like a busy scheduler loop
TARGET_P99_MS = 10.0
TARGET_MIB_PER_TASK = 1.0

FAKE_AGENT = r"""#!/bin/sh
# Speaks winexec's warm agent protocol (winexec/protocol.py) and sleeps: long-running tasks
# without the cost of real ones. Only --warm; anything else answers that it knows no such run.
if [ "$3" != "--warm" ]; then echo '{"found":false}'; exit 0; fi
runs=$(mktemp)
( while :; do
    sleep @HB@
    while IFS= read -r r; do printf '{"v":1,"type":"heartbeat","run_id":"%s"}\n' "$r"; done < "$runs"
  done ) &
while IFS= read -r line; do
  case "$line" in *'"type":"start"'*) ;; *) continue ;; esac
  rid=$(printf '%s' "$line" | sed -n 's/.*"run_id":"\([^"]*\)".*/\1/p')
  echo "$rid" >> "$runs"
  printf '{"v":1,"type":"started","run_id":"%s","pid":%s,"host":"%s","user":"%s","delegated":false}\n' \
    "$rid" "$$" "$COMPUTERNAME" "$USERNAME"
done
kill $! 2>/dev/null
"""


def run(ctx: Context) -> dict[str, Any]:
    from winexec.sim.cluster import Quotas
    from winexec.sim.testing import running_cluster
    from winexec.testing.world import hosts_option

    counts = [10, 100] if ctx.quick else [10, 100, 1000]
    measure_s = 8.0 if ctx.quick else 20.0
    per_host = -(-max(counts) // HOSTS)
    tmp = ctx.scratch("scheduler-cost")
    agent = tmp / "fake-agent.sh"
    agent.write_text(FAKE_AGENT.replace("@HB@", str(HEARTBEAT_INTERVAL)))
    agent.chmod(0o755)
    quotas = Quotas(MaxShellsPerUser=per_host + 20, MaxConcurrentOperationsPerUser=5000)
    with running_cluster(tmp / "realm", HOSTS, ("airflow",), windows_like=True, quotas=quotas) as (
        realm,
        cluster,
    ):
        cfg = {
            "hosts": hosts_option(cluster, per_host),
            "python": str(agent),
            "default_principal": realm.principal("airflow"),
            "default_keytab": str(realm.keytab_path(realm.principal("airflow"))),
            "heartbeat_interval": str(HEARTBEAT_INTERVAL),
            "warm_runners": "2",
        }
        home = tmp / "airflow-home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(realm.env())
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__EXECUTOR="winexec.WindowsKerberosExecutor",
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'unused.db'}",
            AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        )
        spec = {"winexec": cfg, "counts": counts, "measure_s": measure_s, "loop_interval": LOOP_INTERVAL}
        out_file = tmp / "child.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scheduler_cost", "--child", json.dumps(spec), str(out_file)],
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        deadline = time.monotonic() + (600 if ctx.quick else 1800)
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the executor process did not finish in time")
                ctx.sample()
                time.sleep(1.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0 or not out_file.exists():
            raise RuntimeError(f"executor process exited {proc.returncode}")
        child = json.loads(out_file.read_text())
        shells = sum(h.shell_count for h in cluster.hosts)
    child["sim_shells_at_end"] = shells
    return _assemble(child, counts, measure_s)


def _assemble(child: dict[str, Any], counts: list[int], measure_s: float) -> dict[str, Any]:
    points = child["points"]
    top = points[-1]
    p99 = top["heartbeat_ms"].get("p99")
    mib = top["rss_per_task_mib"]
    n = top["running"]
    targets = [
        target(
            f"heartbeat() p99 with {n} running tasks",
            f"< {TARGET_P99_MS:g} ms",
            p99,
            "ms",
            (p99 < TARGET_P99_MS) if (p99 is not None and n >= 1000) else None,
            (
                ""
                if p99 is None or p99 < TARGET_P99_MS
                else f"missed by {fmt(p99 - TARGET_P99_MS)} ms ({fmt(p99 / TARGET_P99_MS)}x the goal); "
                f"sync() share p99 {fmt(top['sync_ms'].get('p99'))} ms"
            )
            + ("" if n >= 1000 else f" (quick run: only {n} tasks, not judged)"),
        ),
        target(
            f"executor memory per running task ({n} running)",
            f"< {TARGET_MIB_PER_TASK:g} MiB",
            mib,
            "MiB",
            (mib < TARGET_MIB_PER_TASK) if (mib is not None and n >= 1000) else None,
            (
                ""
                if mib is None or mib < TARGET_MIB_PER_TASK
                else f"missed by {fmt(mib - TARGET_MIB_PER_TASK)} MiB per task: each running task holds an "
                "open pypsrp RunspacePool (WSMan session, SPNEGO context, PSRP fragmenter and buffers)"
            )
            + ("" if n >= 1000 else f" (quick run: only {n} tasks, not judged)"),
        ),
    ]
    return {
        "params": {
            "running_counts": counts,
            "hosts": HOSTS,
            "heartbeat_interval_s": HEARTBEAT_INTERVAL,
            "loop_interval_s": LOOP_INTERVAL,
            "measure_s_per_point": measure_s,
            "io_workers": child.get("io_workers"),
            "poll_timeout_s": child.get("poll_timeout"),
            "remote_process": "fake warm agent (sh): started per start line + a heartbeat per run every 5 s; "
            "real sim hosts, one real WinRS shell per host",
            "warm_runners": 2,
        },
        "results": child,
        "targets": targets,
        "notes": [
            "What was measured: the real executor in its own process, with N tasks genuinely running "
            "on 10 stand-in hosts, on warm agents: one WinRS shell per host and principal, its output "
            "long-polled by one reader thread; each task's poll reads what that reader queued. The "
            "remote process is a protocol-speaking shell script, not the Python agent; the executor "
            "cannot tell the difference.",
            "The one-shell-per-task path (warm_runners = 0, a PSRP pipeline per task polled over the "
            "network) measured heartbeat() p99 111 ms with 1000 running tasks at 7d7de86373; it is "
            "not re-run.",
            "`heartbeat()` is timed around the base class's `heartbeat()` (slot accounting, metrics, "
            "`trigger_tasks`, then winexec's `sync()`); `sync()` alone is timed as well.",
            "Memory is the executor process's RSS growth from its idle state (Airflow imported, "
            "executor started) divided by the running tasks, after a garbage collection.",
            "The stand-in hosts run in the benchmark's main process and compete with the executor for "
            "the same cores: timings are pessimistic.",
        ],
    }


# -- the executor process ---------------------------------------------------------------------------
def child_main(spec: dict[str, Any], out: Path) -> None:
    import logging

    import psutil

    logging.basicConfig(level=logging.WARNING)
    from winexec.config import load, mapping_getter
    from winexec.executor import Phase, WindowsKerberosExecutor
    from winexec.testing.lite_agent import make_workload

    proc = psutil.Process()
    counts: list[int] = spec["counts"]
    ex = WindowsKerberosExecutor(parallelism=max(counts) + 10)
    ex.settings = load(mapping_getter(spec["winexec"]))
    ex.start()
    ex.heartbeat()
    polls = [0]
    assert ex.driver is not None
    real_on_polled = ex.driver.on_polled

    def counting_on_polled(*a: Any, **k: Any) -> None:
        polls[0] += 1
        real_on_polled(*a, **k)

    ex.driver.on_polled = counting_on_polled  # type: ignore[method-assign]
    sync_times: list[float] = []
    real_sync = ex.sync

    def timed_sync() -> None:
        t0 = time.perf_counter()
        real_sync()
        sync_times.append(time.perf_counter() - t0)

    ex.sync = timed_sync  # type: ignore[method-assign]

    gc.collect()
    time.sleep(1.0)
    base_rss = proc.memory_info().rss
    base_threads = proc.num_threads()
    points: list[dict[str, Any]] = []
    queued = 0
    for n in counts:
        t_launch = time.monotonic()
        while queued < n:
            w = make_workload("bench_scheduler_cost", f"sleep_{queued:05d}", "bench")
            ex.queued_tasks[w.ti.key] = w
            queued += 1

        def running() -> int:
            return sum(1 for r in ex.records.values() if r.phase is Phase.RUNNING and r.started)

        launch_deadline = time.monotonic() + 60 + 1.0 * n
        while running() < n and time.monotonic() < launch_deadline:
            ex.heartbeat()
            ex.get_event_buffer()
            time.sleep(0.05)
        launched_in = time.monotonic() - t_launch
        # steady state: every task running; time the scheduler's calls
        hb: list[float] = []
        sync_times.clear()
        polls[0] = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < spec["measure_s"]:
            s = time.perf_counter()
            ex.heartbeat()
            hb.append(time.perf_counter() - s)
            ex.get_event_buffer()
            time.sleep(spec["loop_interval"])
        elapsed = time.monotonic() - t0
        gc.collect()
        rss = proc.memory_info().rss
        n_running = running()
        failed = sum(1 for r in ex.records.values() if r.phase is not Phase.RUNNING)
        poll_rate = polls[0] / elapsed
        points.append(
            {
                "target_running": n,
                "running": n_running,
                "not_running": failed + (n - len(ex.records)),
                "launch_s": launched_in,
                "launches_per_s": n / launched_in if launched_in else None,
                "heartbeat_ms": summary(hb, 1e3),
                "sync_ms": summary(sync_times, 1e3),
                "rss_mib": rss / 2**20,
                "rss_growth_mib": (rss - base_rss) / 2**20,
                "rss_per_task_mib": (rss - base_rss) / 2**20 / max(1, n_running),
                "threads": proc.num_threads(),
                "polls_per_s": poll_rate,
                "poll_interval_per_task_s": (n_running / poll_rate) if poll_rate else None,
            }
        )
        print(f"scheduler_cost: {json.dumps(points[-1])}", flush=True)
    result = {
        "baseline_rss_mib": base_rss / 2**20,
        "baseline_threads": base_threads,
        "io_workers": ex.settings.io_workers,
        "poll_timeout": ex.settings.poll_timeout,
        "points": points,
    }
    out.write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # the parent stops the hosts, which ends every shell; no 1000 polite stops


def plot(data: dict[str, Any], path: Path) -> None:
    pts = data["results"]["points"]
    ns = [p["running"] or p["target_running"] for p in pts]
    with figure(path, ncols=3, width=4.2, height=3.6) as (_fig, (ax1, ax2, ax3)):
        for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax1.plot(ns, [p["heartbeat_ms"].get(key) for p in pts], style, label=f"heartbeat {key}")
        ax1.axhline(TARGET_P99_MS, color="red", lw=0.8, label="target p99")
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        ax1.set_xlabel("running remote tasks")
        ax1.set_ylabel("ms per heartbeat()")
        ax1.legend(fontsize=7)
        ax2.plot(ns, [p["rss_per_task_mib"] for p in pts], "o-", color="#4c72b0")
        ax2.axhline(TARGET_MIB_PER_TASK, color="red", lw=0.8, label="target")
        ax2.set_xscale("log")
        ax2.set_xlabel("running remote tasks")
        ax2.set_ylabel("executor RSS growth per task, MiB")
        ax2.legend(fontsize=7)
        ax3.plot(ns, [p["threads"] for p in pts], "o-", color="#55a868")
        ax3.set_xscale("log")
        ax3.set_xlabel("running remote tasks")
        ax3.set_ylabel("executor threads")
        ax3.set_ylim(bottom=0)


def markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    rows = [
        [
            p["running"],
            p["heartbeat_ms"].get("p50"),
            p["heartbeat_ms"].get("p95"),
            p["heartbeat_ms"].get("p99"),
            p["heartbeat_ms"].get("max"),
            p["sync_ms"].get("p99"),
            p["rss_mib"],
            p["rss_per_task_mib"],
            p["threads"],
            p["poll_interval_per_task_s"],
            p["launches_per_s"],
        ]
        for p in r["points"]
    ]
    text = table(
        [
            "running",
            "heartbeat p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "sync p99 ms",
            "RSS MiB",
            "MiB/task",
            "threads",
            "s between polls of a task",
            "launches/s",
        ],
        rows,
    )
    text += (
        f"\n\nIdle executor (Airflow imported, started): {fmt(r['baseline_rss_mib'])} MiB RSS, "
        f"{r['baseline_threads']} threads; {r['io_workers']} I/O workers, poll timeout {r['poll_timeout']} s."
    )
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    child_main(json.loads(args.child), args.out)

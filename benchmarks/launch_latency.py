"""Launch latency of one trivial task: queued -> started on the host, and queued -> success.

Two views:

1. **End to end through Airflow** (what a user sees): a chain of trivial tasks (one at a time, so
   nothing queues behind anything) under winexec on 2 stand-in hosts, and the same chain under
   LocalExecutor for comparison. From the metadata database: ``queued_when`` -> ``start_date``
   (the task runner on the host called the Execution API) and ``queued_when`` -> ``end_date``.
   The executor opens a **new shell for every task** (it does not reuse shells yet), so every
   one of these launches is cold.
2. **Transport only** (the launcher against one stand-in host, no Airflow): the time from asking
   for a launch to the agent's ``started`` line and to its ``exit`` line, with a protocol-speaking
   script as the agent so Python start-up does not hide the transport:
   *cold* = ``winexec.transport.open_session`` (ticket from the store, Kerberos authentication with
   delegation, WinRM shell + PSRP runspace pool, pipeline) then close;
   *warm* = a new pipeline on an already-open runspace pool (what shell reuse would cost).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import _airflow as A
from benchmarks._report import Context, figure, fmt, summary, table, target

TITLE = "Launch latency: queued -> started and queued -> success, cold and warm"

QUICK_AGENT = r"""#!/bin/sh
# Speaks winexec's agent protocol: started, then success at once (a no-op task without Python).
IFS= read -r line
rid=$(printf '%s' "$line" | sed -n 's/.*"run_id":"\([^"]*\)".*/\1/p')
printf '{"v":1,"type":"started","run_id":"%s","pid":%s,' "$rid" "$$"
printf '"host":"%s","user":"%s","delegated":true}\n' "$COMPUTERNAME" "$USERNAME"
printf '{"v":1,"type":"exit","run_id":"%s","state":"success","code":0}\n' "$rid"
"""


def _transport(ctx: Context, n: int) -> dict[str, Any]:
    from pypsrp.powershell import PowerShell, RunspacePool

    from winexec import protocol
    from winexec.config import HostSpec, load, mapping_getter
    from winexec.sim.testing import running_cluster
    from winexec.tickets import TicketStore
    from winexec.transport import open_session
    from winexec.transport.wsman import connect

    tmp = ctx.scratch("transport")
    agent = tmp / "quick-agent.sh"
    agent.write_text(QUICK_AGENT)
    agent.chmod(0o755)
    with running_cluster(tmp / "realm", 1, ("airflow",), windows_like=A.WINDOWS_LIKE) as (realm, cluster):
        h = cluster.hosts[0]
        principal = realm.principal("airflow")
        settings = load(
            mapping_getter(
                {
                    "hosts": f"http://{h.name}:{h.http_port}?slots=4&address={h.address}",
                    "python": str(agent),
                    "default_principal": principal,
                    "default_keytab": str(realm.keytab_path(principal)),
                }
            )
        )
        host: HostSpec = settings.hosts[0]
        store = TicketStore({principal: realm.keytab_path(principal)}, ccache_dir=tmp / "cc")
        store.start()

        def start_msg() -> protocol.Start:
            return protocol.Start(workload={"ti": {"id": "bench"}}, run_id=uuid.uuid4().hex)

        cold_start: list[float] = []
        cold_exit: list[float] = []
        try:
            for i in range(n + 1):
                t0 = time.perf_counter()
                session = open_session(settings, host, principal, True, store, start_msg())
                t_started = t_exit = None
                deadline = time.monotonic() + 30
                while t_exit is None and time.monotonic() < deadline:
                    r = session.poll(timeout=1)
                    now = time.perf_counter()
                    for m in r.messages:
                        if isinstance(m, protocol.Started) and t_started is None:
                            t_started = now
                        if isinstance(m, protocol.Exit):
                            t_exit = now
                    if r.finished and t_exit is None:
                        break
                session.close()
                if i == 0:
                    continue  # the first one warms imports and the sim
                if t_started is None or t_exit is None:
                    raise RuntimeError(f"cold launch {i}: no started/exit from the agent")
                cold_start.append(t_started - t0)
                cold_exit.append(t_exit - t0)
                ctx.sample()

            cred = store.get(principal)
            wsman = connect(settings, host, cred, delegate=True)
            warm_start: list[float] = []
            warm_exit: list[float] = []
            open_t0 = time.perf_counter()
            pool = RunspacePool(wsman)
            pool.open()
            pool_open_s = time.perf_counter() - open_t0
            try:
                for i in range(n + 1):
                    t0 = time.perf_counter()
                    ps = PowerShell(pool)
                    ps.add_cmdlet(str(agent)).add_argument("-m").add_argument("winexec.agent")
                    # the whole input, then its end: Windows PowerShell 5.1 starts the agent only then
                    ps.begin_invoke(input=[start_msg().to_line().rstrip("\n")])
                    t_started = t_exit = None
                    deadline = time.monotonic() + 30
                    seen = 0
                    while t_exit is None and time.monotonic() < deadline:
                        from pypsrp.complex_objects import PSInvocationState

                        if ps.state == PSInvocationState.RUNNING:
                            ps.poll_invoke(timeout=1)
                        now = time.perf_counter()
                        for item in ps.output[seen:]:
                            text = str(item)
                            if '"type":"started"' in text and t_started is None:
                                t_started = now
                            if '"type":"exit"' in text:
                                t_exit = now
                        seen = len(ps.output)
                        if ps.state != PSInvocationState.RUNNING and t_exit is None:
                            break
                    if ps.state == PSInvocationState.RUNNING:
                        ps.stop()
                    if i == 0:
                        continue
                    if t_started is None or t_exit is None:
                        raise RuntimeError(f"warm launch {i}: no started/exit from the agent")
                    warm_start.append(t_started - t0)
                    warm_exit.append(t_exit - t0)
                    ctx.sample()
            finally:
                pool.close()
        finally:
            store.close()
    return {
        "cold": {"to_started_ms": summary(cold_start, 1e3), "to_exit_ms": summary(cold_exit, 1e3)},
        "warm": {"to_started_ms": summary(warm_start, 1e3), "to_exit_ms": summary(warm_exit, 1e3)},
        "runspace_pool_open_ms": pool_open_s * 1e3,
    }


def run(ctx: Context) -> dict[str, Any]:
    chain = 5 if ctx.quick else 15
    n_transport = 10 if ctx.quick else 40
    results: dict[str, Any] = {}
    ctx.log.info("launch_latency: transport, %d cold and %d warm launches", n_transport, n_transport)
    results["transport"] = _transport(ctx, n_transport)

    with A.winexec_stack(ctx, "winexec", hosts=2, slots=1, fanout=1, chain=chain) as w:
        A.run_dag(w.stack, ctx, A.FANOUT_DAG, 300)  # warm-up: the scheduler and executor are up
        r = A.run_dag(w.stack, ctx, A.CHAIN_DAG, 120 + 60 * chain)
        results["e2e_winexec"] = {"state": r.state, "states": r.states(), **r.latencies()}
        ctx.log.info("launch_latency: winexec %s", r.latencies()["queue_to_start_s"])
    with A.winexec_stack(
        ctx, "warm", hosts=2, slots=1, fanout=1, chain=chain, extra={"warm_runners": "2"}
    ) as w:
        first = A.run_dag(w.stack, ctx, A.FANOUT_DAG, 300)  # opens the warm agents: the pool's cold start
        r = A.run_dag(w.stack, ctx, A.CHAIN_DAG, 120 + 60 * chain)
        results["e2e_warm"] = {
            "state": r.state,
            "states": r.states(),
            **r.latencies(),
            "pool_cold_start_queue_to_start_s": first.latencies()["queue_to_start_s"],
        }
        ctx.log.info("launch_latency: winexec warm %s", r.latencies()["queue_to_start_s"])
    if not ctx.quick:
        with A.local_stack(ctx, "local", parallelism=2, fanout=1, chain=chain) as stack:
            A.run_dag(stack, ctx, A.FANOUT_DAG, 300)
            r = A.run_dag(stack, ctx, A.CHAIN_DAG, 120 + 30 * chain)
            results["e2e_local"] = {"state": r.state, "states": r.states(), **r.latencies()}
    t = results["transport"]
    q = results["e2e_warm"]["queue_to_start_s"]
    p50, p95 = q.get("p50"), q.get("p95")
    return {
        "params": {
            "chain_tasks": chain,
            "transport_launches": n_transport,
            "winexec_hosts": 2,
            "windows_like": A.WINDOWS_LIKE,
            "warm_runners": 2,
        },
        "results": results,
        "targets": [
            target(
                "queued->started p50, warm agents (chain of trivial tasks)",
                "<= 0.5 s",
                p50,
                "s",
                p50 is not None and p50 <= 0.5,
                "",
            ),
            target(
                "queued->started p95, warm agents",
                "<= 1.0 s",
                p95,
                "s",
                p95 is not None and p95 <= 1.0,
                "",
            ),
        ],
        "notes": [
            "Cold: a new WinRM shell and agent per task (warm_runners = 0). Warm: each task a start "
            "line to its principal's warm agent, whose task runner was started before the task came "
            "(warm_runners = 2); the pool's cold start (its first tasks, opening the agents) is the "
            "warm-up run's, reported apart. The transport rows: "
            f"{fmt(t['cold']['to_started_ms'].get('p50'))} ms for a new shell + pipeline, "
            f"{fmt(t['warm']['to_started_ms'].get('p50'))} ms for a pipeline on an open shell.",
            "End to end, most of queued->started is on the host: starting the agent's Python, "
            "importing the Task SDK, then the supervisor starting the task runner process. On this "
            "machine those share 2 cores with the scheduler and api-server.",
        ],
    }


def plot(data: dict[str, Any], path: Path) -> None:
    r = data["results"]
    with figure(path, ncols=2, width=5.0, height=3.8) as (_fig, (ax1, ax2)):
        t = r["transport"]
        labels = ["cold\n(new shell)", "warm\n(reused shell)"]
        for off, key, color in ((-0.2, "to_started_ms", "#4c72b0"), (0.2, "to_exit_ms", "#dd8452")):
            p50 = [t["cold"][key].get("p50", 0), t["warm"][key].get("p50", 0)]
            p95 = [t["cold"][key].get("p95", 0), t["warm"][key].get("p95", 0)]
            ax1.bar(
                [0 + off, 1 + off],
                p50,
                width=0.4,
                color=color,
                yerr=[[0, 0], [a - b for a, b in zip(p95, p50, strict=True)]],
                capsize=3,
                label=key.replace("_ms", "").replace("_", " ") + " (p50, p95 whisker)",
            )
        ax1.set_xticks([0, 1], labels)
        ax1.set_ylabel("ms")
        ax1.set_title("transport: launcher -> sim host")
        ax1.legend(fontsize=7)
        sides = [
            ("e2e_winexec", "winexec cold"),
            ("e2e_warm", "winexec warm"),
            ("e2e_local", "LocalExecutor"),
        ]
        sides = [(k, v) for k, v in sides if k in r]
        for off, key, color in (
            (-0.2, "queue_to_start_s", "#4c72b0"),
            (0.2, "queue_to_success_s", "#dd8452"),
        ):
            p50 = [r[k][key].get("p50", 0) for k, _ in sides]
            p95 = [r[k][key].get("p95", 0) for k, _ in sides]
            ax2.bar(
                [i + off for i in range(len(sides))],
                p50,
                width=0.4,
                color=color,
                yerr=[[0] * len(sides), [a - b for a, b in zip(p95, p50, strict=True)]],
                capsize=3,
                label=key.replace("_s", "").replace("_", " "),
            )
        ax2.set_xticks(list(range(len(sides))), [v for _, v in sides])
        ax2.set_ylabel("s")
        ax2.set_title("end to end through Airflow (cold)")
        ax2.legend(fontsize=7)


def markdown(data: dict[str, Any]) -> str:
    r = data["results"]
    rows: list[list[Any]] = []
    for key, label in (
        ("e2e_winexec", "winexec, new shell per task (cold)"),
        ("e2e_warm", "winexec, warm agents"),
        ("e2e_local", "LocalExecutor"),
    ):
        if key not in r:
            continue
        s = r[key]
        rows.append(
            [
                label,
                s["queue_to_start_s"].get("n"),
                s["queue_to_start_s"].get("p50"),
                s["queue_to_start_s"].get("p95"),
                s["queue_to_success_s"].get("p50"),
                s["queue_to_success_s"].get("p95"),
            ]
        )
    text = "End to end, seconds (a chain of trivial tasks, one at a time):\n\n" + table(
        ["executor", "n", "queued->started p50", "p95", "queued->success p50", "p95"], rows
    )
    cold = r.get("e2e_warm", {}).get("pool_cold_start_queue_to_start_s")
    if cold:
        text += (
            f"\n\nThe warm pool's cold start, apart (its warm-up run, which opens the agents): "
            f"queued->started p50 {fmt(cold.get('p50'))} s, max {fmt(cold.get('max'))} s."
        )
    t = r["transport"]
    trows = [
        [
            label,
            t[k]["to_started_ms"].get("n"),
            t[k]["to_started_ms"].get("p50"),
            t[k]["to_started_ms"].get("p95"),
            t[k]["to_exit_ms"].get("p50"),
            t[k]["to_exit_ms"].get("p95"),
        ]
        for k, label in (
            ("cold", "cold: ticket + auth + new shell + pipeline"),
            ("warm", "warm: pipeline on open shell"),
        )
    ]
    text += "\n\nTransport only, milliseconds (launcher to one sim host, protocol-script agent):\n\n" + table(
        ["launch", "n", "to started p50", "p95", "to exit p50", "p95"], trows
    )
    text += (
        f"\n\nOpening the runspace pool once (the part reuse saves): {fmt(t['runspace_pool_open_ms'])} ms."
    )
    return text

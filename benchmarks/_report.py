"""What every benchmark shares: the run context, statistics, the machine, JSON, PNG, the report."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("benchmarks")

SCHEMA = 1
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"


@dataclass
class Context:
    """What a benchmark's ``run`` gets: quick or full, where to put scratch files, a logger."""

    quick: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="winexec-bench-")))
    log: logging.Logger = log
    monitor: LoadMonitor | None = None

    def sample(self) -> None:
        """Note the machine's CPU use now (call every second or so during a long measurement)."""
        if self.monitor is not None:
            self.monitor.sample()

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """n, mean, min, p50, p95, p99, max of ``values`` times ``scale`` (e.g. 1e3 for s -> ms)."""
    xs = [v * scale for v in values]
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "p50": percentile(xs, 50),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
        "max": max(xs),
    }


def target(
    name: str, goal: str, measured: float | None, unit: str, met: bool | None, detail: str = ""
) -> dict[str, Any]:
    """One target line: what was promised, what was measured, whether it holds, and why not."""
    return {"name": name, "target": goal, "measured": measured, "unit": unit, "met": met, "detail": detail}


# -- the machine ------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git() -> dict[str, Any]:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
        return {"commit": head, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine() -> dict[str, Any]:
    """The machine a result came from: enough to tell whether two results are comparable."""
    mem = psutil.virtual_memory()
    return {
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "memory_bytes": mem.total,
        "memory_gib": round(mem.total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "airflow": _version("apache-airflow-core") or _version("apache-airflow"),
        "task_sdk": _version("apache-airflow-task-sdk"),
        "pypsrp": _version("pypsrp"),
        "winexec": _version("winexec"),
        "git": _git(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


class LoadMonitor:
    """Samples the whole machine's CPU use while a benchmark runs, to say how noisy it was."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.load_before = os.getloadavg()
        self._t0 = time.monotonic()
        psutil.cpu_percent(None)  # prime

    def sample(self) -> None:
        self.samples.append(psutil.cpu_percent(None))

    def result(self) -> dict[str, Any]:
        self.sample()
        return {
            "loadavg_before": [round(x, 2) for x in self.load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_percent_mean": round(statistics.fmean(self.samples), 1) if self.samples else None,
            "duration_s": round(time.monotonic() - self._t0, 1),
        }


def other_load(exclude_pid: int | None = None) -> float:
    """CPU seconds/second used *outside* this process tree right now, sampled over 1 s."""
    me = psutil.Process(exclude_pid or os.getpid())
    mine = {me.pid} | {c.pid for c in me.children(recursive=True)}

    def others() -> float:
        total = 0.0
        for p in psutil.process_iter(["pid", "cpu_times"]):
            if p.info["pid"] in mine or p.info["cpu_times"] is None:
                continue
            total += p.info["cpu_times"].user + p.info["cpu_times"].system
        return total

    a = others()
    time.sleep(1.0)
    return max(0.0, others() - a)


# -- files -------------------------------------------------------------------------------------
def write_result(out: Path, name: str, title: str, data: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "benchmark": name, "title": title, **data}
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def _json_default(obj: object) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_results(out: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA and "benchmark" in data:
            found[str(data["benchmark"])] = data
    return found


@contextlib.contextmanager
def figure(path: Path, *, ncols: int = 1, width: float = 7.0, height: float = 4.2) -> Iterator[Any]:
    """A matplotlib (Agg) figure with ``ncols`` axes, saved to ``path`` as PNG on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols if ncols > 1 else width, height), squeeze=False)
    try:
        yield fig, list(axes[0])
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# -- the report ---------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: significant digits, no exponent for ordinary magnitudes."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if value == 0:
            return "0"
        mag = math.floor(math.log10(abs(value)))
        decimals = max(0, digits - 1 - mag)
        return f"{value:,.{decimals}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(t: dict[str, Any], met: str) -> str:
    if t.get("met") is True:
        return met
    if t.get("met") is False:
        return "**missed**"
    return "not measured" if t.get("measured") is None else "not judged (quick run)"


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    if not targets:
        return ""
    rows = []
    for t in targets:
        met = _verdict(t, "**met**")
        measured = "-" if t.get("measured") is None else f"{fmt(t['measured'])} {t.get('unit', '')}".strip()
        rows.append([t["name"], t["target"], measured, met, t.get("detail", "")])
    return table(["target", "goal", "measured", "", "why / by how much"], rows)


def machine_line(m: dict[str, Any]) -> str:
    git = m.get("git") or {}
    commit = (git.get("commit") or "?")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    return (
        f"{m.get('cores_logical')} logical cores ({m.get('cpu_model')}), {m.get('memory_gib')} GiB RAM, "
        f"{m.get('os')}, Python {m.get('python')}, Airflow {m.get('airflow')}, "
        f"Task SDK {m.get('task_sdk')}, winexec {m.get('winexec')} at {commit}"
    )


def load_line(load: dict[str, Any] | None) -> str:
    if not load:
        return ""
    before, after = load.get("loadavg_before") or [], load.get("loadavg_after") or []
    return (
        f"load average {before[0] if before else '?'} before, {after[0] if after else '?'} after; "
        f"machine CPU {load.get('cpu_percent_mean')}% busy on average; took {load.get('duration_s')} s"
    )


HEADER = """# Benchmarks

Generated by `bash scripts/bench.sh` (`.venv/bin/python -m benchmarks`; `--only NAME`, `--quick`) from the
JSON files in [`docs/benchmarks/`](benchmarks/); each has a PNG beside it. Do not edit by hand:
run the benchmarks (or `python -m benchmarks --report-only`) to regenerate this page.

Every Windows host here is the project's stand-in (`winexec.sim`): WinRM/PSRP endpoints on
loopback with a real MIT KDC, all on **the same machine** as the Airflow scheduler, api-server and
the tasks. Figures therefore show the executor's own costs plus the sim's, squeezed onto the
machine's cores; they are not a prediction for real Windows hosts, where each host brings its own
CPUs.
"""


def render(out: Path, doc: Path) -> str:
    """Regenerate ``doc`` from every result in ``out``; returns the text."""
    from benchmarks import BENCHMARKS, load

    results = read_results(out)
    parts = [HEADER]
    summary_rows: list[list[Any]] = []
    for name in BENCHMARKS:
        data = results.get(name)
        if data is None:
            continue
        for t in data.get("targets", []):
            summary_rows.append(
                [
                    t["name"],
                    t["target"],
                    "-" if t.get("measured") is None else f"{fmt(t['measured'])} {t.get('unit', '')}",
                    _verdict(t, "met"),
                ]
            )
    if summary_rows:
        parts.append("## Targets at a glance\n\n" + table(["target", "goal", "measured", ""], summary_rows))
    for name in BENCHMARKS:
        data = results.get(name)
        try:
            module = load(name)
        except ImportError:
            continue
        if data is None:
            parts.append(f"## {module.TITLE}\n\n_Not run yet: `python -m benchmarks --only {name}`._")
            continue
        head = [f"## {data.get('title', module.TITLE)}", ""]
        m = data.get("machine") or {}
        mode = "quick (`--quick`)" if data.get("quick") else "full"
        head.append(f"_{m.get('date', '?')}, {mode} run. Machine: {machine_line(m)}._")
        if data.get("load"):
            head.append(f"\n_Noise: {load_line(data['load'])}._")
        if data.get("error"):
            head.append(f"\n**This run failed:** `{data['error']}`\n")
        body = module.markdown(data) if not data.get("error") else ""
        png = out / f"{name}.png"
        if png.exists():
            body += f"\n\n![{name}](benchmarks/{png.name})"
        tt = targets_table(data.get("targets", []))
        if tt:
            body += "\n\n" + tt
        notes = data.get("notes") or []
        if notes:
            body += "\n\n" + "\n".join(f"- {n}" for n in notes)
        parts.append("\n".join(head) + "\n\n" + body.strip())
    text = "\n\n".join(p.strip() for p in parts) + "\n"
    doc.write_text(text)
    return text


def python() -> str:
    return sys.executable

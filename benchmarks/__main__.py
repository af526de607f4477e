"""``python -m benchmarks [--only NAME ...] [--quick] [--out DIR] [--doc FILE] [--report-only]``."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import BENCHMARKS, load
from benchmarks._report import (
    DEFAULT_DOC,
    DEFAULT_OUT,
    Context,
    LoadMonitor,
    have_matplotlib,
    machine,
    render,
    write_result,
)

log = logging.getLogger("benchmarks")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run winexec's benchmarks; write JSON + PNG per benchmark and regenerate the report.",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these (repeat or comma-separate): {', '.join(BENCHMARKS)}",
    )
    p.add_argument("--quick", action="store_true", help="fewer iterations and smaller workloads (minutes)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON and PNG files go")
    p.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="the Markdown report to regenerate")
    p.add_argument("--report-only", action="store_true", help="only regenerate the report from the JSON")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (stacks, logs)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def selected(only: list[str] | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    for n in names:
        load(n)  # raises on an unknown name
    return [n for n in BENCHMARKS if n in names]


def run_one(name: str, ctx: Context, out: Path) -> bool:
    module = load(name)
    log.info("=== %s: %s%s", name, module.TITLE, " (quick)" if ctx.quick else "")
    mon = LoadMonitor()
    ctx.monitor = mon
    data: dict[str, Any] = {"quick": ctx.quick, "machine": machine()}
    t0 = time.monotonic()
    ok = True
    try:
        data.update(module.run(ctx))
    except Exception as e:
        ok = False
        log.error("%s failed: %s", name, e)
        traceback.print_exc()
        data["error"] = f"{type(e).__name__}: {e}"[:2000]
    data["load"] = mon.result()
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    path = write_result(out, name, module.TITLE, data)
    log.info("%s: wrote %s (%.0f s)", name, path, data["elapsed_s"])
    if ok and have_matplotlib():
        try:
            module.plot(data, out / f"{name}.png")
        except Exception as e:
            log.error("%s: plotting failed: %s", name, e)
            traceback.print_exc()
    elif ok:
        log.warning("matplotlib is not installed (pip install 'winexec[bench]'): no PNG for %s", name)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # The benchmarked libraries are chatty at INFO; their warnings still show.
    for noisy in ("winexec", "httpx", "pypsrp", "spnego", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    if not args.report_only:
        names = selected(args.only)
        for name in names:
            ctx = Context(quick=args.quick)
            try:
                if not run_one(name, ctx, args.out):
                    failed.append(name)
            finally:
                if args.keep:
                    log.info("%s: scratch kept in %s", name, ctx.workdir)
                else:
                    shutil.rmtree(ctx.workdir, ignore_errors=True)
    render(args.out, args.doc)
    log.info("report: %s", args.doc)
    if failed:
        log.error("failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

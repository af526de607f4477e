"""Smoke test of the benchmark harness (not of performance: nothing here is timed or judged).

Runs the ticket-layer benchmark with a handful of iterations against a real KDC through the same
entry point as ``bash scripts/bench.sh``, and checks that it writes valid JSON, a PNG when matplotlib is
installed, and a report that shows the figures and the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS, _report, tickets
from benchmarks import __main__ as bench_main


def test_ticket_bench_writes_json_png_and_report(tmp_path: Path) -> None:
    out, doc = tmp_path / "out", tmp_path / "benchmarks.md"
    rc = bench_main.main(["--only", "tickets", "--quick", "--out", str(out), "--doc", str(doc)])
    assert rc == 0
    data = json.loads((out / "tickets.json").read_text())
    assert data["benchmark"] == "tickets" and data["schema"] == _report.SCHEMA and data["quick"] is True
    m = data["machine"]
    for key in ("cores_logical", "memory_bytes", "cpu_model", "python", "airflow", "date"):
        assert m[key], key
    r = data["results"]
    assert r["get_cached"]["n"] > 0 and r["get_cached"]["p50"] > 0
    assert r["renew"]["n"] > 0 and r["renew"]["renewals_counted"] > 0
    assert r["acquire"]["n"] > 0
    if _report.have_matplotlib():
        assert (out / "tickets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = doc.read_text()
    assert "## Ticket layer" in text
    assert m["cpu_model"] in text
    assert "get() cached" in text


def test_report_regenerates_from_json_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _report.write_result(
        out,
        "tickets",
        tickets.TITLE,
        {"quick": True, "machine": _report.machine(), "error": "KDC would not start"},
    )
    rc = bench_main.main(["--report-only", "--out", str(out), "--doc", str(tmp_path / "b.md")])
    assert rc == 0
    text = (tmp_path / "b.md").read_text()
    assert "This run failed" in text and "KDC would not start" in text


def test_only_rejects_unknown_names() -> None:
    assert bench_main.selected(["tickets,scale"]) == ["tickets", "scale"]
    assert bench_main.selected(None) == list(BENCHMARKS)
    with pytest.raises(KeyError):
        bench_main.selected(["nope"])


def test_statistics() -> None:
    s = _report.summary([1.0, 2.0, 3.0, 4.0], scale=1000)
    assert s["n"] == 4 and s["min"] == 1000 and s["max"] == 4000 and s["p50"] == 2500
    assert _report.summary([]) == {"n": 0}

"""The docs say what the code does: generated reference, real error texts, real option names."""

from __future__ import annotations

import re
from pathlib import Path

from winexec.config import OPTIONS_BY_NAME
from winexec.docgen import markdown

#: backticked names in the docs that are Airflow's, not ``[winexec]`` options
AIRFLOW_TERMS = {"execution_timeout", "run_as_user", "executor_config", "base_log_folder"}
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _source() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "winexec").rglob("*.py") if "sim" not in p.parts)


def test_configuration_reference_is_generated_from_the_options() -> None:
    assert (DOCS / "configuration.md").read_text() == markdown(), (
        "run: python -m winexec.docgen docs/configuration.md"
    )


def test_every_troubleshooting_error_text_is_raised_by_the_code() -> None:
    rows = [ln for ln in (DOCS / "troubleshooting.md").read_text().splitlines() if ln.startswith("| `")]
    assert len(rows) >= 20
    source = _source()
    missing = [t for ln in rows if (t := ln.split("`")[1]) not in source]
    assert not missing, missing


def test_option_names_in_the_docs_exist() -> None:
    names: set[str] = set()
    for doc in ("windows-host-setup.md", "security.md", "troubleshooting.md"):
        text = (DOCS / doc).read_text()
        names |= set(re.findall(r"\[winexec\] ([a-z_]+)", text))
        names |= {m for m in re.findall(r"`([a-z]+_[a-z_]+)`", text) if m not in AIRFLOW_TERMS}
    assert names, "the docs mention no options?"
    unknown = sorted(n for n in names if n not in OPTIONS_BY_NAME)
    assert not unknown, unknown

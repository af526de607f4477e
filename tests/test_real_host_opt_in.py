"""The real-host suite (tests/windows/) is opt-in: without its variables it says which to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.windows import real_host

ROOT = Path(__file__).resolve().parent.parent


def test_without_its_variables_every_real_host_test_skips_naming_them() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINEXEC_TEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/windows"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 skipped" in done.stdout, done.stdout[-3000:]
    skips = [ln for ln in done.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert len(skips) == 4, done.stdout[-3000:]
    for line in skips:
        assert all(f"{name}: " in line for name in real_host.REQUIRED), line


def test_the_skip_names_only_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in real_host.REQUIRED:
        monkeypatch.setenv(name, "x")
    monkeypatch.delenv("WINEXEC_TEST_API_URL", raising=False)
    monkeypatch.setenv("WINEXEC_TEST_SECOND_HOP", r"\\fs01\share\x.txt")
    with pytest.raises(pytest.skip.Exception, match="set WINEXEC_TEST_API_URL ") as skipped:
        real_host.skip_unless(real_host.DAG_VARIABLES)
    assert "WINEXEC_TEST_SECOND_HOP" not in str(skipped.value)
    real_host.skip_unless(list(real_host.REQUIRED))  # all there: no skip

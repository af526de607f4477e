"""Shared fixtures: a real MIT KDC on loopback per test (or per module where cheap)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from winexec.sim.kdc import Realm


@pytest.fixture
def realm(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Realm]:
    """A fresh realm with default lifetimes; MIT Kerberos in this process points at it."""
    with Realm(workdir=tmp_path_factory.mktemp("realm")) as r:
        for k, v in r.env().items():
            monkeypatch.setenv(k, v)
        yield r


@pytest.fixture
def short_realm(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Realm]:
    """60 s tickets renewable for 180 s: renewal in seconds, not hours."""
    with Realm(workdir=tmp_path_factory.mktemp("realm"), ticket_lifetime=60, renew_lifetime=180) as r:
        for k, v in r.env().items():
            monkeypatch.setenv(k, v)
        yield r


def pytest_sessionstart(session: pytest.Session) -> None:
    # Never let a test touch the developer's own ticket cache, or Airflow home: the executor runs
    # inside the test process in unit and fault tests, and writes Airflow's audit log there.
    os.environ.setdefault("KRB5CCNAME", "MEMORY:winexec-tests")
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="winexec-tests-airflow-"))

"""The package's import contract and the test realm."""

from __future__ import annotations

import os
import subprocess
import sys

from winexec import protocol
from winexec.sim.kdc import Realm


def _modules_after(stmt: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; {stmt}; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_import_winexec_does_not_import_airflow_core() -> None:
    mods = _modules_after("import winexec, winexec.protocol")
    assert "airflow.executors" not in mods
    assert "airflow.models" not in mods
    assert not any(m.startswith("winexec.executor") for m in mods)


def test_executor_resolves_lazily() -> None:
    mods = _modules_after("import winexec; winexec.WindowsKerberosExecutor")
    assert "winexec.executor" in mods
    assert "airflow.executors.base_executor" in mods


def test_unknown_attribute_is_attribute_error() -> None:
    import winexec

    try:
        winexec.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_protocol_round_trip_is_ascii() -> None:
    msg = protocol.Exit(run_id="r1", state="failed", code=1, reason="caf\u00e9 \u2603 $(rm -rf) `x`; 'q'")
    line = msg.to_line()
    assert line.isascii() and line.endswith("\n") and line.count("\n") == 1
    back = protocol.parse_line(line)
    assert back == msg


def test_protocol_start_repr_hides_token() -> None:
    start = protocol.Start(workload={"token": "s3cr3t-token", "ti": {"id": "abc"}}, run_id="r")
    assert "s3cr3t" not in repr(start)


def test_protocol_rejects_garbage() -> None:
    import pytest

    for bad in [
        "not json",
        "[1]",
        '{"v": 99, "type": "exit"}',
        '{"v": 1, "type": "nope"}',
        '{"v":1,"type":"exit"}',
    ]:
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_line(bad)


def test_realm_issues_forwardable_renewable_short_tickets(short_realm: Realm) -> None:
    kt = short_realm.add_principal("alice")
    assert oct(kt.stat().st_mode & 0o777) == "0o600"
    env = {**os.environ, **short_realm.env(), "KRB5CCNAME": f"FILE:{short_realm.workdir}/cc-alice"}
    subprocess.run(["kinit", "-k", "-t", str(kt), "-f", "-r", "180s", "alice"], env=env, check=True)
    klist = subprocess.run(["klist", "-f"], env=env, capture_output=True, text=True, check=True).stdout
    assert f"krbtgt/{short_realm.name}@{short_realm.name}" in klist
    flags = klist.split("Flags: ")[1].split()[0]
    assert "F" in flags and "R" in flags


def test_realm_leaves_no_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = Realm(workdir=tmp_path / "r").start()
    pid = r._proc.pid  # type: ignore[union-attr]
    r.stop()
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_two_realms_run_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Realm(workdir=tmp_path / "a") as a, Realm(name="OTHER.TEST", workdir=tmp_path / "b") as b:
        assert a.kdc_port != b.kdc_port
        assert a.kdc_running and b.kdc_running

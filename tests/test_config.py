"""``[winexec]`` settings: parsing, validation (every error names its option), provider info."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from winexec import config
from winexec.config import HostSpec, WinexecConfigError, load, mapping_getter, parse_host, parse_hosts


def _load(tmp_path: Path, **values: Any) -> config.Settings:
    kt = tmp_path / "svc.keytab"
    kt.write_bytes(b"\x05\x02")
    base: dict[str, Any] = {
        "hosts": "http://win01.winexec.test:5985?slots=2&address=127.0.0.1",
        "default_principal": "svc@WINEXEC.TEST",
        "default_keytab": str(kt),
    }
    base.update(values)
    return load(mapping_getter(base))


def _problems(tmp_path: Path, **values: Any) -> list[str]:
    with pytest.raises(WinexecConfigError) as info:
        _load(tmp_path, **values)
    return info.value.problems


# -- hosts ----------------------------------------------------------------------------------------
def test_bare_host_means_http_5985() -> None:
    assert parse_host("win01.corp.example") == HostSpec("win01.corp.example", "http", 5985, 4, "")


def test_https_default_port_and_parameters() -> None:
    h = parse_host("https://WIN02.corp.example?slots=8&address=10.0.0.2", default_slots=4)
    assert (h.name, h.scheme, h.port, h.slots, h.address, h.ssl) == (
        "win02.corp.example",
        "https",
        5986,
        8,
        "10.0.0.2",
        True,
    )
    assert h.connect_address == "10.0.0.2"


def test_a_host_entry_names_its_winrm_shell_quotas() -> None:
    h = parse_host("http://win01.t?max_shells_per_user=30&max_users=10")
    assert (h.max_shells_per_user, h.max_users) == (30, 10)
    assert (parse_host("win01.t").max_shells_per_user, parse_host("win01.t").max_users) == (None, None)
    assert (parse_host("win01.t").shells_per_user, parse_host("win01.t").users) == (25, 5)


def test_connect_address_override_keeps_name_for_spn() -> None:
    h = parse_host("http://win01.winexec.test:15985?address=127.0.0.1")
    assert h.name == "win01.winexec.test" and h.connect_address == "127.0.0.1" and h.port == 15985


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("ftp://win01", "scheme"),
        ("http://win01:99999", "port"),
        ("http://win01?slots=0", "slots"),
        ("http://win01?slots=x", "slots"),
        ("http://win01?color=red", "unknown parameter"),
        ("http://win01/wsman", "only scheme"),
        ("http://bad_name!", "host name"),
        ("http://win01?address=", "address"),
        ("http://win01?max_shells_per_user=1", "max_shells_per_user must be at least 2"),
        ("http://win01?max_users=none", "max_users must be a whole number"),
    ],
)
def test_bad_host_entries(entry: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_host(entry)


def test_host_list_comma_newline_comments_and_duplicates() -> None:
    hosts, problems = parse_hosts("a.example, b.example\n# c.example\n\nhttps://A.example:5986\n")
    assert [h.name for h in hosts] == ["a.example", "b.example"]
    assert len(problems) == 1 and "listed twice" in problems[0]


# -- validation -----------------------------------------------------------------------------------
def test_valid_minimal_settings(tmp_path: Path) -> None:
    s = _load(tmp_path)
    assert s.hosts[0].slots == 2 and s.io_workers == 16 and s.message_encryption is True
    assert s.cert_validation is True
    assert s.encryption_for(s.hosts[0]) == "always"
    assert s.keytab_for("svc@WINEXEC.TEST") == str(tmp_path / "svc.keytab")
    assert s.realm == "WINEXEC.TEST"


def test_every_problem_reported_once_each_naming_its_option(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        hosts="ftp://x",
        io_workers="many",
        heartbeat_interval="0",
        missed_heartbeats="0",
        message_encryption="maybe",
        default_principal="nobody",
        queue_principals="etl",
        read_timeout="10",
        operation_timeout="20",
    )
    text = "\n".join(problems)
    for option in (
        "hosts",
        "io_workers",
        "heartbeat_interval",
        "missed_heartbeats",
        "message_encryption",
        "default_principal",
        "queue_principals",
        "read_timeout",
    ):
        assert f"[winexec] {option}:" in text, option
    assert all(p.startswith("[winexec] ") for p in problems)


def test_error_is_an_airflow_config_exception(tmp_path: Path) -> None:
    from airflow.exceptions import AirflowConfigException

    with pytest.raises(AirflowConfigException, match="io_workers"):
        _load(tmp_path, io_workers="-1")


def test_no_hosts_is_an_error(tmp_path: Path) -> None:
    (p,) = _problems(tmp_path, hosts="")
    assert p.startswith("[winexec] hosts:") and "no Windows host" in p


def test_unencrypted_http_refused_unless_allowed(tmp_path: Path) -> None:
    (p,) = _problems(tmp_path, message_encryption="false")
    assert p.startswith("[winexec] message_encryption:") and "allow_unencrypted_http" in p
    s = _load(tmp_path, message_encryption="false", allow_unencrypted_http="true")
    assert s.encryption_for(s.hosts[0]) == "never"


def test_https_hosts_may_drop_message_encryption(tmp_path: Path) -> None:
    s = _load(tmp_path, hosts="https://win01.corp.example", message_encryption="false")
    assert s.encryption_for(s.hosts[0]) == "auto"


def test_cert_validation_bool_or_ca_bundle(tmp_path: Path) -> None:
    assert _load(tmp_path, cert_validation="false").cert_validation is False
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert _load(tmp_path, cert_validation=str(ca)).cert_validation == str(ca)
    (p,) = _problems(tmp_path, cert_validation=str(tmp_path / "missing.pem"))
    assert p.startswith("[winexec] cert_validation:")


def test_missing_keytabs_named(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        queue_principals="etl=etl@WINEXEC.TEST",
        keytabs=f"other@WINEXEC.TEST={tmp_path / 'nope.keytab'}",
    )
    text = "\n".join(problems)
    assert "etl@WINEXEC.TEST" in text and "other@WINEXEC.TEST" in text
    assert "[winexec] keytabs:" in text


def test_keytab_dir_and_grants(tmp_path: Path) -> None:
    kdir = tmp_path / "kt"
    kdir.mkdir()
    for name in ("etl", "alice"):
        (kdir / f"{name}.keytab").write_bytes(b"x")
        (kdir / f"{name}.keytab").chmod(0o600)
    s = _load(
        tmp_path,
        keytab_dir=str(kdir),
        pool_principals="sql=etl@WINEXEC.TEST",
        grants="etl@WINEXEC.TEST: dag_id=etl_* default\n  alice@WINEXEC.TEST: tag=sql delegate  # a comment",
    )
    assert s.keytab_for("etl@WINEXEC.TEST") == str(kdir / "etl.keytab")
    assert [(g.principal, g.default, g.delegate) for g in s.grants] == [
        ("etl@WINEXEC.TEST", True, False),
        ("alice@WINEXEC.TEST", False, True),
    ]
    assert s.delegated_anywhere("alice@WINEXEC.TEST") and not s.delegated_anywhere("etl@WINEXEC.TEST")
    # a granted principal is the administrator's: its keytab is checked at start-up
    (p,) = _problems(tmp_path, keytab_dir=str(kdir), grants="bob@WINEXEC.TEST: dag_id=*")
    assert p.startswith("[winexec] keytab_dir:") and "bob@WINEXEC.TEST" in p
    (p,) = _problems(tmp_path, grants="bob@WINEXEC.TEST dag_id=*")
    assert p.startswith("[winexec] grants: rule 1") and "write principal@REALM: selector" in p


@pytest.mark.parametrize("retired", ["allowed_principals", "delegate", "delegate_overrides"])
def test_options_replaced_by_grants_stop_the_start(tmp_path: Path, retired: str) -> None:
    (p,) = _problems(tmp_path, **{retired: "svc@WINEXEC.TEST=false" if retired.endswith("s") else "True"})
    assert p.startswith(f"[winexec] {retired}: no longer an option:") and "grants" in p


def test_hosts_file_is_merged(tmp_path: Path) -> None:
    f = tmp_path / "hosts.txt"
    f.write_text("# more\nwin02.winexec.test\n")
    s = _load(tmp_path, hosts_file=str(f))
    assert [h.name for h in s.hosts] == ["win01.winexec.test", "win02.winexec.test"]
    (p,) = _problems(tmp_path, hosts_file=str(tmp_path / "none.txt"))
    assert p.startswith("[winexec] hosts_file:")


def test_reread_hosts_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _load(tmp_path)
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[winexec]\nhosts = win05.winexec.test, win06.winexec.test?slots=1\n")
    monkeypatch.delenv("AIRFLOW__WINEXEC__HOSTS", raising=False)
    hosts, problems = config.reread_hosts(s, str(cfg))
    assert not problems and [h.name for h in hosts] == ["win05.winexec.test", "win06.winexec.test"]
    monkeypatch.setenv("AIRFLOW__WINEXEC__HOSTS", "win07.winexec.test")
    hosts, _ = config.reread_hosts(s, str(cfg))
    assert [h.name for h in hosts] == ["win07.winexec.test"]
    monkeypatch.setenv("AIRFLOW__WINEXEC__HOSTS", "ftp://bad")
    hosts, problems = config.reread_hosts(s, str(cfg))
    assert problems and problems[0].startswith("[winexec] hosts:")


def test_reads_through_airflow_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kt = tmp_path / "svc.keytab"
    kt.write_bytes(b"x")
    monkeypatch.setenv("AIRFLOW__WINEXEC__HOSTS", "win01.winexec.test?slots=3")
    monkeypatch.setenv("AIRFLOW__WINEXEC__DEFAULT_PRINCIPAL", "svc@WINEXEC.TEST")
    monkeypatch.setenv("AIRFLOW__WINEXEC__DEFAULT_KEYTAB", str(kt))
    monkeypatch.setenv("AIRFLOW__WINEXEC__IO_WORKERS", "7")
    s = load()
    assert s.hosts[0].slots == 3 and s.io_workers == 7 and s.missed_heartbeats == 6


# -- provider info --------------------------------------------------------------------------------
def test_provider_info_config_comes_from_the_option_list() -> None:
    import json
    import os

    import airflow
    import jsonschema

    from winexec.provider import get_provider_info

    info = get_provider_info()
    options = info["config"]["winexec"]["options"]
    assert list(options) == [o.name for o in config.OPTIONS]
    for o in config.OPTIONS:
        assert options[o.name]["description"] and options[o.name]["type"] == o.type
    schema_path = os.path.join(os.path.dirname(airflow.__file__), "provider_info.schema.json")
    with open(schema_path) as f:
        jsonschema.validate(info, json.load(f))


def test_every_declared_default_parses(tmp_path: Path) -> None:
    # a default that does not validate would break every installation that leaves it unset
    s = _load(tmp_path)
    for o in config.OPTIONS:
        assert hasattr(s, o.name)


def test_a_host_entry_names_the_queues_it_serves() -> None:
    h = parse_host("http://win03.t?queues=ssis+etl")
    assert h.queues == frozenset({"ssis", "etl"})
    assert h.serves("ssis") and h.serves("etl") and not h.serves("default") and not h.serves(None)
    anywhere = parse_host("http://win01.t")
    assert anywhere.queues == frozenset() and anywhere.serves("ssis") and anywhere.serves(None)
    with pytest.raises(ValueError, match=r"queues= is empty \(write e.g. queues=ssis\+default"):
        parse_host("http://win01.t?queues=")

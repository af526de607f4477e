"""A host's WinRM shell quotas, read over WS-Man as Windows allows it: by Administrators only."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests import sim_fixtures
from winexec import transport
from winexec.config import HostSpec, Settings, parse_host
from winexec.quotas import QuotaReader
from winexec.sim import Quotas, SimHost
from winexec.sim.kdc import Realm
from winexec.tickets import TicketStore

SIM_PRINCIPALS = ("airflow", "alice")
host, realm, sim = sim_fixtures.host, sim_fixtures.realm, sim_fixtures.sim


@pytest.fixture
def tickets(realm: Realm) -> Iterator[TicketStore]:
    store = TicketStore(
        {realm.principal(p): str(realm.keytab_path(realm.principal(p))) for p in SIM_PRINCIPALS}
    )
    store.start()
    yield store
    store.close()


@pytest.fixture
def admin(host: SimHost) -> Iterator[SimHost]:
    host.administrators.add("airflow")
    yield host
    host.administrators.clear()
    host.quotas = Quotas()


def _entry(host: SimHost) -> str:
    """The host as an entry that does not say its quotas (``host_entry`` would write the stand-in's)."""
    return f"http://{host.name}:{host.http_port}?slots=4&address={host.address}"


def _settings(host: SimHost, realm: Realm, principal: str) -> tuple[HostSpec, Settings]:
    spec = parse_host(_entry(host))
    return spec, Settings(
        hosts=(spec,), default_principal=realm.principal(principal), python=sys.executable, connect_timeout=5
    )


def test_a_principal_that_is_no_administrator_may_not_read_them(
    host: SimHost, realm: Realm, tickets: TicketStore
) -> None:
    spec, settings = _settings(host, realm, "alice")
    with transport.open_channel(settings, spec, realm.principal("alice"), False, tickets) as channel:
        with pytest.raises(transport.QuotasUnreadable, match="may not read them"):
            channel.quotas()


def test_an_administrator_reads_the_smaller_of_winrs_and_the_endpoints_own(
    admin: SimHost, realm: Realm, tickets: TicketStore
) -> None:
    admin.quotas.MaxShellsPerUser = 40
    spec, settings = _settings(admin, realm, "airflow")
    with transport.open_channel(settings, spec, realm.principal("airflow"), False, tickets) as channel:
        got = channel.quotas()
    assert got == {
        "MaxShellsPerUser": 40,
        "MaxConcurrentUsers": 5,
        "MaxProcessesPerShell": 15,
        "MaxMemoryPerShellMB": 1024,
    }


def test_placement_uses_what_it_read_once_and_what_the_entry_says_first(
    admin: SimHost, realm: Realm, tickets: TicketStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.quotas.MaxShellsPerUser, admin.quotas.MaxConcurrentUsers = 40, 8
    spec, settings = _settings(admin, realm, "airflow")
    reader = QuotaReader(settings, tickets)
    (filled,) = reader.apply((spec,))
    assert (filled.shells_per_user, filled.users) == (40, 8)
    given = parse_host(_entry(admin) + "&max_users=3")
    (kept,) = reader.apply((given,))
    assert (kept.shells_per_user, kept.users) == (40, 3)  # the entry's word wins over the reading

    opened: list[str] = []
    real = transport.open_channel
    monkeypatch.setattr(transport, "open_channel", lambda *a: opened.append(a[1].name) or real(*a))
    refused = QuotaReader(_settings(admin, realm, "alice")[1], tickets)
    for _ in range(3):
        (default,) = refused.apply((spec,))
        assert (default.shells_per_user, default.users) == (25, 5)  # the strictest defaults
    assert opened == [admin.name]  # refused once: not asked again

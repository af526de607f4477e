"""winexec.tickets against a real MIT KDC on loopback (winexec.sim.kdc).

Timing-based tests use realms with 10-20 s tickets so renewal, the end of the renewable
lifetime and outages happen within seconds; the whole file runs in well under two minutes.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import krb5
import pytest
import spnego

from winexec import tickets
from winexec.sim.kdc import Realm, free_port
from winexec.tickets import (
    ClockSkewError,
    KdcUnreachableError,
    KeytabHeldError,
    KeytabMissingError,
    KeytabPermissionsError,
    KeytabStaleError,
    KeytabUnreadableError,
    PrincipalNotConfiguredError,
    PrincipalNotInKeytabError,
    PrincipalUnknownError,
    RealmUnknownError,
    StoreClosedError,
    TicketError,
    TicketLifetimeError,
    TicketStore,
    error_from_krb5,
    is_transient,
)

MakeRealm = Callable[[int, int], Realm]


@pytest.fixture
def make_realm(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MakeRealm]:
    """A realm with the given ticket/renewable lifetimes (seconds); this process points at it."""
    made: list[Realm] = []

    def make(ticket_lifetime: int, renew_lifetime: int) -> Realm:
        r = Realm(
            workdir=tmp_path_factory.mktemp("realm"),
            ticket_lifetime=ticket_lifetime,
            renew_lifetime=renew_lifetime,
        ).start()
        made.append(r)
        for k, v in r.env().items():
            monkeypatch.setenv(k, v)
        return r

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def stores() -> Iterator[list[TicketStore]]:
    """Stores a test makes are closed even when it fails, so no renewal thread outlives it."""
    made: list[TicketStore] = []
    yield made
    for s in made:
        s.close()


@dataclass(frozen=True)
class Tgt:
    client: str
    authtime: int
    starttime: int
    endtime: int
    renew_till: int
    flags: krb5.TicketFlags


def read_tgts(ccache: str) -> list[Tgt]:
    """Every TGT in ``ccache``, read with krb5 directly (independently of winexec.tickets)."""
    ctx = krb5.init_context()
    cache = krb5.cc_resolve(ctx, ccache.encode())
    out = []
    for c in cache:
        if c.server.components and c.server.components[0] == b"krbtgt":
            t = c.times
            client = krb5.unparse_name_flags(ctx, c.client).decode()
            out.append(Tgt(client, t.authtime, t.starttime, t.endtime, t.renew_till, c.ticket_flags))
    return out


def read_tgt(ccache: str) -> Tgt:
    tgts = read_tgts(ccache)
    assert len(tgts) == 1, tgts
    return tgts[0]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def default_ccache_path() -> Path:
    name = os.environ["KRB5CCNAME"]
    assert name.startswith("FILE:")
    return Path(name.removeprefix("FILE:"))


# -- private caches ----------------------------------------------------------------------------
def test_each_principal_gets_its_own_private_forwardable_renewable_cache(
    realm: Realm, stores: list[TicketStore]
) -> None:
    alice, bob = realm.principal("alice"), realm.principal("bob")
    store = TicketStore({"alice": realm.add_principal("alice"), bob: realm.add_principal("bob")})
    stores.append(store)
    store.start()

    ca, cb = store.get("alice"), store.get(bob)
    assert (ca.principal, cb.principal) == (alice, bob)
    assert ca.ccache.startswith("FILE:") and cb.ccache.startswith("FILE:")
    pa, pb = Path(ca.ccache[5:]), Path(cb.ccache[5:])
    assert pa != pb and pa.parent != pb.parent
    for path in (pa, pb):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700

    for cred, principal, other in ((ca, alice, bob), (cb, bob, alice)):
        tgts = read_tgts(cred.ccache)
        assert [t.client for t in tgts] == [principal]
        flags = tgts[0].flags
        assert flags & krb5.TicketFlags.forwardable, flags
        assert flags & krb5.TicketFlags.renewable, flags
        assert tgts[0].renew_till > tgts[0].endtime
        # The same, independently, through MIT's own klist.
        out = subprocess.run(
            ["klist", "-f", "-c", cred.ccache], capture_output=True, text=True, check=True
        ).stdout
        assert f"Default principal: {principal}" in out
        assert other not in out
        flag_line = next(line for line in out.splitlines() if "Flags:" in line)
        assert "F" in flag_line.split("Flags:")[1] and "R" in flag_line.split("Flags:")[1]
        # What pypsrp hands to spnego.client as ``username``.
        assert cred.spnego == spnego.KerberosCCache(ccache=cred.ccache, principal=principal)

    # The process default cache was never written.
    assert not default_ccache_path().exists()
    assert all(s.last_error is None and s.remaining() > 0 for s in store.statuses())

    started = time.monotonic()
    store.close()
    assert time.monotonic() - started < 2
    assert not pa.exists() and not pb.exists()
    with pytest.raises(StoreClosedError):
        store.get("alice")


def test_many_threads_first_get_acquires_once_per_principal(realm: Realm, stores: list[TicketStore]) -> None:
    names = [f"user{i}" for i in range(6)]
    store = TicketStore({n: realm.add_principal(n) for n in names})
    stores.append(store)
    barrier = threading.Barrier(24)
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        name = names[i % len(names)]
        barrier.wait()
        try:
            for _ in range(20):
                results.append((name, store.get(name).ccache))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert store.acquisitions == len(names)  # a lock per principal: one KDC trip each
    by_name: dict[str, set[str]] = {}
    for name, cc in results:
        by_name.setdefault(name, set()).add(cc)
    assert all(len(ccs) == 1 for ccs in by_name.values())
    for name, ccs in by_name.items():
        assert [t.client for t in read_tgts(next(iter(ccs)))] == [realm.principal(name)]
    with pytest.raises(PrincipalNotConfiguredError, match="nobody"):
        store.get("nobody")


# -- renewal under load ------------------------------------------------------------------------
def test_load_never_hands_out_a_short_ticket_and_renews_in_background(
    make_realm: MakeRealm, stores: list[TicketStore]
) -> None:
    margin = 5.0
    realm = make_realm(20, 40)  # renewable for 40 s: renewals and fresh TGTs both happen under load
    names = ["ann", "ben", "cid"]
    store = TicketStore(
        {n: realm.add_principal(n) for n in names}, safety_margin=margin, retry_initial=0.2, retry_max=1
    )
    stores.append(store)
    store.start()

    stop = threading.Event()
    worst: list[float] = []
    short: list[tuple[str, float]] = []
    errors: list[BaseException] = []
    handed = [0]
    expired_seen: list[tuple[str, float]] = []

    def caller(name: str) -> None:
        rnd = random.Random(name)
        low = 1e9
        try:
            while not stop.is_set():
                cred = store.get(name)
                at = time.time()
                remaining = read_tgt(cred.ccache).endtime - at
                low = min(low, remaining)
                if remaining < margin:
                    short.append((name, remaining))
                handed[0] += 1
                time.sleep(rnd.uniform(0.0, 0.05))
        except BaseException as exc:
            errors.append(exc)
        worst.append(low)

    def monitor() -> None:
        while not stop.is_set():
            now = time.time()
            for s in store.statuses():
                if s.expires_at is None or s.expires_at <= now:
                    expired_seen.append((s.principal, now))
            time.sleep(0.2)

    threads = [threading.Thread(target=caller, args=(n,)) for n in names for _ in range(2)]
    threads.append(threading.Thread(target=monitor))
    for t in threads:
        t.start()
    time.sleep(45)
    stop.set()
    for t in threads:
        t.join(30)

    assert not errors, errors
    assert handed[0] > 500
    assert not short, f"handed out TGTs with less than {margin} s left: {short[:5]}"
    assert min(worst) >= margin
    # 45 s of 20 s tickets renewable for 40 s: every principal was renewed and re-acquired, by
    # the thread, before expiry.
    assert store.renewals >= 2 * len(names), store.counters()
    assert store.acquisitions >= 2 * len(names), store.counters()
    assert store.sync_refreshes == 0, store.counters()  # no get() ever found the TGT too short
    assert not expired_seen, expired_seen[:5]
    assert store.renewal_failures == 0
    for s in store.statuses():
        assert s.last_error is None
        assert s.last_renewal is not None and time.time() - s.last_renewal < 20


def test_fresh_tgt_from_keytab_once_renewable_lifetime_is_spent(
    make_realm: MakeRealm, stores: list[TicketStore]
) -> None:
    realm = make_realm(10, 22)
    store = TicketStore({"dan": realm.add_principal("dan")}, safety_margin=3, retry_initial=0.2, retry_max=1)
    stores.append(store)
    store.start()
    ccache = store.get("dan").ccache
    first = read_tgt(ccache)
    seen = [first]
    deadline = time.time() + 30
    while time.time() < deadline:
        t = read_tgt(ccache)
        assert t.endtime > time.time(), "the TGT in the cache expired"
        if t != seen[-1]:
            seen.append(t)
        if t.authtime != first.authtime:
            break
        time.sleep(0.2)
    renewed = [t for t in seen if t.authtime == first.authtime and t.starttime != first.starttime]
    fresh = [t for t in seen if t.authtime != first.authtime]
    assert renewed, "the TGT was never renewed before the fresh one"
    assert fresh, f"no fresh TGT within 30 s: {seen}"
    new, last_renewed = fresh[0], renewed[-1]
    assert new.authtime > first.authtime
    assert new.renew_till > first.renew_till  # a new renewable lifetime, not a renewal
    assert last_renewed.renew_till == first.renew_till
    assert new.flags & krb5.TicketFlags.forwardable and new.flags & krb5.TicketFlags.renewable
    assert store.acquisitions >= 2 and store.renewals >= 1


def test_tickets_shorter_than_the_margin_still_work(make_realm: MakeRealm, stores: list[TicketStore]) -> None:
    """A realm whose policy issues tickets shorter than the 300 s default margin: the margin is cut
    to a quarter of the lifetime instead of refusing every ticket (the fault suite runs tasks
    through such a realm, tests/test_faults.py::test_tickets_expiring_during_a_long_task)."""
    realm = make_realm(12, 120)
    store = TicketStore({"kim": realm.add_principal("kim")})
    stores.append(store)
    cred = store.get("kim")  # was: TicketLifetimeError ("the KDC issues 12 s tickets but 300 s ...")
    assert read_tgt(cred.ccache).endtime - time.time() >= 3 - 0.5


def test_get_refreshes_synchronously_for_min_lifetime(
    make_realm: MakeRealm, stores: list[TicketStore]
) -> None:
    realm = make_realm(10, 120)
    store = TicketStore({"hal": realm.add_principal("hal")}, safety_margin=2)  # no start(): no thread
    stores.append(store)
    first = store.get("hal")
    time.sleep(3)
    assert read_tgt(first.ccache).endtime - time.time() < 8
    cred = store.get("hal", min_lifetime=8)
    tgt = read_tgt(cred.ccache)
    assert tgt.endtime - time.time() >= 8
    assert tgt.authtime == read_tgt(first.ccache).authtime  # renewed, not re-acquired
    assert (store.renewals, store.sync_refreshes) == (1, 2)
    with pytest.raises(TicketLifetimeError, match="10 s tickets"):
        store.get("hal", min_lifetime=3600)


# -- outages and partial failures --------------------------------------------------------------
def test_kdc_outage_is_retried_reported_and_recovered_from(
    make_realm: MakeRealm, stores: list[TicketStore], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="winexec.tickets")
    realm = make_realm(10, 120)
    store = TicketStore({"eve": realm.add_principal("eve")}, safety_margin=3, retry_initial=0.2, retry_max=1)
    stores.append(store)
    store.start()
    realm.stop_kdc()

    wait_for(lambda: store.renewal_failures >= 3, 15, "three failed renewals")
    status = store.status("eve")
    assert status.consecutive_failures >= 3
    assert status.last_error is not None and "KDC unreachable" in status.last_error
    assert "eve@WINEXEC.TEST" in status.last_error
    assert any("KDC unreachable" in r.getMessage() and "eve@" in r.getMessage() for r in caplog.records)
    assert store._thread is not None and store._thread.is_alive()

    # Once what is left is under the margin (3 s, cut to a quarter of the 10 s lifetime), get()
    # cannot hand it out and says why.
    wait_for(lambda: store.status("eve").remaining() < 2.4, 15, "the TGT to run under the margin")
    with pytest.raises(KdcUnreachableError) as info:
        store.get("eve")
    assert is_transient(info.value)

    refreshed = store.renewals + store.acquisitions
    realm.start_kdc()
    wait_for(lambda: store.status("eve").last_error is None, 10, "recovery after the KDC is back")
    assert store.status("eve").consecutive_failures == 0
    assert store.get("eve").remaining() >= 3
    assert store.renewals + store.acquisitions > refreshed


def test_one_principals_failure_does_not_stop_the_others(
    make_realm: MakeRealm, stores: list[TicketStore]
) -> None:
    realm = make_realm(10, 120)
    fay, gus = realm.add_principal("fay"), realm.add_principal("gus")
    realm.kadmin('modprinc -maxrenewlife "0 seconds" gus')  # gus refreshes from its keytab only
    store = TicketStore(
        {"fay": fay, "gus": gus},
        safety_margin=3,
        retry_initial=0.2,
        retry_max=1,
    )
    stores.append(store)
    store.start()
    gus_tgt = read_tgt(store.get("gus").ccache)
    assert gus_tgt.renew_till <= gus_tgt.endtime  # the KDC grants gus no renewable lifetime
    realm.kadmin("cpw -randkey gus")  # gus's keytab is stale from now on
    renewals = store.renewals
    wait_for(lambda: store.status("gus").consecutive_failures >= 1, 15, "gus to fail")
    wait_for(lambda: store.renewals >= renewals + 2, 15, "fay to keep renewing")
    assert store.status("fay").last_error is None and store.status("fay").consecutive_failures == 0
    assert "gus@WINEXEC.TEST" in (store.status("gus").last_error or "")
    assert "export a new keytab" in (store.status("gus").last_error or "")
    assert store._thread is not None and store._thread.is_alive()
    assert store.get("fay").remaining() >= 3


def preauth_failures(realm: Realm, principal: str) -> int:
    """AS-REQs the KDC refused for ``principal``'s key (what Active Directory counts toward lockout)."""
    log = (realm.workdir / "kdc.log").read_text(errors="replace")
    return sum(1 for line in log.splitlines() if f"PREAUTH_FAILED: {principal}@" in line)


def test_a_refused_keytab_is_tried_once_per_change_of_the_file(
    make_realm: MakeRealm, stores: list[TicketStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account's password changed after its keytab was exported: the KDC refuses the key.
    Through ten compressed minutes (a 1 s backoff cap standing for the 60 s one) the store asks
    the KDC once, says why and what to do; a replaced file is tried once more, a good one works."""
    monkeypatch.setattr(tickets, "KEYTAB_CHECK", 0.2)
    realm = make_realm(10, 120)
    keytab = realm.add_principal("hal")
    realm.kadmin("cpw -randkey hal")  # the key version the keytab holds is behind now
    store = TicketStore({"hal": keytab}, safety_margin=3, retry_initial=0.2, retry_max=1)
    stores.append(store)
    with pytest.raises(KeytabStaleError) as info:
        store.start()
    assert "export a new keytab" in str(info.value) and "kvno 2" in str(info.value), info.value
    assert preauth_failures(realm, "hal") == 1

    time.sleep(10)  # ten "minutes" of background retries, and launches asking for the ticket
    for _ in range(5):
        with pytest.raises(KeytabHeldError, match=r"not tried again until .* changes") as held:
            store.get("hal")
    assert "lockout" in str(held.value) and "export a new keytab" in str(held.value)
    assert preauth_failures(realm, "hal") == 1
    assert store.renewal_failures == 1

    stale = tmp_path / "stale.keytab"  # an operator copies the same stale file in again
    shutil.copy(keytab, stale)
    os.replace(stale, keytab)
    wait_for(lambda: preauth_failures(realm, "hal") == 2, 10, "the replaced keytab to be tried")
    time.sleep(3)
    assert preauth_failures(realm, "hal") == 2

    fresh = tmp_path / "fresh.keytab"  # a new export: a new key, kvno 4, that the KDC has
    realm.kadmin(f"ktadd -k {fresh} hal")
    fresh.chmod(0o600)
    os.replace(fresh, keytab)
    wait_for(lambda: store.status("hal").last_error is None, 10, "the new keytab to be used")
    assert store.get("hal").remaining() > 3
    assert preauth_failures(realm, "hal") == 2


# -- clear errors ------------------------------------------------------------------------------
def test_missing_keytab(realm: Realm, tmp_path: Path) -> None:
    path = tmp_path / "absent.keytab"
    with pytest.raises(KeytabMissingError) as info:
        TicketStore({"alice": path})
    assert "alice@WINEXEC.TEST" in str(info.value) and str(path) in str(info.value)
    assert not info.value.transient


def test_unreadable_keytab(realm: Realm, tmp_path: Path) -> None:
    # Tests run as root, for whom chmod 000 changes nothing, so "unreadable" is shown with the
    # two cases root hits too: a directory where the keytab should be, and a file that is no keytab.
    with pytest.raises(KeytabUnreadableError, match="not a regular file"):
        TicketStore({"alice": tmp_path})
    junk = tmp_path / "junk.keytab"
    junk.write_bytes(b"this is not a keytab at all")
    junk.chmod(0o600)
    with pytest.raises(KeytabUnreadableError) as info:
        TicketStore({"alice": junk})
    assert str(junk) in str(info.value) and "alice@WINEXEC.TEST" in str(info.value)
    assert "cannot be read as a keytab" in str(info.value)


def test_principal_not_in_keytab(realm: Realm) -> None:
    bob_keytab = realm.add_principal("bob")
    with pytest.raises(PrincipalNotInKeytabError) as info:
        TicketStore({"alice": bob_keytab})
    msg = str(info.value)
    assert "alice@WINEXEC.TEST" in msg and str(bob_keytab) in msg and "bob@WINEXEC.TEST" in msg


def test_group_readable_keytab_refused_or_allowed_loudly(
    realm: Realm, stores: list[TicketStore], caplog: pytest.LogCaptureFixture
) -> None:
    keytab = realm.add_principal("alice")
    keytab.chmod(0o640)
    with pytest.raises(KeytabPermissionsError) as info:
        TicketStore({"alice": keytab})
    assert f"chmod 600 {keytab}" in str(info.value) and "alice@WINEXEC.TEST" in str(info.value)

    with caplog.at_level(logging.WARNING, logger="winexec.tickets"):
        store = TicketStore({"alice": keytab}, allow_loose_keytab_permissions=True)
    stores.append(store)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(keytab) in r.getMessage() and "chmod 600" in r.getMessage() for r in warnings)
    assert store.get("alice").remaining() > 0


def test_wrong_realm(realm: Realm, tmp_path: Path, stores: list[TicketStore]) -> None:
    # A keytab really holding a key for a principal of a realm krb5.conf does not know.
    ctx = krb5.init_context()
    princ = krb5.parse_name_flags(ctx, b"alice@NOWHERE.TEST")
    path = tmp_path / "nowhere.keytab"
    key = krb5.c_string_to_key(ctx, krb5.string_to_enctype(ctx, "aes256-cts-hmac-sha1-96"), b"pw", b"salt")
    krb5.kt_add_entry(ctx, krb5.kt_resolve(ctx, f"FILE:{path}".encode()), princ, 1, 0, key)
    path.chmod(0o600)
    store = TicketStore({"alice@NOWHERE.TEST": path})
    stores.append(store)
    with pytest.raises(RealmUnknownError) as info:
        store.get("alice@NOWHERE.TEST")
    msg = str(info.value)
    assert "NOWHERE.TEST" in msg and str(realm.krb5_conf) in msg and "[realms]" in msg
    assert not is_transient(info.value)


def test_kdc_unreachable_is_transient_and_retried(
    realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stores: list[TicketStore]
) -> None:
    keytab = realm.add_principal("alice")
    dead = tmp_path / "krb5.conf"
    dead.write_text(
        realm.krb5_conf.read_text().replace(f"127.0.0.1:{realm.kdc_port}", f"127.0.0.1:{free_port()}")
    )
    monkeypatch.setenv("KRB5_CONFIG", str(dead))
    store = TicketStore({"alice": keytab}, sync_attempts=3)
    stores.append(store)
    with pytest.raises(KdcUnreachableError) as info:
        store.get("alice")
    assert is_transient(info.value)
    assert "alice@WINEXEC.TEST" in str(info.value) and str(dead) in str(info.value)
    assert store.renewal_failures == 3  # tried sync_attempts times before giving up
    assert store.status("alice").last_error == str(info.value)


def test_clock_skew(
    realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stores: list[TicketStore]
) -> None:
    # A real skew against the real KDC: the client's krb5 clock runs an hour ahead
    # (krb5.set_real_time on the store's contexts). The principal requires pre-authentication,
    # as AD accounts do, and kdc_timesync is off, so the KDC rejects the timestamp with
    # KRB5KRB_AP_ERR_SKEW instead of the library silently adopting the KDC's time.
    keytab = realm.add_principal("alice")
    realm.kadmin("modprinc +requires_preauth alice")
    conf = tmp_path / "krb5.conf"
    conf.write_text(
        realm.krb5_conf.read_text().replace("[libdefaults]\n", "[libdefaults]\n    kdc_timesync = 0\n")
    )
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    control = TicketStore({"alice": keytab})
    stores.append(control)
    assert control.get("alice").remaining() > 0  # without the skew it works

    real = tickets._new_context

    def skewed() -> krb5.Context:
        ctx = real()
        krb5.set_real_time(ctx, int(time.time()) + 3600, 0)
        return ctx

    monkeypatch.setattr(tickets, "_new_context", skewed)
    store = TicketStore({"alice": keytab})
    stores.append(store)
    with pytest.raises(ClockSkewError) as info:
        store.get("alice")
    assert info.value.code == tickets.KRB5KRB_AP_ERR_SKEW
    assert "alice@WINEXEC.TEST" in str(info.value) and "clock" in str(info.value)
    assert not is_transient(info.value)


def test_stale_keytab_and_unknown_principal(realm: Realm, tmp_path: Path, stores: list[TicketStore]) -> None:
    keytab = realm.add_principal("alice")
    realm.kadmin("cpw -randkey alice")  # the key changed after the keytab was exported
    ctx = krb5.init_context()
    ghost = tmp_path / "ghost.keytab"
    key = krb5.c_string_to_key(ctx, krb5.string_to_enctype(ctx, "aes256-cts-hmac-sha1-96"), b"pw", b"salt")
    krb5.kt_add_entry(
        ctx, krb5.kt_resolve(ctx, f"FILE:{ghost}".encode()), krb5.parse_name_flags(ctx, b"ghost"), 1, 0, key
    )
    ghost.chmod(0o600)
    store = TicketStore({"alice": keytab, "ghost": ghost})
    stores.append(store)
    with pytest.raises(TicketError) as info:
        store.start()  # permanent failures stop startup
    assert isinstance(info.value, KeytabStaleError | PrincipalUnknownError)
    with pytest.raises(KeytabStaleError, match="export a new keytab"):
        store.get("alice")
    with pytest.raises(PrincipalUnknownError, match=r"ghost@WINEXEC\.TEST"):
        store.get("ghost")


def test_krb5_error_mapping() -> None:
    ctx = krb5.init_context()
    cases = {
        tickets.KRB5_KDC_UNREACH: KdcUnreachableError,
        tickets.KRB5KRB_AP_ERR_SKEW: ClockSkewError,
        tickets.KRB5_KDCREP_SKEW: ClockSkewError,
        tickets.KRB5_KT_NOTFOUND: PrincipalNotInKeytabError,
        tickets.KRB5_REALM_UNKNOWN: RealmUnknownError,
        tickets.KRB5_REALM_CANT_RESOLVE: RealmUnknownError,
        tickets.KRB5_KT_FORMAT: KeytabUnreadableError,
        tickets.KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN: PrincipalUnknownError,
        tickets.KRB5KDC_ERR_PREAUTH_FAILED: KeytabStaleError,
    }
    for code, cls in cases.items():
        err = error_from_krb5("u@R", krb5.Krb5Error(ctx, code), keytab="/k")
        assert type(err) is cls, (code, err)
        assert err.principal == "u@R" and str(err).startswith("u@R: ")
        assert is_transient(err) == (cls is KdcUnreachableError)
    assert is_transient(krb5.Krb5Error(ctx, tickets.KRB5_KDC_UNREACH))
    assert not is_transient(ValueError("x"))


def test_nothing_secret_in_logs(
    realm: Realm, stores: list[TicketStore], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="winexec.tickets")
    keytab = realm.add_principal("alice")
    store = TicketStore({"alice": keytab}, safety_margin=0)
    stores.append(store)
    store.start()
    cred = store.get("alice")
    ctx = krb5.init_context()
    secrets = [e.key.data for e in krb5.kt_resolve(ctx, f"FILE:{keytab}".encode())]
    secrets += [c.ticket for c in krb5.cc_resolve(ctx, cred.ccache.encode())]
    text = caplog.text + repr(store.statuses()) + repr(cred)
    assert caplog.records
    for s in secrets:
        assert s.hex() not in text and repr(s) not in text and s[:16].hex() not in text

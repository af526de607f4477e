"""Kerberos credential caches per principal, renewed before they expire.

Every task runs as its own domain principal, and where a ``grants`` rule says ``delegate`` that
principal's TGT is forwarded to the Windows host, so the scheduler keeps one *forwardable,
renewable* TGT per principal. Each lives in its
own ``FILE:`` credential cache inside a private 0700 directory: never the process default cache
(other code in the scheduler, or the operator's own ``kinit``, must not see or clobber it) and
never shared between principals (a shell opened as one principal must not pick up another's
ticket).

Tickets are acquired with the ``krb5`` package's init-creds API rather than ``gssapi``: only
init-creds options can ask the KDC for a forwardable, renewable ticket from a keytab, and
without the forwardable flag delegation to the Windows host silently does not happen.

One daemon thread renews every principal's TGT before it expires (renewal while the renewable
lifetime lasts, a fresh TGT from the keytab once it is spent); :meth:`TicketStore.get` hands out
a credential only if it stays valid for a safety margin and otherwise refreshes it first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import krb5
import spnego
import tenacity

from winexec import metrics
from winexec.backoff import backoff

__all__ = [
    "AccountDisabledError",
    "ClockSkewError",
    "Credential",
    "KdcUnreachableError",
    "KeytabHeldError",
    "KeytabMissingError",
    "KeytabPermissionsError",
    "KeytabStaleError",
    "KeytabUnreadableError",
    "PrincipalNotConfiguredError",
    "PrincipalNotInKeytabError",
    "PrincipalUnknownError",
    "RealmUnknownError",
    "StoreClosedError",
    "TicketError",
    "TicketLifetimeError",
    "TicketStatus",
    "TicketStore",
    "error_from_krb5",
    "is_transient",
]

log = logging.getLogger(__name__)

# MIT krb5 com_err codes (ERROR_TABLE_BASE_krb5 = -1765328384 plus the offset in krb5_err.et).
_BASE = -1765328384
KRB5KDC_ERR_NAME_EXP = _BASE + 1
KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN = _BASE + 6
KRB5KDC_ERR_CLIENT_REVOKED = _BASE + 18
KRB5KDC_ERR_KEY_EXP = _BASE + 23
KRB5KDC_ERR_PREAUTH_FAILED = _BASE + 24
KRB5KDC_ERR_SVC_UNAVAILABLE = _BASE + 29
KRB5KRB_AP_ERR_BAD_INTEGRITY = _BASE + 31
KRB5KRB_AP_ERR_SKEW = _BASE + 37
KRB5KDC_ERR_WRONG_REALM = _BASE + 68
KRB5_KDCREP_SKEW = _BASE + 148
KRB5_REALM_UNKNOWN = _BASE + 154
KRB5_KDC_UNREACH = _BASE + 156
KRB5_KT_BADNAME = _BASE + 179
KRB5_KT_UNKNOWN_TYPE = _BASE + 180
KRB5_KT_NOTFOUND = _BASE + 181
KRB5_KT_END = _BASE + 182
KRB5_KT_FORMAT = _BASE + 213
KRB5_REALM_CANT_RESOLVE = _BASE + 220
KRB5_CONFIG_NODEFREALM = _BASE + 224
KRB5_KT_KVNONOTFOUND = _BASE + 230
KRB5_KEYTAB_BADVNO = _BASE + 235

_UNREACHABLE = {KRB5_KDC_UNREACH, KRB5KDC_ERR_SVC_UNAVAILABLE, errno.ECONNREFUSED, errno.ETIMEDOUT}
_SKEW = {KRB5KRB_AP_ERR_SKEW, KRB5_KDCREP_SKEW}
_REALM = {KRB5_REALM_UNKNOWN, KRB5_REALM_CANT_RESOLVE, KRB5_CONFIG_NODEFREALM, KRB5KDC_ERR_WRONG_REALM}
_NOT_IN_KEYTAB = {KRB5_KT_NOTFOUND, KRB5_KT_END}
_STALE = {KRB5KDC_ERR_PREAUTH_FAILED, KRB5KRB_AP_ERR_BAD_INTEGRITY, KRB5_KT_KVNONOTFOUND}
_DISABLED = {KRB5KDC_ERR_CLIENT_REVOKED, KRB5KDC_ERR_NAME_EXP, KRB5KDC_ERR_KEY_EXP}
_BAD_KEYTAB = {KRB5_KT_FORMAT, KRB5_KEYTAB_BADVNO, KRB5_KT_BADNAME, KRB5_KT_UNKNOWN_TYPE}


# -- errors ------------------------------------------------------------------------------------
class TicketError(Exception):
    """A TGT for ``principal`` could not be had; the message names the principal and the fix.

    ``transient`` tells the launch path whether trying again later (or elsewhere) can help.
    """

    transient: ClassVar[bool] = False

    def __init__(self, principal: str, message: str, *, code: int | None = None) -> None:
        super().__init__(f"{principal}: {message}")
        self.principal = principal
        self.message = message
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:  # keep it picklable despite the custom __init__
        return (type(self), (self.principal, self.message), {"code": self.code})


class KeytabMissingError(TicketError):
    """The configured keytab path does not exist."""


class KeytabUnreadableError(TicketError):
    """The keytab path exists but is not a readable keytab (a directory, garbage, EACCES)."""


class KeytabPermissionsError(TicketError):
    """The keytab is readable by group or others: anyone who can read it can become the principal."""


class PrincipalNotInKeytabError(TicketError):
    """The keytab holds no key for the principal."""


class KeytabStaleError(TicketError):
    """The keytab's key no longer matches the KDC's (password or key rotated since export)."""


class KeytabHeldError(KeytabStaleError):
    """The KDC refused this keytab's key before, and the file has not changed since.

    Not tried again: each refused pre-authentication counts toward the account's bad-password
    threshold in Active Directory, and a service account other systems share would be locked out.
    """


class PrincipalUnknownError(TicketError):
    """The KDC does not know the principal."""


class AccountDisabledError(TicketError):
    """The KDC refuses the principal: account disabled, locked or expired."""


class KdcUnreachableError(TicketError):
    """No KDC of the realm answered; an outage usually passes, so this one is worth retrying."""

    transient: ClassVar[bool] = True


class ClockSkewError(TicketError):
    """This host's clock and the KDC's differ by more than the allowed skew."""


class RealmUnknownError(TicketError):
    """The principal's realm is not configured in krb5.conf."""


class TicketLifetimeError(TicketError):
    """The KDC issues tickets shorter than the lifetime asked for."""


class PrincipalNotConfiguredError(TicketError):
    """``get()`` for a principal the store has no keytab for."""


class StoreClosedError(TicketError):
    """``get()`` after ``close()``."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying (later, or from another host) can help: only KDC outages qualify."""
    if isinstance(exc, TicketError):
        return exc.transient
    if isinstance(exc, krb5.Krb5Error):
        return exc.err_code in _UNREACHABLE
    return False


def _krb5_config() -> str:
    return os.environ.get("KRB5_CONFIG", "/etc/krb5.conf")


def _realm_of(principal: str) -> str:
    return principal.rpartition("@")[2] if "@" in principal else "(default realm)"


def error_from_krb5(principal: str, exc: krb5.Krb5Error, *, keytab: str | os.PathLike[str]) -> TicketError:
    """Map a krb5 error for ``principal`` to the :class:`TicketError` that says how to fix it."""
    code = exc.err_code
    what = str(exc).removesuffix(f" {code}").strip()  # krb5's message, without the trailing code
    realm = _realm_of(principal)
    conf = _krb5_config()
    kt = os.fspath(keytab)
    if code in _UNREACHABLE:
        return KdcUnreachableError(
            principal,
            f"KDC unreachable for realm {realm} ({what}); check that the KDC is up and that "
            f"[realms] {realm} kdc in {conf} points at it (will be retried)",
            code=code,
        )
    if code in _SKEW:
        return ClockSkewError(
            principal,
            f"clock skew with the KDC of realm {realm} is too great ({what}); synchronise this "
            f"host's clock with the domain (NTP/chrony) or enable kdc_timesync in {conf}",
            code=code,
        )
    if code in _REALM:
        return RealmUnknownError(
            principal,
            f"realm {realm} is unknown to krb5 ({what}); add it under [realms] (with its kdc) and "
            f"[domain_realm] in {conf}, or fix the principal's realm",
            code=code,
        )
    if code in _NOT_IN_KEYTAB:
        return PrincipalNotInKeytabError(
            principal,
            f"keytab {kt} holds no key for this principal ({what}); export one with "
            f"`ktpass`/`kadmin ktadd -k {kt} {principal}` or configure the right keytab",
            code=code,
        )
    if code in _STALE:
        return KeytabStaleError(
            principal,
            f"the key in keytab {kt} is not the KDC's ({what}); the password or key was changed "
            "since the keytab was exported: export a new keytab",
            code=code,
        )
    if code == KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN:
        return PrincipalUnknownError(
            principal,
            f"the KDC of realm {realm} does not know this principal ({what}); check its spelling "
            "and realm, or create the account",
            code=code,
        )
    if code in _DISABLED:
        return AccountDisabledError(
            principal,
            f"the KDC refuses this principal ({what}); the account is disabled, locked or "
            "expired: re-enable it in the directory",
            code=code,
        )
    if code in _BAD_KEYTAB or code in (errno.EISDIR, errno.EACCES, errno.EPERM, errno.EIO):
        return KeytabUnreadableError(
            principal,
            f"keytab {kt} cannot be read as a keytab ({what}); point the configuration at a "
            "readable keytab file exported for this principal",
            code=code,
        )
    if code == errno.ENOENT:
        return KeytabMissingError(
            principal,
            f"keytab {kt} does not exist; export one for this principal there or fix the path",
            code=code,
        )
    return TicketError(principal, f"Kerberos error {code} ({what}) using keytab {kt}", code=code)


# -- public value types ------------------------------------------------------------------------
@dataclass(frozen=True)
class TicketStatus:
    """One principal's TGT as of now: what an operator or a metric needs, no ticket contents."""

    principal: str
    ccache: str
    expires_at: float | None
    renew_till: float | None
    authtime: float | None
    last_renewal: float | None
    last_error: str | None
    consecutive_failures: int

    def remaining(self, now: float | None = None) -> float:
        """Seconds the TGT stays valid (0 if none or expired)."""
        if self.expires_at is None:
            return 0.0
        return max(0.0, self.expires_at - (time.time() if now is None else now))


@dataclass(frozen=True)
class Credential:
    """What a caller needs to authenticate as ``principal``: its ccache, and its lifetime then."""

    principal: str
    ccache: str
    expires_at: float
    renew_till: float

    @property
    def spnego(self) -> spnego.KerberosCCache:
        """Credential object for ``spnego.client``/pypsrp's ``username``: this ccache, this principal."""
        return spnego.KerberosCCache(ccache=self.ccache, principal=self.principal)

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


# -- internals ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Times:
    authtime: int
    start: int
    end: int
    renew_till: int

    @property
    def life(self) -> int:
        return max(1, self.end - self.start)


class _Entry:
    """One principal's state. ``times`` is swapped whole, so lock-free reads see a consistent one."""

    def __init__(self, principal: str, keytab: Path, directory: Path) -> None:
        self.principal = principal
        self.keytab = keytab
        self.directory = directory
        self.path = directory / "ccache"
        self.ccache = f"FILE:{self.path}"
        self.lock = threading.Lock()
        self.times: _Times | None = None
        self.due: float | None = None
        self.failures = 0
        self.last_renewal: float | None = None
        self.last_error: str | None = None
        self.warned_short = False
        #: the keytab file as the last fresh TGT was taken from it: another file there (a gMSA-style
        #: rotation, a new export after ``ktpass``) is tried at once, without a scheduler restart
        self.keytab_seen: tuple[int, int, int] | None = None
        #: the KDC refused the key of the keytab file as it was then (``keytab_seen``): held, not
        #: tried again until the file changes (every refusal counts toward an AD lockout)
        self.refused: KeytabStaleError | None = None

    def held(self) -> bool:
        """Whether the keytab the KDC refused is still the file on disk."""
        return self.refused is not None and _stamp(self.keytab) == self.keytab_seen


def _new_context() -> krb5.Context:
    """A fresh krb5 context per KDC round trip: contexts must not be shared between threads."""
    return krb5.init_context()


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: How often the renewal thread looks at each keytab file for a replacement (key rotation).
KEYTAB_CHECK = 30.0


class TicketStore:
    """Forwardable, renewable TGTs for many principals, each in its own private ccache.

    ``keytabs`` maps principal to keytab path (more can be added with :meth:`add`).
    ``safety_margin``: :meth:`get` never hands out a TGT that expires sooner than this (or a
    quarter of the lifetime the KDC issues, when that is shorter).
    ``renew_fraction``: the background thread renews once this share of a ticket's lifetime is
    spent (jittered by ``jitter`` of the lifetime, so many principals do not hit the KDC at once),
    and always early enough to leave the margin.
    ``retry_initial``/``retry_max``: exponential backoff (seconds) between failed background
    refreshes. ``sync_attempts``: KDC tries inside :meth:`get` before a transient error is raised.
    ``renew_lifetime``: the renewable lifetime asked of the KDC (it may grant less).
    """

    def __init__(
        self,
        keytabs: Mapping[str, str | os.PathLike[str]] | None = None,
        *,
        ccache_dir: str | os.PathLike[str] | None = None,
        safety_margin: float = 300.0,
        renew_fraction: float = 0.5,
        jitter: float = 0.1,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        sync_attempts: int = 2,
        renew_lifetime: int = 7 * 24 * 3600,
        allow_loose_keytab_permissions: bool = False,
    ) -> None:
        if safety_margin < 0:
            raise ValueError("safety_margin must be >= 0")
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        self.safety_margin = float(safety_margin)
        self.renew_fraction = renew_fraction
        self.jitter = max(0.0, min(jitter, 0.5))
        self.sync_attempts = max(1, sync_attempts)
        self.renew_lifetime = renew_lifetime
        self.allow_loose_keytab_permissions = allow_loose_keytab_permissions
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        if ccache_dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="winexec-ccaches-"))
            self._owns_dir = True
        else:
            self._dir = Path(ccache_dir)
            self._owns_dir = not self._dir.exists()
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._private_dir(self._dir)

        self._entries: dict[str, _Entry] = {}
        self._aliases: dict[str, str] = {}
        self._entries_lock = threading.Lock()  # guards the two dicts only, never held across I/O
        self._counter_lock = threading.Lock()
        self._renewals = 0
        self._acquisitions = 0
        self._failures = 0
        self._sync_refreshes = 0
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        for principal, keytab in (keytabs or {}).items():
            self.add(principal, keytab)

    # -- configuration ---------------------------------------------------------------------
    @staticmethod
    def _private_dir(path: Path) -> None:
        """Refuse a ccache directory someone else owns; tighten our own to 0700."""
        st = path.stat()
        if st.st_uid != os.geteuid():
            raise PermissionError(
                f"ccache directory {path} belongs to uid {st.st_uid}, not to this process "
                f"(uid {os.geteuid()}); use a directory of this user's"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            path.chmod(0o700)

    def add(self, principal: str, keytab: str | os.PathLike[str]) -> str:
        """Register ``principal`` with its keytab (checked now, no KDC); returns the full name.

        Its first TGT comes from :meth:`start` or, if added later, from the first :meth:`get`.
        """
        path = Path(keytab)
        full = self._canonical(principal)
        self._check_keytab(full, path, warn=True)
        with self._entries_lock:
            if full in self._entries:
                self._entries[full].keytab = path
            else:
                digest = hashlib.sha256(full.encode()).hexdigest()[:10]
                directory = self._dir / f"{_SAFE.sub('_', full)[:60]}-{digest}"
                directory.mkdir(mode=0o700, exist_ok=True)
                self._private_dir(directory)
                self._entries[full] = _Entry(full, path, directory)
            self._aliases[principal] = full
            self._aliases[full] = full
        self._wake.set()
        return full

    @staticmethod
    def _canonical(principal: str) -> str:
        ctx = _new_context()
        try:
            parsed = krb5.parse_name_flags(ctx, principal.encode())
            return krb5.unparse_name_flags(ctx, parsed).decode()
        except krb5.Krb5Error as exc:
            raise error_from_krb5(principal, exc, keytab="(none)") from None

    def _check_keytab(self, principal: str, path: Path, *, warn: bool) -> None:
        """Local checks that need no KDC: exists, is a file, private, parses, holds the principal."""
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeytabMissingError(
                principal,
                f"keytab {path} does not exist; export one for this principal there or fix the path",
            ) from None
        except OSError as exc:
            raise KeytabUnreadableError(
                principal,
                f"keytab {path} cannot be examined ({exc.strerror}); "
                "fix the path or its parent directory's permissions",
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise KeytabUnreadableError(
                principal, f"keytab {path} is not a regular file; point the configuration at the keytab file"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            mode = oct(stat.S_IMODE(st.st_mode))
            if not self.allow_loose_keytab_permissions:
                raise KeytabPermissionsError(
                    principal,
                    f"keytab {path} has mode {mode}, readable beyond its owner, so anyone who can "
                    f"read it can act as {principal}; run `chmod 600 {path}` (or set "
                    "allow_loose_keytab_permissions to accept the risk)",
                )
            if warn:
                log.warning(
                    "INSECURE KEYTAB: %s for %s has mode %s (readable beyond its owner); anyone who can "
                    "read it can act as %s. Run `chmod 600 %s`. Accepted only because "
                    "allow_loose_keytab_permissions is set.",
                    path,
                    principal,
                    mode,
                    principal,
                    path,
                )
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise KeytabUnreadableError(
                principal,
                f"keytab {path} cannot be opened ({exc.strerror}); give this process's user read access "
                f"(`chown` it, then `chmod 600 {path}`)",
            ) from None
        ctx = _new_context()
        try:
            names = {
                krb5.unparse_name_flags(ctx, e.principal).decode()
                for e in krb5.kt_resolve(ctx, _kt_name(path))
            }
        except krb5.Krb5Error as exc:
            raise error_from_krb5(principal, exc, keytab=path) from None
        if principal not in names:
            held = ", ".join(sorted(names)) or "nothing"
            raise PrincipalNotInKeytabError(
                principal,
                f"keytab {path} holds no key for this principal (it holds: {held}); export one with "
                f"`kadmin ktadd -k {path} {principal}` (or `ktpass` on Windows) "
                "or configure the right keytab",
            )

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, *, acquire: bool = True) -> None:
        """Start the renewal thread and (by default) acquire every principal's TGT now.

        A KDC outage is only recorded (the thread retries); any other failure is raised after
        every principal was tried, so a misconfiguration stops the executor at startup.
        """
        if self._closed:
            raise StoreClosedError("(store)", "the ticket store is closed; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="winexec-tickets", daemon=True)
            self._thread.start()
        if not acquire:
            return
        first: TicketError | None = None
        for entry in self._all_entries():
            with entry.lock:
                try:
                    self._refresh(entry, need=self._margin_need(entry.times))
                except TicketError as exc:
                    self._record_failure(entry, exc)
                    if not exc.transient and first is None:
                        first = exc
        self._wake.set()
        if first is not None:
            raise first

    def close(self, *, destroy: bool = True, timeout: float = 5.0) -> None:
        """Stop the renewal thread and (by default) delete the ccaches this store wrote."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if not destroy:
            return
        for entry in self._all_entries():
            locked = entry.lock.acquire(timeout=timeout)
            try:
                shutil.rmtree(entry.directory, ignore_errors=True)
                entry.times = None
            finally:
                if locked:
                    entry.lock.release()
        if self._owns_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> TicketStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure(self, principal: str, keytab_for: Callable[[str], str | None]) -> None:
        """Register ``principal`` unless it is known, with the keytab ``keytab_for`` names (a
        ``Settings.keytab_for``: a principal first seen at run time, or by a tool);
        :class:`PrincipalNotConfiguredError` when it names none."""
        with self._entries_lock:
            if principal in self._aliases:
                return
        keytab = keytab_for(principal)
        if keytab is None:
            raise PrincipalNotConfiguredError(
                principal, "no keytab: add it to [winexec] keytabs or set keytab_dir"
            )
        self.add(principal, keytab)

    # -- the API callers use ---------------------------------------------------------------
    @property
    def principals(self) -> list[str]:
        with self._entries_lock:
            return sorted(self._entries)

    @property
    def ccache_dir(self) -> Path:
        return self._dir

    def get(self, principal: str, min_lifetime: float | None = None) -> Credential:
        """A credential for ``principal`` valid for at least ``max(margin, min_lifetime)``, the margin
        being ``safety_margin`` or a quarter of the ticket lifetime the KDC issues, if shorter.

        Refreshes synchronously (renewal, or a fresh TGT from the keytab) when the cached TGT
        would not last that long. Raises a :class:`TicketError`; see :func:`is_transient`.
        """
        if self._closed:
            raise StoreClosedError(principal, "the ticket store is closed; create a new one")
        entry = self._entry(principal)
        cred = self._valid(entry, self._need(entry.times, min_lifetime))
        if cred is not None:
            return cred
        with entry.lock:
            need = self._need(entry.times, min_lifetime)
            cred = self._valid(entry, need)  # another caller may have refreshed it meanwhile
            if cred is not None:
                return cred
            if self._closed:
                raise StoreClosedError(principal, "the ticket store is closed; create a new one")
            with self._counter_lock:
                self._sync_refreshes += 1
            try:
                for attempt in tenacity.Retrying(
                    stop=tenacity.stop_after_attempt(self.sync_attempts),
                    wait=tenacity.wait_exponential_jitter(initial=0.2, max=2.0, jitter=0.2),
                    retry=tenacity.retry_if_exception(is_transient),
                    reraise=True,
                ):
                    with attempt:
                        try:
                            self._refresh(entry, need=need)
                        except TicketError as exc:
                            self._record_failure(entry, exc)
                            raise
            finally:
                self._wake.set()  # reschedule the background renewal for the new ticket
            need = self._need(entry.times, min_lifetime)
            cred = self._valid(entry, need)
            if cred is None:
                t = entry.times
                life = t.life if t else 0
                raise TicketLifetimeError(
                    entry.principal,
                    f"the KDC issues {life} s tickets but {need:.0f} s were asked for; raise the "
                    "principal's maximum ticket lifetime or lower the safety margin / min_lifetime",
                )
            return cred

    def status(self, principal: str) -> TicketStatus:
        """This principal's TGT lifetime, renew-till, last renewal and last error."""
        return self._status(self._entry(principal))

    def statuses(self) -> list[TicketStatus]:
        return [self._status(e) for e in self._all_entries()]

    @property
    def renewals(self) -> int:
        """TGTs renewed (``get_renewed_creds``) since start."""
        return self._renewals

    @property
    def acquisitions(self) -> int:
        """Fresh TGTs from a keytab since start (the first one per principal included)."""
        return self._acquisitions

    @property
    def renewal_failures(self) -> int:
        """Failed refresh attempts (renewal or acquisition), background and synchronous."""
        return self._failures

    @property
    def sync_refreshes(self) -> int:
        """Times :meth:`get` had to refresh before answering (the renewal thread was late or off)."""
        return self._sync_refreshes

    def counters(self) -> dict[str, int]:
        """The counters in one snapshot (each also goes out as a metric when it happens)."""
        with self._counter_lock:
            return {
                "renewals": self._renewals,
                "acquisitions": self._acquisitions,
                "renewal_failures": self._failures,
                "sync_refreshes": self._sync_refreshes,
            }

    # -- internals: lookups ------------------------------------------------------------------
    def _entry(self, principal: str) -> _Entry:
        with self._entries_lock:
            full = self._aliases.get(principal)
            entry = self._entries.get(full) if full else None
        if entry is None:
            raise PrincipalNotConfiguredError(
                principal, "no keytab is configured for this principal; add it to the ticket store's keytabs"
            )
        return entry

    def _all_entries(self) -> list[_Entry]:
        with self._entries_lock:
            return list(self._entries.values())

    def _valid(self, entry: _Entry, need: float) -> Credential | None:
        t = entry.times
        if t is None or t.end - time.time() < need:
            return None
        return Credential(entry.principal, entry.ccache, float(t.end), float(t.renew_till))

    def _status(self, entry: _Entry) -> TicketStatus:
        t = entry.times
        return TicketStatus(
            principal=entry.principal,
            ccache=entry.ccache,
            expires_at=float(t.end) if t else None,
            renew_till=float(t.renew_till) if t else None,
            authtime=float(t.authtime) if t else None,
            last_renewal=entry.last_renewal,
            last_error=entry.last_error,
            consecutive_failures=entry.failures,
        )

    def _margin(self, t: _Times | None) -> float:
        """``safety_margin``, cut to a quarter of the lifetime the KDC issues: a realm whose
        policy issues tickets shorter than the margin still works (renewing more often)."""
        return min(self.safety_margin, 0.25 * t.life) if t else self.safety_margin

    def _need(self, t: _Times | None, min_lifetime: float | None) -> float:
        """How long a TGT :meth:`get` hands out must stay valid."""
        return max(self._margin(t), min_lifetime or 0.0)

    def _margin_need(self, t: _Times | None) -> float:
        """How long a background renewal must leave the TGT valid to be worth doing."""
        return self._margin(t) + (0.5 * t.life if t else 0.0)

    # -- internals: KDC round trips (caller holds entry.lock) ---------------------------------
    def _refresh(self, entry: _Entry, *, need: float) -> None:
        """Renew the TGT if its renewable lifetime still covers ``need``, else acquire a fresh one;
        always a fresh one from a keytab that changed since the last."""
        t = entry.times
        now = time.time()
        how: Literal["renew", "acquire"] = "acquire"
        if t is not None and t.renew_till > t.end and t.end > now + 1 and t.renew_till - now >= need:
            how = "renew"
        if _stamp(entry.keytab) != entry.keytab_seen:
            how = "acquire"
        if how == "renew":
            try:
                self._renew(entry)
                return
            except TicketError as exc:
                if exc.transient:
                    raise
                log.info(
                    "%s: renewal refused (%s); acquiring a fresh TGT from the keytab", entry.principal, exc
                )
        self._acquire(entry)

    def _acquire(self, entry: _Entry) -> None:
        if entry.held():
            assert entry.refused is not None
            raise KeytabHeldError(
                entry.principal,
                f"{entry.refused.message}; not tried again until {entry.keytab} changes, because each "
                "refused attempt counts toward the account's lockout threshold",
                code=entry.refused.code,
            )
        self._check_keytab(entry.principal, entry.keytab, warn=False)
        entry.keytab_seen = _stamp(entry.keytab)
        entry.refused = None
        ctx = _new_context()
        try:
            client = krb5.parse_name_flags(ctx, entry.principal.encode())
            opt = krb5.get_init_creds_opt_alloc(ctx)
            krb5.get_init_creds_opt_set_forwardable(opt, True)
            krb5.get_init_creds_opt_set_renew_life(opt, self.renew_lifetime)
            keytab = krb5.kt_resolve(ctx, _kt_name(entry.keytab))
            creds = krb5.get_init_creds_keytab(ctx, client, opt, keytab)
            self._store(ctx, entry, client, creds)
        except krb5.Krb5Error as exc:
            err = error_from_krb5(entry.principal, exc, keytab=entry.keytab)
            if isinstance(err, KeytabStaleError):
                entry.refused = err = KeytabStaleError(
                    entry.principal, f"{err.message} ({_kvnos(ctx, entry.keytab, client)})", code=err.code
                )
            raise err from None
        with self._counter_lock:
            self._acquisitions += 1
        metrics.incr(metrics.TICKET_ACQUISITIONS, principal=entry.principal)
        self._record_success(entry, creds, "acquired a fresh TGT from the keytab")

    def _renew(self, entry: _Entry) -> None:
        ctx = _new_context()
        try:
            client = krb5.parse_name_flags(ctx, entry.principal.encode())
            current = krb5.cc_resolve(ctx, entry.ccache.encode())
            creds = krb5.get_renewed_creds(ctx, client, current)
            self._store(ctx, entry, client, creds)
        except krb5.Krb5Error as exc:
            raise error_from_krb5(entry.principal, exc, keytab=entry.keytab) from None
        with self._counter_lock:
            self._renewals += 1
        metrics.incr(metrics.TICKET_RENEWALS, principal=entry.principal)
        self._record_success(entry, creds, "renewed the TGT")

    def _store(self, ctx: krb5.Context, entry: _Entry, client: krb5.Principal, creds: krb5.Creds) -> None:
        """Write the new TGT to a temporary cache and rename it over the old one.

        A reader (pypsrp's gssapi, another renewal) then sees the old TGT or the new one, never
        an empty cache between ``cc_initialize`` and ``cc_store_cred``.
        """
        if self._closed:
            raise StoreClosedError(entry.principal, "the ticket store closed during a refresh")
        entry.directory.mkdir(mode=0o700, exist_ok=True)
        tmp = entry.directory / f".ccache-{uuid.uuid4().hex}"
        try:
            cache = krb5.cc_resolve(ctx, f"FILE:{tmp}".encode())
            krb5.cc_initialize(ctx, cache, client)
            krb5.cc_store_cred(ctx, cache, creds)
            tmp.chmod(0o600)
            os.replace(tmp, entry.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _record_success(self, entry: _Entry, creds: krb5.Creds, what: str) -> None:
        tt = creds.times
        t = _Times(
            authtime=tt.authtime, start=tt.starttime or tt.authtime, end=tt.endtime, renew_till=tt.renew_till
        )
        entry.times = t
        entry.failures = 0
        entry.last_error = None
        entry.last_renewal = time.time()
        entry.due = self._next_due(entry, t)
        log.info(
            "%s: %s (valid %d s, renewable for %d s more, next renewal in %.0f s)",
            entry.principal,
            what,
            t.end - time.time(),
            max(0.0, t.renew_till - time.time()),
            entry.due - time.time(),
        )

    def _record_failure(self, entry: _Entry, exc: TicketError) -> None:
        if isinstance(exc, KeytabHeldError):
            return  # no KDC was asked: nothing new to count or log
        with self._counter_lock:
            self._failures += 1
        metrics.incr(metrics.TICKET_RENEWAL_FAILURES, principal=entry.principal)
        entry.failures += 1
        entry.last_error = str(exc)
        delay = backoff(entry.failures, self._retry_initial, self._retry_max, jitter=self._retry_initial)
        entry.due = time.time() + delay
        level = logging.WARNING if exc.transient else logging.ERROR
        log.log(level, "%s (attempt %d; next try in %.1f s)", str(exc), entry.failures, delay)

    def _next_due(self, entry: _Entry, t: _Times) -> float:
        """When to renew: ``renew_fraction`` of the way through, jittered, but leaving the margin."""
        now = time.time()
        life = t.life
        frac = self.renew_fraction + random.uniform(-self.jitter, self.jitter)
        due = t.start + life * frac
        margin = self._margin(t)
        latest = t.end - margin - min(0.1 * life, 30.0)
        if margin < self.safety_margin and not entry.warned_short:
            entry.warned_short = True
            log.warning(
                "%s: the KDC issues %d s tickets, short for the %.0f s safety margin; renewing with "
                "a %.0f s margin instead. Raise the principal's ticket lifetime if that is too tight.",
                entry.principal,
                life,
                self.safety_margin,
                margin,
            )
        return max(min(due, latest), now + max(1.0, 0.1 * life))

    # -- internals: the renewal thread --------------------------------------------------------
    def _run(self) -> None:
        """One thread for all principals: sleep until the earliest due time, refresh what is due."""
        while not self._stop.is_set():
            self._wake.clear()
            now = time.time()
            next_due = now + KEYTAB_CHECK
            for entry in self._all_entries():
                if self._stop.is_set():
                    return
                due = entry.due
                if due is None:
                    continue
                if entry.held():
                    continue  # only a new keytab file is worth a KDC round trip
                if (entry.times is not None or entry.refused) and _stamp(entry.keytab) != entry.keytab_seen:
                    log.info("%s: keytab %s changed; a fresh TGT from it", entry.principal, entry.keytab)
                    due = entry.due = now
                if due <= now:
                    self._background_refresh(entry)
                    now = time.time()
                    due = entry.due if entry.due is not None else now + 60.0
                    if due <= now:  # a get() holds the principal's lock mid-refresh: look again soon
                        due = now + 0.5
                next_due = min(next_due, due)
            self._wake.wait(max(0.0, next_due - time.time()))

    def _background_refresh(self, entry: _Entry) -> None:
        if not entry.lock.acquire(blocking=False):
            return  # a get() is refreshing it right now; it reschedules when done
        try:
            if entry.due is None or entry.due > time.time():
                return
            self._refresh(entry, need=self._margin_need(entry.times))
        except TicketError as exc:
            self._record_failure(entry, exc)
        except Exception as exc:  # never let one principal's surprise kill renewal for all
            log.exception("%s: unexpected error while renewing its TGT", entry.principal)
            self._record_failure(entry, TicketError(entry.principal, f"unexpected error: {exc!r}"))
        finally:
            entry.lock.release()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells one keytab file from its replacement (a rename over it, or a rewrite)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _kvnos(ctx: krb5.Context, path: Path, client: krb5.Principal) -> str:
    """What the keytab holds for ``client``, for the fix: which key version the KDC refused."""
    name = krb5.unparse_name_flags(ctx, client)
    try:
        entries = krb5.kt_resolve(ctx, _kt_name(path))
        held = sorted({e.kvno for e in entries if krb5.unparse_name_flags(ctx, e.principal) == name})
    except krb5.Krb5Error:
        return "its key versions could not be read"
    return f"the keytab holds kvno {', '.join(map(str, held))}, a key the KDC no longer has"


def _kt_name(path: Path) -> bytes:
    return f"FILE:{path}".encode()

"""The hosts' WinRM shell quotas, read once per host, for placement.

A host accepts no more shells per user than its MaxShellsPerUser and no more users at once than
its MaxConcurrentUsers (the smaller of the WinRS and the endpoint's own quota, facts §7). A hosts
entry may say them (``?max_shells_per_user=N&max_users=N``); where it does not, the executor tries
once to read them as its default principal. Windows lets only Administrators read WinRM's
configuration, so for most principals the reading is refused and placement keeps the strictest
values a source reports (:data:`winexec.config.DEFAULT_MAX_SHELLS_PER_USER`, ``DEFAULT_MAX_USERS``).
Runs on a worker thread (the host refresh job), never on the scheduler's.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from winexec.config import HostSpec, Settings

log = logging.getLogger(__name__)


class QuotaReader:
    """What each host said of its quotas: a reading, or ``None`` once it refused (not asked again)."""

    def __init__(self, settings: Settings, tickets: Any) -> None:
        self.settings = settings
        self.tickets = tickets
        self.readings: dict[str, dict[str, int] | None] = {}

    def apply(self, hosts: tuple[HostSpec, ...]) -> tuple[HostSpec, ...]:
        """``hosts`` with every quota their entries leave open filled in from a reading."""
        return tuple(self._filled(h) for h in hosts)

    def _filled(self, host: HostSpec) -> HostSpec:
        if host.max_shells_per_user is not None and host.max_users is not None:
            return host
        if host.name not in self.readings:
            self._read(host)
        found = self.readings.get(host.name) or {}
        return replace(
            host,
            max_shells_per_user=host.max_shells_per_user or found.get("MaxShellsPerUser"),
            max_users=host.max_users or found.get("MaxConcurrentUsers"),
        )

    def _read(self, host: HostSpec) -> None:
        from winexec.transport import QuotasUnreadable, open_channel

        principal = self.settings.default_principal
        try:
            with open_channel(self.settings, host, principal, False, self.tickets) as channel:
                self.readings[host.name] = channel.quotas()
        except QuotasUnreadable as e:
            self.readings[host.name] = None
            log.info(
                "winexec: %s's WinRM quotas: %s; placing as if MaxShellsPerUser=%d, MaxConcurrentUsers=%d "
                "(say them in its hosts entry: ?max_shells_per_user=N&max_users=N)",
                host.name,
                e,
                host.shells_per_user,
                host.users,
            )
        except Exception as e:  # a host that is down now is asked again at the next refresh
            log.info("winexec: cannot read %s's WinRM quotas yet: %s", host.name, str(e))
        else:
            log.info("winexec: %s's WinRM quotas: %s", host.name, self.readings[host.name])

"""Fault injection on one simulated host, driven from tests.

Each fault is what a real Windows host or network does: the WinRM service stops answering
(``refuse``), responses crawl (``stall``), a connection dies during a long-poll
(``drop_next_receive``), an answer is lost after the host acted on the request
(``lose_next_answer``), shells vanish (``kill_shells``), processes hang (``freeze_processes``),
the machine reboots (``down``/``up``/``reboot``), or its clock drifts (``clock_skew``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from winexec.sim.cluster import SimHost


class Faults:
    def __init__(self, host: SimHost) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._stall = 0.0
        self._stall_wake = threading.Event()
        self._drop_receives = 0
        self._lost_answers: dict[str, str] = {}
        self.skew = 0.0
        self.refusing = False

    # -- the machine -----------------------------------------------------------------------
    def down(self) -> None:
        """Power off: listeners closed, open connections cut, every shell and process gone."""
        self._stall_wake.set()
        self._host._go_down()

    def up(self) -> None:
        """Power on: listeners reopen on the same ports, with no shells."""
        self._stall_wake.clear()
        self._host._go_up()

    def reboot(self) -> None:
        self.down()
        self.up()

    def refuse(self, on: bool = True) -> None:
        """Connections refused (service stopped / firewall); shells and processes keep running."""
        self.refusing = on
        self._host._set_refusing(on)

    # -- the service -----------------------------------------------------------------------
    def stall(self, seconds: float) -> None:
        """Every request waits ``seconds`` before it is handled (0 clears it)."""
        with self._lock:
            self._stall = max(0.0, seconds)
            if self._stall == 0:
                self._stall_wake.set()
            else:
                self._stall_wake.clear()

    def wait_stall(self) -> None:
        s = self._stall
        if s > 0:
            self._stall_wake.wait(s)

    def drop_next_receive(self, count: int = 1) -> None:
        """The next ``count`` Receive requests get their connection reset instead of an answer."""
        with self._lock:
            self._drop_receives += count

    def take_drop_receive(self) -> bool:
        with self._lock:
            if self._drop_receives > 0:
                self._drop_receives -= 1
                return True
            return False

    def lose_next_answer(
        self, action: str = "Command", *, then_silent: bool = False, then_reboot: bool = False
    ) -> None:
        """The next ``action`` request (e.g. ``Command``) is carried out, but its answer is lost to
        a connection reset: the request reached the host and the client cannot tell. With
        ``then_silent`` the host refuses connections from then on, until ``refuse(False)``; with
        ``then_reboot`` it restarts before answering: its shells and their processes are gone,
        and it answers again at once."""
        with self._lock:
            self._lost_answers[action] = "silent" if then_silent else "reboot" if then_reboot else ""

    def take_lost_answer(self, action_uri: str) -> str | None:
        """Whether to lose this answer (None: answer it), and what follows ("silent", "reboot")."""
        with self._lock:
            return self._lost_answers.pop(action_uri.rsplit("/", 1)[-1], None)

    def kill_shells(self) -> None:
        """Every shell closed server-side (their processes killed); clients get 'shell not found'."""
        self._host.service.close_all()

    def freeze_processes(self) -> None:
        """SIGSTOP every process tree the host runs (a hung task)."""
        for p in self._host._all_native():
            p.freeze()

    def thaw_processes(self) -> None:
        for p in self._host._all_native():
            p.thaw()

    def clock_skew(self, seconds: float) -> None:
        """Host clock off by ``seconds``; beyond 300 s every AP-REQ fails with KRB_AP_ERR_SKEW."""
        self.skew = float(seconds)

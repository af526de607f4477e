"""The agent reads a logon's tickets as Windows holds them: ``klist`` in the task's own session.

On Windows a forwarded TGT lands in LSA, in the WinRM logon's session, where only ``klist`` (or
LSA calls) inside that session see it; an MIT ccache never does. The parsing is checked on
``klist`` output captured on real hosts (Ansible's Kerberos guide; localised captures), and the
whole path on the stand-in, whose ``System32\\klist.exe`` prints the logon's tickets as Windows.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import sim_fixtures
from winexec.agent import hostinfo
from winexec.sim import SimHost
from winexec.sim.kdc import Realm

SIM_PRINCIPALS = ("airflow", "alice")
host, realm, sim = sim_fixtures.host, sim_fixtures.realm, sim_fixtures.sim

#: klist in a WinRM session whose Linux client forwarded its TGT (Ansible's Kerberos guide).
DELEGATED = """
Current LogonId is 0:0x82b6977

Cached Tickets: (1)

#0>\tClient: username @ MY.DOMAIN.COM
\tServer: krbtgt/MY.DOMAIN.COM @ MY.DOMAIN.COM
\tKerbTicket Encryption Type: AES-256-CTS-HMAC-SHA1-96
\tTicket Flags 0x60a10000 -> forwardable forwarded renewable pre_authent name_canonicalize
\tStart Time: 8/30/2024 14:15:18 (local)
\tEnd Time:   8/31/2024 0:12:49 (local)
\tRenew Time: 9/6/2024 14:12:49 (local)
\tSession Key Type: AES-256-CTS-HMAC-SHA1-96
\tCache Flags: 0x1 -> PRIMARY
\tKdc Called:
"""
#: The same without delegation: the service ticket the logon was accepted with.
NOT_DELEGATED = """
Current LogonId is 0:0x82c312c

Cached Tickets: (1)

#0>\tClient: username @ MY.DOMAIN.COM
\tServer: http/winhost.my.domain.com @ MY.DOMAIN.COM
\tKerbTicket Encryption Type: AES-256-CTS-HMAC-SHA1-96
\tTicket Flags 0x40a10000 -> forwardable renewable pre_authent name_canonicalize\x20
\tStart Time: 8/30/2024 14:16:24 (local)
\tEnd Time:   8/31/2024 0:16:12 (local)
\tRenew Time: 0
\tSession Key Type: AES-256-CTS-HMAC-SHA1-96
\tCache Flags: 0x8 -> ASC
\tKdc Called:
"""
#: Localised labels (a Chinese and a French Windows); the flag hex and ``#N>`` stay as they are.
CHINESE = """
当前登录 ID 是 0:0x3e7

缓存的票证: (1)

#0>\t客户端: DC01$ @ XIAORANG.LAB
\t服务器: krbtgt/XIAORANG.LAB @ XIAORANG.LAB
\tKerberos 票证加密类型: AES-256-CTS-HMAC-SHA1-96
\t票证标志 0x60a10000 -> forwardable forwarded renewable pre_authent name_canonicalize
\t开始时间: 3/9/2026 20:12:43 (本地)
\t缓存标志: 0x1 -> PRIMARY
\t调用的 KDC:
"""
FRENCH = """
LogonId est 0:0x897d99

Tickets mis en cache : (2)

#0>\tClient : jdupond @ domain.local
\tServeur : krbtgt/domain.local @ domain.local
\tType de chiffrement KerbTicket : RSADSI RC4-HMAC(NT)
\tIndicateurs de tickets 0x40e10000 -> forwardable renewable initial pre_authent name_canonicalize
\tIndicateurs de cache : 0x1 -> PRIMARY

#1>\tClient : jdupond @ domain.local
\tServeur : cifs/fs.domain.local @ domain.local
\tIndicateurs de tickets 0x40a50000 -> forwardable renewable pre_authent ok_as_delegate name_canonicalize
\tIndicateurs de cache : 0
"""


@pytest.mark.parametrize(
    ("text", "tickets"),
    [
        (DELEGATED, [("username@MY.DOMAIN.COM", "krbtgt/MY.DOMAIN.COM@MY.DOMAIN.COM", 0x60A10000)]),
        (NOT_DELEGATED, [("username@MY.DOMAIN.COM", "http/winhost.my.domain.com@MY.DOMAIN.COM", 0x40A10000)]),
        (CHINESE, [("DC01$@XIAORANG.LAB", "krbtgt/XIAORANG.LAB@XIAORANG.LAB", 0x60A10000)]),
        (
            FRENCH,
            [
                ("jdupond@domain.local", "krbtgt/domain.local@domain.local", 0x40E10000),
                ("jdupond@domain.local", "cifs/fs.domain.local@domain.local", 0x40A50000),
            ],
        ),
    ],
    ids=["delegated", "not-delegated", "chinese", "french"],
)
def test_klist_output_is_read_by_shape_not_by_label(text: str, tickets: list[tuple[str, str, int]]) -> None:
    got = [(t["client"], t["server"], t["flags"]) for t in hostinfo.parse_klist(text)]
    assert got == tickets


def _fake_klist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, code: int = 0) -> None:
    system32 = tmp_path / "Windows" / "System32"
    system32.mkdir(parents=True)
    (tmp_path / "out.txt").write_text(out, encoding="utf-8")
    exe = system32 / "klist.exe"
    exe.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"sys.stdout.write(open({str(tmp_path / 'out.txt')!r}, encoding='utf-8').read())\nsys.exit({code})\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("SystemRoot", str(tmp_path / "Windows"))


@pytest.mark.parametrize(
    ("out", "code", "seen", "delegated"),
    [
        (DELEGATED, 0, "forwarded TGT", True),
        (CHINESE, 0, "forwarded TGT", True),
        (NOT_DELEGATED, 0, "no TGT", False),
        (FRENCH, 0, "TGT, not forwarded", False),
        (
            "Current LogonId is 0:0xc7fbc\nklist failed with 0xc000005f/-1073741729: A specified logon "
            "session does not exist. It may already have been terminated.\n",
            1,
            "no Kerberos logon",
            False,
        ),
    ],
    ids=["forwarded", "forwarded-localised", "accepted-ticket-only", "initial-tgt", "ntlm"],
)
def test_delegation_tells_a_forwarded_tgt_from_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, code: int, seen: str, delegated: bool
) -> None:
    _fake_klist(tmp_path, monkeypatch, out, code)
    found = hostinfo.delegation()
    assert (found["seen"], found["delegated"], found["via"]) == (seen, delegated, "klist"), found


def _self_check(host: SimHost, realm: Realm, principal: str, delegate: bool) -> dict[str, Any]:
    return sim_fixtures.run_python(
        host, realm, principal, "-m", "winexec.agent", "--self-check", delegate=delegate
    )


@pytest.mark.parametrize("delegate", [True, False], ids=["delegated", "not-delegated"])
def test_the_agent_reads_its_logons_tickets_with_the_hosts_klist(
    host: SimHost, realm: Realm, delegate: bool
) -> None:
    info = _self_check(host, realm, "alice", delegate)
    assert info["delegated"] is delegate, info
    assert info["tickets_seen"] == ("forwarded TGT" if delegate else "no TGT"), info
    if delegate:
        assert info["principal"] == realm.principal("alice"), info

"""Each principal's processes run as an OS account of its own (as root), with its own profile.

As root (CI), the stand-in models a shared Windows host: every logon is its own account, whose
profile and TEMP no other principal can read or write, while a share granted to Domain Users is
open to all of them, including what one principal creates there for another. Not as root, the
same layout holds but every process is the caller's: nothing separates principals.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

from tests import sim_fixtures
from winexec.sim import SimHost, accounts
from winexec.sim.kdc import Realm

SIM_PRINCIPALS = ("airflow", "alice")
host, realm, sim = sim_fixtures.host, sim_fixtures.realm, sim_fixtures.sim
AS_ROOT = accounts.enabled()

PROBE = r"""
import json, os, sys
def can(f):
    try:
        f()
        return True
    except PermissionError:
        return False
out = {"uid": os.getuid(), "groups": os.getgroups(), "profile": os.environ["USERPROFILE"],
       "temp": os.environ["TEMP"], "cwd": os.getcwd()}
with open(os.path.join(os.environ["TEMP"], "mine.txt"), "w") as f:
    f.write("secret of " + os.environ["USERNAME"])
args = json.loads(sys.argv[1])
if "other_temp" in args:
    out["read_other"] = can(lambda: open(os.path.join(args["other_temp"], "mine.txt")).read())
    out["write_other"] = can(lambda: open(os.path.join(args["other_temp"], "planted.txt"), "w").close())
    out["list_other_profile"] = can(lambda: os.listdir(args["other_profile"]))
if "keytabs" in args:
    out["read_keytabs"] = can(lambda: os.listdir(args["keytabs"]))
if "share" in args:
    sub = os.path.join(args["share"], "made-by-" + os.environ["USERNAME"])
    os.makedirs(sub, exist_ok=True)
    open(os.path.join(sub, "file.txt"), "w").close()
    mark = "from-" + os.environ["USERNAME"]
    for other in args.get("others", []):
        out["write_in_" + other] = can(lambda: open(os.path.join(other, mark), "w").close())
print(json.dumps(out))
"""


def probe(host: SimHost, realm: Realm, principal: str, **args: Any) -> dict[str, Any]:
    return sim_fixtures.run_python(host, realm, principal, "-c", PROBE, json.dumps(args))


def test_each_principal_has_its_account_profile_and_temp(realm: Realm, host: SimHost) -> None:
    a, b = probe(host, realm, "airflow"), probe(host, realm, "alice")
    for who, got in (("airflow", a), ("alice", b)):
        profile = Path(got["profile"])
        assert profile == host.workdir / "Users" / who
        assert Path(got["temp"]) == profile / "AppData" / "Local" / "Temp"
        assert Path(got["cwd"]) == profile / "Documents"  # where a remote session starts
        if AS_ROOT:
            assert pwd.getpwuid(got["uid"]).pw_name == f"wxsim-{who}"
            assert profile.stat().st_uid == got["uid"] and profile.stat().st_mode & 0o077 == 0
        else:
            assert got["uid"] == os.getuid()
    assert (a["uid"] != b["uid"]) is AS_ROOT
    # a profile lasts beyond its logon, as on Windows: the second shell finds the first's file
    again = probe(host, realm, "alice")
    assert again["profile"] == b["profile"] and (Path(b["temp"]) / "mine.txt").exists()


def test_one_principal_cannot_reach_anothers_profile(realm: Realm, host: SimHost) -> None:
    a = probe(host, realm, "alice")
    b = probe(host, realm, "airflow", other_temp=a["temp"], other_profile=a["profile"])
    assert b["read_other"] is not AS_ROOT
    assert b["write_other"] is not AS_ROOT
    assert b["list_other_profile"] is not AS_ROOT


def test_keytabs_stay_out_of_every_principals_reach(realm: Realm, host: SimHost) -> None:
    got = probe(host, realm, "alice", keytabs=str(realm.workdir / "keytabs"))
    assert got["read_keytabs"] is not AS_ROOT


def test_a_share_is_open_to_every_principal_with_inherited_grants(
    realm: Realm, host: SimHost, tmp_path: Path
) -> None:
    shared = tmp_path / "share"
    shared.mkdir()
    accounts.share(shared, writable=True)
    probe(host, realm, "alice", share=str(shared))
    got = probe(host, realm, "airflow", share=str(shared), others=[str(shared / "made-by-alice")])
    assert got["write_in_" + str(shared / "made-by-alice")] is True  # as an inherited ACE allows
    assert (shared / "made-by-alice" / "from-airflow").exists()

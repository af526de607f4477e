"""Principals that share a host cannot touch each other's runs (the agent's run folder).

Each principal's agent runs over PSRP as its own account (the stand-in's per-principal accounts,
as root, as CI runs): what one principal's agent writes there -- its run records, run logs, stop
files -- the other can neither read nor write, and so can neither stop another's run nor make
its next try be refused as a duplicate. Not as root every process is the caller's own and
nothing separates principals (the stand-in says so: winexec/sim/README.md), which the
assertions below state too.
"""

from __future__ import annotations

import json
from typing import Any

from tests import sim_fixtures
from winexec.sim import SimHost, accounts
from winexec.sim.kdc import Realm

SIM_PRINCIPALS = ("airflow", "alice")
host, realm, sim = sim_fixtures.host, sim_fixtures.realm, sim_fixtures.sim
AS_ROOT = accounts.enabled()

#: Run on the host as a principal: one JSON line of what it did or could do.
AS_PRINCIPAL = r"""
import json, os, sys
from winexec.agent import spool
from winexec.agent.main import _stop

def can(f):
    try:
        f()
        return True
    except PermissionError:
        return False

args = json.loads(sys.argv[1])
out = {}
who = {"computer": os.environ["COMPUTERNAME"], "principal": os.environ["USERNAME"]}
if args.get("start"):
    ti, try_number, key = args["start"]
    run_id = f"run-{key}-{os.environ['USERNAME']}"  # each launch's run id is its own (a uuid)
    m, fresh = spool.claim(ti, try_number, run_id, extra=who, launch_key=key)
    m.log_path.write_text("secret log of " + os.environ["USERNAME"])
    admitted = fresh and spool.take_slot(m, 4, lambda pid, ct: True)
    out.update(fresh=fresh, admitted=admitted, record=str(m.path), log=str(m.log_path),
               stop=str(m.stop_path), folder=str(m.path.parent), slot=m.data.get("slot"),
               stop_requested=m.stop_requested())
if "other" in args:
    o = args["other"]
    out["read_record"] = can(lambda: open(o["record"]).read())
    out["read_log"] = can(lambda: open(o["log"]).read())
    out["list_folder"] = can(lambda: os.listdir(o["folder"]))
    out["write_stop"] = can(lambda: open(o["stop"], "w").write("stopped by another principal"))
    planted = os.path.join(o["folder"], spool._key(*o["next_try"]) + ".json")
    out["plant_next_try"] = can(lambda: open(planted, "w").write("{}"))
    out["remove_slot"] = can(lambda: os.unlink(o["slot"]))
    out["rewrite_slot"] = can(lambda: open(o["slot"], "w").write("{}"))
    out["stop_by_run_id"] = _stop(o["run_id"], 0)
print(json.dumps(out))
"""


def as_principal(host: SimHost, realm: Realm, principal: str, **args: Any) -> dict[str, Any]:
    return sim_fixtures.run_python(host, realm, principal, "-c", AS_PRINCIPAL, json.dumps(args))


def test_one_principal_cannot_read_stop_or_preempt_anothers_runs(realm: Realm, host: SimHost) -> None:
    runs = host.program_data / "winexec" / "runs"
    a = as_principal(host, realm, "alice", start=["ti-1", 1, "k1"])
    assert a["fresh"] and a["admitted"], a
    assert a["folder"] == str(runs / "WINEXEC-alice"), a  # the run folder the host's ProgramData has
    other = {**a, "run_id": "run-k1-alice", "next_try": ["ti-1", 2, "k2"]}
    b = as_principal(host, realm, "airflow", start=["ti-1", 1, "k1"], other=other)
    # the same try and launch key as alice's, in airflow's own folder: no clash either way
    assert b["fresh"] and b["admitted"] and b["folder"] == str(runs / "WINEXEC-airflow"), b
    for what in ("read_record", "read_log", "list_folder", "write_stop", "plant_next_try"):
        assert b[what] is not AS_ROOT, (what, b)
    assert b["remove_slot"] is not AS_ROOT and b["rewrite_slot"] is not AS_ROOT, b
    if AS_ROOT:
        assert b["stop_by_run_id"] == {"run_id": "run-k1-alice", "found": False, "stopped": False}, b
        # alice's run was not asked to stop, and her next try is hers to claim
        again = as_principal(host, realm, "alice", start=["ti-1", 1, "k1"])
        assert again["fresh"] is False and again["stop_requested"] is None, again
        nxt = as_principal(host, realm, "alice", start=["ti-1", 2, "k2"])
        assert nxt["fresh"] is True, nxt

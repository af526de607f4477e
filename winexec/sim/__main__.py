"""``python -m winexec.sim``: a realm and N simulated Windows hosts in the foreground.

For the demo, benchmarks and manual checks. Ctrl-C or SIGTERM stops everything it started.
With ``--json`` exactly one JSON line goes to stdout once every host listens.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from winexec.sim.cluster import SimCluster
from winexec.sim.kdc import Realm

DEFAULT_PRINCIPAL = "airflow"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m winexec.sim", description=__doc__)
    p.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    p.add_argument(
        "--principal",
        action="append",
        default=[],
        metavar="NAME",
        help=f"user principal with a keytab (repeatable; '{DEFAULT_PRINCIPAL}' always exists)",
    )
    p.add_argument("--realm", default="WINEXEC.TEST", help="realm name (default WINEXEC.TEST)")
    p.add_argument("--short-tickets", action="store_true", help="60 s tickets renewable for 180 s")
    p.add_argument("--no-windows-like", action="store_true", help="do not restrict started processes")
    p.add_argument(
        "--powershell7",
        action="store_true",
        help="hosts also have PowerShell 7's PowerShell.7 endpoint (Microsoft.PowerShell is 5.1 always)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line when ready")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return p.parse_args(argv)


def describe(realm: Realm, cluster: SimCluster, principals: dict[str, str]) -> dict[str, Any]:
    return {
        "realm": realm.name,
        "krb5_conf": str(realm.krb5_conf),
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "http_port": h.http_port,
                "https_port": h.https_port,
                "ca_cert": str(h.ca_cert),
            }
            for h in cluster.hosts
        ],
        "principals": principals,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.json else logging.INFO)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    kwargs: dict[str, Any] = {"name": args.realm}
    if args.short_tickets:
        kwargs.update(ticket_lifetime=60, renew_lifetime=180)
    realm = Realm(**kwargs).start()
    cluster: SimCluster | None = None
    try:
        principals: dict[str, str] = {}
        for name in dict.fromkeys([DEFAULT_PRINCIPAL, *args.principal]):
            principals[name] = str(realm.add_principal(name))
        cluster = SimCluster(
            realm, hosts=args.hosts, windows_like=not args.no_windows_like, powershell7=args.powershell7
        ).start()
        info = describe(realm, cluster, principals)
        if args.json:
            print(json.dumps(info), flush=True)
        else:
            print(f"realm      {realm.name}  (KDC 127.0.0.1:{realm.kdc_port})")
            print(f"krb5.conf  {realm.krb5_conf}    export KRB5_CONFIG={realm.krb5_conf}")
            print(f"CA         {cluster.ca_cert}")
            for name, keytab in principals.items():
                print(f"principal  {realm.principal(name):32} keytab {keytab}")
            for h in cluster.hosts:
                print(
                    f"host       {h.name:24} http://{h.address}:{h.http_port}/wsman  "
                    f"https://{h.address}:{h.https_port}/wsman  SPN HTTP/{h.name}"
                )
            print("Ctrl-C stops.", flush=True)
        stop.wait()
    finally:
        if cluster is not None:
            cluster.stop()
        realm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The opt-in real-host suite's host: a real Windows Server host, named by environment variables.

Nothing here runs against the stand-in. Without the variables every test is skipped with a
message naming them; with them, the canary, the Job Object and a DAG reaching a second hop run
against the host as docs/windows-host-setup.md ("Proving a host with the real-host suite") says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

#: what the suite needs, and what each names
REQUIRED = {
    "WINEXEC_TEST_HOST": "the host's FQDN (its HTTP/<host> SPN is registered)",
    "WINEXEC_TEST_KRB5_CONF": "the realm's krb5.conf on this machine",
    "WINEXEC_TEST_PRINCIPAL": "a principal allowed to log on to the host over WinRM",
    "WINEXEC_TEST_KEYTAB": "that principal's keytab",
}
#: what the DAG test needs besides
DAG = {
    "WINEXEC_TEST_API_URL": "how the host reaches the api-server the test starts here, "
    "e.g. http://sched01.corp.example.com:28080/execution/",
    "WINEXEC_TEST_SECOND_HOP": r"a file on another server's share the principal may read, \\fs01\share\x.txt",
}
DAG_VARIABLES = tuple(DAG)
#: optional: ``WINEXEC_TEST_PYTHON`` (the host's python.exe, default ``python``) and
#: ``WINEXEC_TEST_HTTPS=1`` (the HTTPS listener, port 5986)


def missing(names: tuple[str, ...] | list[str]) -> list[str]:
    return [n for n in names if not os.environ.get(n)]


def skip_unless(names: tuple[str, ...] | list[str]) -> None:
    gone = missing(names)
    if gone:
        pytest.skip(
            "real-host suite: set "
            + ", ".join(gone)
            + " ("
            + "; ".join(f"{n}: {REQUIRED.get(n) or DAG[n]}" for n in gone)
            + ") to run it against a Windows host"
        )


@dataclass
class RealHost:
    name: str
    principal: str
    keytab: Path
    krb5_conf: Path
    python: str
    https: bool

    def entry(self) -> str:
        scheme = "https" if self.https else "http"
        return f"{scheme}://{self.name}?slots=2"

    def winexec_env(self) -> dict[str, str]:
        """``[winexec]`` for this host, as AIRFLOW__WINEXEC__* variables."""
        return {
            "AIRFLOW__WINEXEC__HOSTS": self.entry(),
            "AIRFLOW__WINEXEC__PYTHON": self.python,
            "AIRFLOW__WINEXEC__DEFAULT_PRINCIPAL": self.principal,
            "AIRFLOW__WINEXEC__DEFAULT_KEYTAB": str(self.keytab),
            "AIRFLOW__WINEXEC__GRANTS": f"{self.principal}: dag_id=* delegate",
        }


@pytest.fixture(scope="session")
def real_host() -> RealHost:
    skip_unless(list(REQUIRED))
    env = os.environ
    return RealHost(
        name=env["WINEXEC_TEST_HOST"].lower(),
        principal=env["WINEXEC_TEST_PRINCIPAL"],
        keytab=Path(env["WINEXEC_TEST_KEYTAB"]),
        krb5_conf=Path(env["WINEXEC_TEST_KRB5_CONF"]),
        python=env.get("WINEXEC_TEST_PYTHON") or "python",
        https=env.get("WINEXEC_TEST_HTTPS") == "1",
    )


@pytest.fixture
def winexec_env(real_host: RealHost, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {**real_host.winexec_env(), "KRB5_CONFIG": str(real_host.krb5_conf)}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture(scope="session")
def ccache(real_host: RealHost, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A forwardable TGT of the principal from its keytab (MIT ``kinit``, as the executor gets it)."""
    kinit = shutil.which("kinit")
    if kinit is None:
        pytest.fail("kinit is not installed (Debian: krb5-user)")
    path = tmp_path_factory.mktemp("krb") / "cc"
    subprocess.run(
        [kinit, "-f", "-k", "-t", str(real_host.keytab), "-c", f"FILE:{path}", real_host.principal],
        env={**os.environ, "KRB5_CONFIG": str(real_host.krb5_conf)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def run_python(real_host: RealHost, ccache: Path, code: str, *, delegate: bool = False) -> list[str]:
    """``<python> -c <code>`` in a PSRP shell of the principal on the host; its output lines."""
    import spnego
    from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool
    from pypsrp.wsman import WSMan

    os.environ["KRB5_CONFIG"] = str(real_host.krb5_conf)
    wsman = WSMan(
        real_host.name,
        port=5986 if real_host.https else 5985,
        ssl=real_host.https,
        auth="kerberos",
        negotiate_delegate=delegate,
        username=spnego.KerberosCCache(  # type: ignore[arg-type]  # pyspnego's credential object
            ccache=f"FILE:{ccache}", principal=real_host.principal
        ),
    )
    with RunspacePool(wsman) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet(real_host.python).add_argument("-c").add_argument(code)
        ps.invoke()
        errors = [str(e) for e in ps.streams.error]
        assert ps.state == PSInvocationState.COMPLETED, errors
        return [str(o) for o in ps.output]

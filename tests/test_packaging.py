"""The Windows host installs from PyPI with only what the agent needs.

The project's wheel is built, then docs/windows-host-setup.md's own host install command is resolved
for Windows (``--dry-run --platform win_amd64 --python-version ...``) with the project name replaced
by that wheel. Needs PyPI; each resolve takes some seconds.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOST_DOC = ROOT / "docs" / "windows-host-setup.md"

#: the scheduler side (the ``scheduler`` extra) and the test side's Kerberos/WinRM clients
NOT_ON_HOST = {
    "gssapi",
    "krb5",
    "pykerberos",
    "pypsrp",
    "pyspnego",
    "pywinrm",
    "psrpcore",
    "requests-kerberos",
}

#: ``pip --platform/--python-version`` choose wheels, but pip evaluates environment markers against
#: the interpreter running it (pypa/pip#6117): on Linux, uvicorn[standard] (from airflow-core) then
#: asks for uvloop, which has no Windows wheel. Run pip with the marker environment of a Windows
#: CPython of the target version, as the administrator's pip has.
_PIP_AS_WINDOWS = """
import runpy, sys
from pip._vendor.packaging import markers
ver = sys.argv.pop(1)
env = {**markers.default_environment(), "implementation_name": "cpython",
       "implementation_version": ver + ".0", "os_name": "nt", "platform_machine": "AMD64",
       "platform_python_implementation": "CPython", "platform_release": "10",
       "platform_system": "Windows", "platform_version": "10.0.20348",
       "python_full_version": ver + ".0", "python_version": ver, "sys_platform": "win32"}
markers.default_environment = lambda: dict(env)
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _needs(item: dict[str, Any]) -> set[str]:
    """What a report entry's distribution requires without extras."""
    reqs = item["metadata"].get("requires_dist", [])
    return {_canonical(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) for r in reqs if "extra ==" not in r}


def _host_install_args() -> list[str]:
    """The pip arguments of the docs' ``py -3.X -m pip install winexec`` line (powershell block)."""
    blocks = re.findall(r"^```powershell\n(.*?)^```", HOST_DOC.read_text(), re.S | re.M)
    found = []
    for line in (ln.split("#", 1)[0].strip() for b in blocks for ln in b.splitlines()):
        words = shlex.split(line)
        if words[:1] == ["py"] and words[2:5] == ["-m", "pip", "install"]:
            if any(re.fullmatch(r"winexec(\[.*\])?", w) for w in words[5:]):
                found.append(words)
    assert len(found) == 1, f"expected one `py -3.X -m pip install winexec` line in {HOST_DOC.name}: {found}"
    assert re.fullmatch(r"-3\.\d+", found[0][1]), found[0]
    return found[0][4:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the tree (setuptools writes build/ beside the source)."""
    tmp = tmp_path_factory.mktemp("wheel")

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(folder) == ROOT:
            skip |= {n for n in names if n.startswith(".") or n in ("build", "dist")}
        return skip

    shutil.copytree(ROOT, tmp / "src", ignore=ignore)
    # Build isolation: the venv's setuptools may be older than [build-system] requires.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(tmp / "src")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = (tmp / "dist").glob("winexec-*.whl")
    return built


@pytest.mark.timeout(900)
@pytest.mark.parametrize("python_version", ["3.11", "3.12"])
def test_host_install_resolves_for_windows_without_the_scheduler_side(
    wheel: Path, python_version: str, tmp_path: Path
) -> None:
    args = [re.sub(r"^winexec(?=\[|$)", lambda _: str(wheel), a) for a in _host_install_args()]
    report = tmp_path / "report.json"
    dry_run = [
        "--dry-run",
        "--ignore-installed",
        "--only-binary=:all:",
        "--platform",
        "win_amd64",
        "--python-version",
        python_version,
        "--target",
        str(tmp_path / "target"),
        "--report",
        str(report),
    ]
    cmd = [sys.executable, "-c", _PIP_AS_WINDOWS, python_version, args[0], *dry_run, *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=840)
    # (this machine's pip config names local indexes that lack some projects: pip warns per project)
    stderr = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING: Location"))
    if proc.returncode:
        pytest.fail(f"pip {shlex.join(cmd[4:])}\n{stderr}")

    install = {_canonical(i["metadata"]["name"]): i for i in json.loads(report.read_text())["install"]}
    assert {"winexec", "apache-airflow-task-sdk"} <= install.keys(), sorted(install)
    scheduler_side = sorted(NOT_ON_HOST & install.keys())
    assert not scheduler_side, f"the host would install {scheduler_side}"
    assert "requested_extras" not in install["winexec"], install["winexec"]["requested_extras"]
    assert "apache-airflow" not in _needs(install["winexec"]), _needs(install["winexec"])
    # The apache-airflow meta-package still comes, though not from winexec: the Task SDK requires
    # airflow-core, whose bundled providers (common-compat, standard, ...) require apache-airflow.
    # Without extras it adds nothing but core and the Task SDK.
    if "apache-airflow" in install:
        brings = _needs(install["apache-airflow"])
        assert brings <= {"apache-airflow-core", "apache-airflow-task-sdk"}, brings


def test_host_side_imports_without_the_scheduler_side() -> None:
    code = """
import sys
for mod in ("pypsrp", "spnego", "gssapi", "krb5", "winrm", "psrpcore", "kerberos", "requests_kerberos"):
    sys.modules[mod] = None  # as not installed: importing it raises ImportError
import winexec, winexec.protocol, winexec.provider
import winexec.agent.main, winexec.agent.coordinator, winexec.agent.runner, winexec.agent.hostinfo
import winexec.agent.hostlog, winexec.agent.events, winexec.agent.spool, winexec.agent.containment
assert winexec.provider.get_provider_info()["executors"] == ["winexec.WindowsKerberosExecutor"]
try:
    winexec.WindowsKerberosExecutor
except ImportError as e:
    print(e)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "winexec[scheduler]"' in proc.stdout, proc.stdout

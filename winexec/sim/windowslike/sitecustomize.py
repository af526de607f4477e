"""Make this interpreter look like CPython on Windows where POSIX-only APIs are concerned.

Installed by winexec.sim (windows-like mode) as the first ``PYTHONPATH`` entry of every process
it starts. Removed: ``os.fork``, ``os.forkpty``, ``os.killpg``, ``os.setpgid``, ``os.setsid``,
``os.getpgid``, ``signal.SIGKILL``, ``signal.SIGALRM``, ``signal.SIGUSR1``, ``signal.SIGUSR2``,
``signal.setitimer``. Unimportable: ``fcntl``, ``pwd``, ``grp``, ``resource``, ``termios``.

Three adjustments keep portable code portable (they are no loophole for code under test):

- ``subprocess.Popen.kill`` is ``Popen.terminate`` (on Windows both are ``TerminateProcess``),
  because the POSIX version reads ``signal.SIGKILL``, which Windows has not.
- cross-platform libraries in ``_OWN_BACKENDS`` (psutil) may import the blocked modules from
  their *own* POSIX backend (``psutil._pslinux`` imports ``resource``): on Windows they load a
  Windows backend instead, so blocking them there would be a failure Windows never has.
- a module that is already in ``sys.modules`` under a blocked name *and* marked
  ``__winexec_shim__`` (the agent's ``fcntl`` shim) is returned, as CPython on Windows returns
  any module in ``sys.modules``; the real POSIX modules stay refused.
"""

import builtins
import os
import signal
import sys

_OS = ("fork", "forkpty", "killpg", "setpgid", "setsid", "getpgid")
_SIGNAL = ("SIGKILL", "SIGALRM", "SIGUSR1", "SIGUSR2", "setitimer")
_BLOCKED = frozenset({"fcntl", "pwd", "grp", "resource", "termios"})
_OWN_BACKENDS = ("psutil",)

for _name in _OS:
    if hasattr(os, _name):
        delattr(os, _name)
for _name in _SIGNAL:
    if hasattr(signal, _name):
        delattr(signal, _name)


class _WindowsLikeFinder:
    """Meta path finder that refuses POSIX-only modules the way Windows CPython lacks them."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname.partition(".")[0] in _BLOCKED and not _from_own_backend():
            raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return None

    @staticmethod
    def invalidate_caches():
        return None


def _from_own_backend():
    """Whether the import statement being executed is in one of ``_OWN_BACKENDS``."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
            return name.partition(".")[0] in _OWN_BACKENDS
        frame = frame.f_back  # type: ignore[assignment]
    return False


for _name in list(sys.modules):
    if _name.partition(".")[0] in _BLOCKED:
        del sys.modules[_name]
sys.meta_path.insert(0, _WindowsLikeFinder())

_original_import = builtins.__import__


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    # Also refuse a blocked module another library already loaded (sys.modules would
    # otherwise satisfy ``import pwd`` without asking the finder).
    if level == 0 and name.partition(".")[0] in _BLOCKED:
        shim = sys.modules.get(name)
        if shim is not None and getattr(shim, "__winexec_shim__", False):
            return shim
        caller = (globals or {}).get("__name__", "") or ""
        if caller.partition(".")[0] not in _OWN_BACKENDS:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    return _original_import(name, globals, locals, fromlist, level)


builtins.__import__ = _import

try:
    import subprocess as _subprocess

    _subprocess.Popen.kill = _subprocess.Popen.terminate  # type: ignore[method-assign]
except Exception:  # pragma: no cover - never break interpreter start-up
    pass

os.environ.setdefault("WINEXEC_SIM_WINDOWS_LIKE", "1")

"""Windows-like mode for the agent tests: the stand-in's own, plus one Windows-faithful rule.

Runs ``winexec/sim/windowslike/sitecustomize.py`` unchanged, then lets ``import fcntl`` (etc.)
return a module that is already in ``sys.modules`` *and* marked ``__winexec_shim__`` -- which is
what CPython on Windows does for any module in ``sys.modules``. The stand-in's import hook
refuses even those, so without this the agent's documented ``fcntl`` shim
(:func:`winexec.agent.compat.install_fcntl`) could not be exercised. Real POSIX modules stay
refused.
"""

import builtins
import runpy
import sys
from pathlib import Path

_SIM = Path(__file__).resolve().parents[2] / "winexec" / "sim" / "windowslike" / "sitecustomize.py"
runpy.run_path(str(_SIM), run_name=__name__)  # same name: its frame checks skip ours too

_POSIX_ONLY = frozenset({"fcntl", "pwd", "grp", "resource", "termios"})
_sim_import = builtins.__import__


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name in _POSIX_ONLY:
        mod = sys.modules.get(name)
        if mod is not None and vars(mod).get("__winexec_shim__"):
            return mod
    return _sim_import(name, globals, locals, fromlist, level)


builtins.__import__ = _import

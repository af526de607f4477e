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

File names as NTFS/Win32 refuse them: ``open``, ``io.open``, ``os.open``, ``os.mkdir`` (so
``os.makedirs`` and ``pathlib``), ``os.rename``, ``os.replace``, ``os.link``, ``os.symlink``,
``os.unlink``, ``os.remove`` and ``os.rmdir`` raise ``OSError(EINVAL)`` with ``winerror`` 123
(ERROR_INVALID_NAME) when a path component has one of ``< > : " | ? *`` or a control character,
ends in a dot or a space, or is a reserved device name (``CON``, ``nul.txt``, ``COM1``, ...).
Stricter than Windows in three cases where Windows silently goes elsewhere: Win32 strips a
trailing dot/space, a device name opens the device, ``name:x`` is an NTFS alternate data stream.
"""

import builtins
import errno
import functools
import io
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

_BAD_CHARS = frozenset('<>:"|?*' + "".join(map(chr, range(1, 32))))  # NUL: CPython's ValueError
_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{d}{n}" for d in ("COM", "LPT") for n in "123456789\xb9\xb2\xb3"]
)
_INVALID_NAME = "The filename, directory name, or volume label syntax is incorrect"


def _check_name(path):
    """Raise Windows' ERROR_INVALID_NAME if a component of ``path`` is no valid NTFS name."""
    if isinstance(path, int):
        return
    try:
        text = os.fspath(path)
    except TypeError:
        return  # the wrapped function reports the wrong type itself
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    for part in text.replace("\\", "/").split("/"):
        if not part or part == "." or part == "..":
            continue
        if part[-1] in ". " or not _BAD_CHARS.isdisjoint(part) or part.partition(".")[0].upper() in _DEVICES:
            error = OSError(errno.EINVAL, _INVALID_NAME, path)
            error.winerror = 123  # type: ignore[attr-defined]
            raise error


def _checking(function, *names):
    """``function`` checking its path arguments ``names`` (positional or keyword) first."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        for i, name in enumerate(names):
            _check_name(args[i] if i < len(args) else kwargs.get(name))
        return function(*args, **kwargs)

    # ``os.supports_dir_fd`` & co. hold the functions themselves (shutil.rmtree asks them)
    for capability in (os.supports_dir_fd, os.supports_fd, os.supports_follow_symlinks):
        if function in capability:
            capability.add(wrapper)
    return wrapper


builtins.open = io.open = _checking(builtins.open, "file")
for _name in ("open", "mkdir", "unlink", "remove", "rmdir"):
    setattr(os, _name, _checking(getattr(os, _name), "path"))
for _name in ("rename", "replace", "link", "symlink"):
    setattr(os, _name, _checking(getattr(os, _name), "src", "dst"))

os.environ.setdefault("WINEXEC_SIM_WINDOWS_LIKE", "1")

"""Fixtures of the opt-in real-host suite (tests/windows/real_host.py)."""

from tests.windows.real_host import ccache, real_host, winexec_env

__all__ = ["ccache", "real_host", "winexec_env"]

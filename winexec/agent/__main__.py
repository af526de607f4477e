"""``python -m winexec.agent``: see :mod:`winexec.agent.main`."""

from __future__ import annotations

import sys

from winexec.agent.main import main


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--warm"]:  # its own module: it builds on main's AgentRun
        from winexec.agent import warm

        return warm.cli(argv)
    return main(argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

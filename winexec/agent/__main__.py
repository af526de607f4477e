"""``python -m winexec.agent``: see :mod:`winexec.agent.main`."""

from __future__ import annotations

import sys

from winexec.agent.main import main

if __name__ == "__main__":
    sys.exit(main())

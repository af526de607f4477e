"""Windows-like mode: ``SITE_DIR`` goes first on ``PYTHONPATH`` of processes the sim starts.

Its ``sitecustomize.py`` removes the POSIX-only parts of ``os``/``signal`` and makes POSIX-only
modules unimportable, so a POSIX-only call on the host path fails in tests as on Windows.
Never put it on the server's own path: the sim itself needs these to run child processes.
"""

from pathlib import Path

SITE_DIR = Path(__file__).resolve().parent

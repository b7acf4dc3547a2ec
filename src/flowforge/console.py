"""The ``flowforge`` executable: signals are taken in hand before torch is imported.

Importing torch takes a second or two; a Ctrl-C or SIGTERM in that time would otherwise end
in Python's ``KeyboardInterrupt`` traceback. Here either exits at once with the shell's
status for the signal (130, 143), then `flowforge.cli.main()` takes over.
"""

from __future__ import annotations

import signal
import sys


def _exit_quietly(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    """Run the command line (see `flowforge.cli`)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _exit_quietly)
    from flowforge.cli import main as run  # imports torch

    return run(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

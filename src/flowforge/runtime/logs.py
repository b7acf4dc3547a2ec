"""flowforge's messages go through `logging`, under the logger ``"flowforge"``.

Warnings (a rollback, a compilation that failed, nothing to resume) are ``WARNING`` records;
a training run's one line per epoch (written where a progress bar would not fit: a log
file, CI, ``nohup``) and its decisions (a compiled step) are ``INFO`` records of
``"flowforge.progress"``. The library adds no handler of its own, except that while `fit`
shows progress and nothing has configured logging (no handler on ``"flowforge"`` or the
root logger), `showing_progress` prints the records on stderr, as the command line always
does (`installed`). So a user can silence them::

    logging.getLogger("flowforge").setLevel(logging.ERROR)

or send them elsewhere with any handler (``logging.basicConfig(filename=...)``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ROOT = "flowforge"


def logger(name: str) -> logging.Logger:
    """The logger ``flowforge.<name>``."""
    return logging.getLogger(f"{ROOT}.{name}")


class _Stderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a record comes (a stream
    replaced since, as tests and notebooks replace it, is followed)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; the property decides
        pass


def _stderr_handler() -> logging.Handler:
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


@contextmanager
def _on_stderr(level: int) -> Iterator[None]:
    """flowforge's records of ``level`` and above on stderr while the block runs."""
    top = logging.getLogger(ROOT)
    handler, before = _stderr_handler(), top.level
    top.addHandler(handler)
    top.setLevel(level)
    try:
        yield
    finally:
        top.removeHandler(handler)
        top.setLevel(before)


@contextmanager
def showing_progress(enabled: bool = True) -> Iterator[None]:
    """While the block runs: flowforge's records of level INFO and above (or of the level a
    user set) on stderr, if ``enabled`` and logging has not been configured (else as
    configured)."""
    top = logging.getLogger(ROOT)
    if not enabled or top.hasHandlers():
        yield
        return
    with _on_stderr(logging.INFO if top.level == logging.NOTSET else top.level):
        yield


@contextmanager
def installed() -> Iterator[None]:
    """The command line's logging while the block runs: flowforge's INFO records and above
    on stderr, one message a line."""
    with _on_stderr(logging.INFO):
        yield


__all__ = ["ROOT", "installed", "logger", "showing_progress"]

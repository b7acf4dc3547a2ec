"""SIGINT and SIGTERM as orderly stops: finish the step or the write under way, save, exit.

Inside `handling()` (the command line wraps every command in it; `flowforge.fit()`
uses it while it trains) the first SIGINT (Ctrl-C) or SIGTERM (``kill``, batch schedulers)
is noted. Outside a `deferred()` block it raises `Interrupted` at once (setup,
plotting: nothing there is lost); inside one (a training step, a save) it waits until the
block ends, so a step is never half-applied and a file never half-written. A second signal
does not wait: the temporary files of writes in flight are removed and the process exits
(``hard_exit``) or `Interrupted` is raised where it lands. Every file flowforge
writes is replaced atomically (`flowforge.runtime.atomic`), so neither way corrupts one.

Examples:
    >>> with handling():
    ...     with deferred():
    ...         pass  # a signal arriving here would be raised on leaving the block
    >>> pending() is None
    True
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from flowforge.runtime import atomic

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; ``exit_code`` is the shell's ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.pending: int | None = None
        self.depth = 0  # nesting of deferred blocks
        self.handlers = 0  # nesting of handling blocks
        self.hard_exit = False
        self.raised = False  # Interrupted was raised for the pending signal


_state = _State()


def _handler(signum: int, frame) -> None:
    if _state.pending is not None:  # a second signal: stop now
        atomic.remove_temporaries()
        if _state.hard_exit:
            name = signal.Signals(signum).name
            print(f"flowforge: second {name}: exiting at once", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        raise Interrupted(signum)
    _state.pending = signum
    if _state.depth == 0:
        _state.raised = True
        raise Interrupted(signum)


def pending() -> int | None:
    """The signal noted and not yet acted on, if any."""
    return _state.pending


def clear() -> None:
    """Forget a noted signal, so that the next one counts as a first."""
    _state.pending, _state.raised = None, False


@contextlib.contextmanager
def handling(hard_exit: bool = False) -> Iterator[None]:
    """Treat SIGINT and SIGTERM as described above while the block runs (main thread only;
    elsewhere the block runs with the handlers as they are). ``hard_exit``: a second signal
    exits the process with ``128 + signum`` instead of raising."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    outer = _state.handlers == 0
    if outer:
        clear()
        _state.hard_exit = hard_exit
    _state.handlers += 1
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        _state.handlers -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)
        if outer:
            clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a first signal does not cut short: it is raised as `Interrupted`
    when the outermost such block ends, once (later blocks, such as the saves that follow,
    run to their end)."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if _state.depth == 0 and _state.pending is not None and not _state.raised:
        _state.raised = True
        raise Interrupted(_state.pending)


__all__ = ["Interrupted", "clear", "deferred", "handling", "pending"]

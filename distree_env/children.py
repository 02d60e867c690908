"""Child processes that end with the process that started them.

Why: a long job (the live launcher, the batch of training runs) starts processes of its own. A
SIGTERM or SIGHUP ends a Python process at once, without its ``finally`` clean-up, and a SIGKILL
leaves no clean-up to run at all: without these, its children would go on without it (a
training run would still replace shipped agents after the user stopped the batch).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

__all__ = ["STOP_SIGNALS", "die_with", "stop_on_signals"]

#: Signals that end a parent the way an exception would, so that its clean-up stops its children.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: ``prctl`` option: the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child killed when ``parent`` dies, even by SIGKILL, which
    no clean-up of the parent's own can answer (Linux; elsewhere None)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None).prctl  # looked up here: the child only calls it (no import there)

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)

    return arm


def stop_on_signals() -> dict[int, object]:
    """Turn :data:`STOP_SIGNALS` into ``SystemExit(128 + signal)`` (by default they end the
    process at once, without its clean-up); returns the handlers to restore."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        return {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread: signals stay as they are
        return {}

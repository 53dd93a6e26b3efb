"""Graceful stop on SIGTERM / SIGINT for the training loops (what schedulers send before they kill a job).

A loop creates one :class:`GracefulStop` before its first step, checks :attr:`GracefulStop.requested` after each
step (all-reduced across processes, so every process stops at the same step), saves a checkpoint and returns;
:meth:`GracefulStop.restore` puts the previous handlers back. A second SIGINT aborts at once (KeyboardInterrupt).
Handlers are only installed from the main thread (``signal.signal`` refuses elsewhere).
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stopped_message(step: int) -> str:
    """The one line a loop stopped by a signal ends with."""
    return f"stopped by signal at step {step}; checkpoint saved, continue with --resume latest"


class GracefulStop:
    """SIGTERM / SIGINT finish the current step, save a checkpoint and return; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def __enter__(self) -> GracefulStop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

"""Ctrl-C and SIGTERM as a flag: the handler only records the signal.

Nothing is raised from inside the handler, so a signal never lands in the middle of a database
commit or between writing a checkpoint file and recording it. The trainer checks the flag
between batches (`vae_tune.training.trainer.train(should_stop=...)`) and stops within a
batch; the worker loop checks it between trials and while it waits.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Interrupts:
    """SIGINT/SIGTERM handling for a worker (installed while used as a context manager)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._event = threading.Event()
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:  # later signals change nothing while the worker cleans up
            self.signum = signum
        self._event.set()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking at once on a signal."""
        self._event.wait(seconds)

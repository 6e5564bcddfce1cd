"""Progress of a benchmark run on stderr: a tqdm bar per phase on a terminal, one line per step elsewhere.

A log file (``detect-bench ... 2> bench.log``) gets plain lines, not the
carriage returns of a bar.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from specdet.progress import on_terminal


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = enabled and on_terminal(self._stream)
        self._bar: tqdm | None = None
        self._start = time.monotonic()

    def phase(self, name: str, total: int | None) -> None:
        """Start a phase of ``total`` steps (None: unknown)."""
        self.close()
        if self._tty:
            self._bar = tqdm(total=total, desc=name, unit="step", file=self._stream, leave=False, dynamic_ncols=True)

    def note(self, text: str) -> None:
        """What is happening now: the bar's label on a terminal, a line elsewhere."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        elif self._enabled:
            print(f"[{time.monotonic() - self._start:7.1f} s] {text}", file=self._stream, flush=True)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

"""Progress bars for long work, shown on terminals only.

A bar redraws itself with carriage returns: in a log file or CI output that
is a wall of frames. So every bar in specdet comes from :func:`bar`, which
draws on stderr only when stderr is a terminal (and the caller wants it).
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def on_terminal(stream: Any = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


def bar(*, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr, disabled unless ``enabled`` and stderr is a terminal."""
    options.setdefault("file", sys.stderr)
    return tqdm(disable=not (enabled and on_terminal(options["file"])), **options)

"""User-facing errors: one line saying what is wrong and what to do.

Library code raises :class:`SpecdetError` (or a subclass) for anything a user
can fix: a missing file, a file of the wrong kind, an unknown architecture.
The command-line tools print its message on one line, without a traceback
(``--debug`` shows it), and exit non-zero. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class SpecdetError(Exception):
    """An error the user can fix; its message says what is wrong and what to do."""


class ExportValidationError(SpecdetError):
    """The exported ONNX file does not reproduce the PyTorch model."""

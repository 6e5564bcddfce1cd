"""Silence the dynamo exporter's step-by-step logging and internal warnings.

``torch.onnx`` prints each export step and onnxscript's optimizer warns about
constant folding it skips: noise a user of ``detect-export`` cannot act on.
Real failures still raise.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

_LOGGERS = ("torch.onnx", "onnxscript")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)

"""What every command-line tool shares: one-line errors, ``--debug``, exit codes, argument ranges.

Exit codes of every ``detect-*`` command:

    0    done
    1    done, but some inputs were skipped (each one reported on stderr)
    2    a user error: a bad flag, file or artifact (one line on stderr saying what to do)
    3    an internal error: a bug in specdet (one line; rerun with --debug for the traceback)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import errno
import io
import math
import os
import sys
from collections.abc import Callable

from specdet.errors import SpecdetError  # noqa: F401  (re-exported for the CLIs)
from specdet.limits import MAX_BATCH, MAX_PIXELS_CEILING, MAX_THREADS, MAX_WORKERS

EXIT_SKIPPED = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the usual one-line error: ``prog: error: MESSAGE (see prog --help)``, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high`` (inclusive; None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a whole number {bound}")
        return value

    return parse


def number_range(low: float, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``low`` (or above it, with ``above``) to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value <= low if above else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            start = f"above {low:g}" if above else f"from {low:g}"
            bound = f"{start} to {high:g}" if high is not None else ("above " if above else "of at least ") + f"{low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {bound}")
        return value

    return parse


THREADS = int_range(1, MAX_THREADS)
BATCH = int_range(1, MAX_BATCH)
PIXELS = int_range(1, MAX_PIXELS_CEILING)
POSITIVE = int_range(1)
WORKERS = int_range(0, MAX_WORKERS)
PROBABILITY = number_range(0.0, 1.0)


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command(args)``; errors become one line on stderr and their exit code (see the module doc)."""
    _hold_closed_streams()
    try:
        code = command(args)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not in a traceback at exit
        return code
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as other tools do
        _discard_stdout()
        return EXIT_SKIPPED
    except SpecdetError as err:
        if args.debug:
            raise
        print(f"{_name()}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{_name()}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:  # the disk, not specdet: full, read-only, permissions
        if args.debug:
            raise
        _discard_stdout()
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"{_name()}: error: {err.strerror or err}{where}: check the output location and free space",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as err:  # noqa: BLE001 (a bug: say so in one line, keep the traceback for --debug)
        if args.debug:
            raise
        print(f"{_name()}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback "
              "and report it)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


class _ClosedStdout(io.TextIOBase):
    """``sys.stdout`` of a process started with it closed (``>&-``): a command that prints its results
    fails in one line (an OSError, exit 2) when it first writes; one that writes only files runs."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed (started with >&-): redirect it to a file or "
                      "/dev/null instead")

    def fileno(self) -> int:
        return 1


def _hold_closed_streams() -> None:
    """Make descriptors 1 and 2 safe when the process started with them closed (Python then sets None).

    Each gets /dev/null first, so that a file opened later cannot take the number and receive what a
    library prints to it; stderr then discards, and stdout fails on the first print (:class:`_ClosedStdout`).
    """
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        setattr(sys, name, _ClosedStdout() if fd == 1 else open(fd, "w", closefd=False))  # noqa: SIM115


def _discard_stdout() -> None:
    """Point stdout at /dev/null when it cannot be written, so Python's flush at exit adds no traceback."""
    try:
        sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _name() -> str:
    return sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "specdet"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())

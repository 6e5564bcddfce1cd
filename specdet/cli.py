"""What every command-line tool shares: ``--debug`` and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from specdet.errors import SpecdetError  # noqa: F401  (re-exported for the CLIs)

# Exit status of a command that stopped on a user error (bad file, bad flag).
EXIT_USER_ERROR = 2


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command(args)``; a :class:`SpecdetError` becomes one line on stderr and exit 2."""
    try:
        return command(args)
    except SpecdetError as err:
        if args.debug:
            raise
        name = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "specdet"
        print(f"{name}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

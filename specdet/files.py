"""File helpers shared by checkpoints, manifests and engines: atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from specdet.errors import SpecdetError


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic, so a reader sees the old file or the complete new
    one, never a half-written one, even if ``write`` fails or the process dies.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode any new file gets.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks (checkpoints and engines are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output(path: str | os.PathLike, what: str, *, inputs: tuple[str | os.PathLike, ...] = (),
                 folder: bool = False) -> Path:
    """Refuse, before any work starts, an output that cannot be written or would destroy an input.

    ``path`` is where the ``what`` (e.g. "checkpoint") will go: a file, or a
    folder with ``folder``. Missing parent folders are fine (they are made
    when writing); an existing folder where a file is wanted, a file where a
    folder is wanted, a parent that is a file or is read-only, or the same
    file as one of ``inputs`` are one-line errors.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise SpecdetError(f"{path} is a file: give a folder for the {what}")
    if not folder and path.is_dir():
        raise SpecdetError(f"{path} is a folder: give a file name for the {what}")
    for source in inputs:
        if path.resolve() == Path(source).resolve():
            raise SpecdetError(f"{path} is also an input: writing the {what} there would destroy it; give another name")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SpecdetError(f"cannot write the {what} to {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SpecdetError(f"cannot write the {what} to {path}: {ancestor} is not writable")
    return path


def check_outputs(outputs: Sequence[tuple[str | os.PathLike, str]], *, inputs: tuple[str | os.PathLike, ...] = ()) -> None:
    """:func:`check_output` for each ``(path, what)`` of one command, and no two of them the same file.

    A command's companion files count: an engine and its sidecar, a report's
    ``.json`` and ``.md``; one written over another loses the first.
    """
    seen: dict[Path, str] = {}
    for path, what in outputs:
        check_output(path, what, inputs=inputs)
        other = seen.setdefault(Path(path).resolve(), what)
        if other != what:
            raise SpecdetError(f"{path} would be both the {other} and the {what}: give another name")

"""File helpers shared by checkpoints, manifests and engines: atomic writes and content hashes.

Temporary files are written beside their output as ``.NAME.PID.partial``
(:func:`partial_path`) or ``.NAME.PID.RANDOM.tmp`` (:func:`atomic_write`, and
folders from :func:`temporary_folder`), so that the next write of ``NAME``
can tell the leftovers of a killed process (its PID no longer runs) from the
work of one still running, and removes only those (:func:`remove_stale`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from specdet.errors import SpecdetError
from specdet.images import IMAGE_SUFFIXES


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic, so a reader sees the old file or the complete new
    one, never a half-written one, even if ``write`` fails or the process dies.
    """
    path = Path(path)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
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


def partial_path(path: str | os.PathLike) -> Path:
    """Where a writer that renames its own temporary (ONNX export) writes ``path`` first; stale ones are removed."""
    path = Path(path)
    remove_stale(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def temporary_folder(path: str | os.PathLike) -> Path:
    """A new folder beside ``path`` for intermediate files of writing it; the caller removes it."""
    path = Path(path)
    remove_stale(path)
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` that killed processes left (the patterns above); returns them.

    Only names of exactly our patterns for this ``path`` are touched, and only
    when the process that made them has ended: a concurrent writer's stay.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.(?:partial|[A-Za-z0-9_]+\.tmp)")
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # a parent not made yet, or unreadable: nothing of ours is there
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _running(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):  # ended; or a number no PID reaches
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
    folder is wanted, a parent that is a file or is read-only, the same
    file as one of ``inputs``, or an image inside an input folder are one-line errors.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise SpecdetError(f"{path} is a file: give a folder for the {what}")
    if not folder and path.is_dir():
        raise SpecdetError(f"{path} is a folder: give a file name for the {what}")
    for source in inputs:
        source = Path(source).resolve()
        if path.resolve() == source:
            raise SpecdetError(f"{path} is also an input: writing the {what} there would destroy it; give another name")
        # An input folder's images are inputs too (a training image given as -o); other files in it are not.
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and source in path.resolve().parents:
            raise SpecdetError(f"{path} is an image in the input folder {source}: writing the {what} there would "
                               "destroy it; give another name")
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

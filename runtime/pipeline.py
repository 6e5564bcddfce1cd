"""Files to uint8 crops in parallel: worker processes read, decode, resize and crop into shared-memory batches.

One process decoding JPEGs with Pillow delivers a few hundred images a
second, a small fraction of what a GPU scores (and on a CPU it leaves cores
idle while the model waits). :class:`InputPipeline` runs ``workers``
processes, each reading whole batches of files with
:func:`~specdet.runtime.preprocess.image_crop` (the same code as the serial
path, so the crops are byte-identical) into one of a fixed number of batch
slots in shared memory; the consumer gets the batches back in order.

- **Bounded memory**: ``depth`` slots (default two per worker) of
  ``batch x crop x crop x 3`` bytes; a slot is reused only once the consumer
  has asked for the next batch, so a slow consumer stalls the workers instead
  of growing a queue.
- **Errors per file**, as the serial path reports them (:class:`ImageError`
  reasons); a worker that dies (killed, or crashed in a decoder) is replaced
  and its batch read again once; if that worker dies too, the batch's files
  are reported with the reason, and the run goes on.
- **Nothing left behind**: the slots live in one anonymous shared mapping
  (``multiprocessing.RawArray``: its file is unlinked as soon as it is made),
  so even a SIGKILL leaves no segment; workers ignore SIGINT and are ended by
  the consumer when it stops, Ctrl-C included.
- **workers=0** reads in the calling process: the serial loop, no processes.

Workers are forked, as PyTorch's DataLoader workers are: they start in
milliseconds, re-run nothing of the caller's script (``spawn`` and
``forkserver`` re-import ``__main__``, which breaks ``python -`` and runs an
unguarded script once per worker), and share the slots without naming them.
A forked child must not use what other threads of its parent held: the
workers only run Pillow and NumPy on their own data, never torch, CUDA or
the backend's thread pools.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from specdet.limits import MAX_SLOT_BYTES, MAX_WORKERS, check_count
from specdet.runtime.preprocess import ImageError, check_spec, image_crop

_POLL_S = 1.0  # how often a waiting consumer looks for dead workers that closed no pipe


def default_workers() -> int:
    """The CPUs this process may run on: the default ``--workers``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclasses.dataclass
class Batch:
    """One batch of files read: each file's error (None when read) and frame count, and the crops of the
    readable ones, in order. ``crops`` is a view of a shared slot: valid until the next batch is asked for."""

    paths: list[str]
    errors: list[str | None]
    frames: list[int]
    crops: np.ndarray  # [readable, crop, crop, 3] uint8

    @property
    def readable(self) -> list[int]:
        return [i for i, error in enumerate(self.errors) if error is None]


def read_batch(paths: Sequence[str], spec: dict[str, Any], max_pixels: int, out: np.ndarray) -> tuple[list, list]:
    """Read ``paths`` into ``out`` (``[len(paths), crop, crop, 3]`` uint8), readable ones first, in order.

    Returns each file's error (None when read) and frame count. The one loop
    that both the workers and the serial path run.
    """
    errors: list[str | None] = []
    frames: list[int] = []
    filled = 0
    for path in paths:
        try:
            out[filled], count = image_crop(path, spec, max_pixels)
        except ImageError as err:
            errors.append(err.reason)
            frames.append(1)
            continue
        filled += 1
        errors.append(None)
        frames.append(count)
    return errors, frames


def _worker(conn: Connection, slots: Any, shape: tuple[int, ...], spec: dict[str, Any], max_pixels: int) -> None:
    """A worker's loop: ``(slot, paths)`` in, ``(errors, frames)`` out, until ``None`` or a closed pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle: it ends us
    views = np.frombuffer(slots, dtype=np.uint8).reshape(shape)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        slot, paths = task
        conn.send(read_batch(paths, spec, max_pixels, views[slot]))


class _Worker:
    """One worker process and its end of the pipe, and the batch it holds."""

    def __init__(self, context, slots, shape, spec, max_pixels):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, slots, shape, spec, max_pixels), daemon=True)
        self.process.start()
        child.close()
        self.task: tuple[int, int] | None = None  # (batch number, slot) while busy

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class InputPipeline:
    """Read files in ``workers`` processes into ``depth`` shared batch slots; :meth:`batches` yields them in order.

    ``spec`` is the artifact's preprocessing, ``batch_size`` the files per
    batch. Use as a context manager (or call :meth:`close`): closing ends the
    workers. ``report`` gets a line when a worker died and was replaced.
    """

    def __init__(self, spec: dict[str, Any], max_pixels: int, batch_size: int, workers: int,
                 depth: int | None = None, report: Callable[[str], None] | None = None):
        check_spec(spec)
        self.spec, self.max_pixels, self.batch_size = spec, max_pixels, batch_size
        self.workers = check_count(workers, "workers", MAX_WORKERS, low=0)
        crop = spec["crop"]
        fits = max(2, MAX_SLOT_BYTES // (batch_size * crop * crop * 3))
        self.depth = check_count(depth or min(2 * max(workers, 1), fits), "depth", 4 * MAX_WORKERS)
        self.report = report or (lambda line: print(line, file=sys.stderr))
        self.restarts = 0
        self._shape = (self.depth if workers else 1, batch_size, crop, crop, 3)
        self._pool: list[_Worker] = []
        self._slots = None
        if workers:
            context = multiprocessing.get_context("fork")
            self._context = context
            self._slots = context.RawArray(ctypes.c_uint8, int(np.prod(self._shape)))
            self._views = np.frombuffer(self._slots, dtype=np.uint8).reshape(self._shape)
        else:
            self._views = np.empty(self._shape, dtype=np.uint8)

    def __enter__(self) -> InputPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End the workers (a second call does nothing)."""
        pool, self._pool = self._pool, []
        for worker in pool:
            worker.stop()

    @property
    def slots(self) -> np.ndarray:
        """All batch slots, ``[depth, batch, crop, crop, 3]`` uint8: a runner may pin this memory once."""
        return self._views

    def batches(self, paths: Sequence[str]) -> Iterator[Batch]:
        """The batches of ``paths`` (``batch_size`` files each, the last one shorter), read, in order."""
        chunks = [list(paths[i:i + self.batch_size]) for i in range(0, len(paths), self.batch_size)]
        if not self.workers:
            for chunk in chunks:
                errors, frames = read_batch(chunk, self.spec, self.max_pixels, self._views[0])
                yield Batch(chunk, errors, frames, self._views[0][:errors.count(None)])
            return
        yield from self._parallel(chunks)

    def _start(self) -> _Worker:
        return _Worker(self._context, self._slots, self._shape, self.spec, self.max_pixels)

    def _parallel(self, chunks: list[list[str]]) -> Iterator[Batch]:
        while len(self._pool) < min(self.workers, len(chunks)):
            self._pool.append(self._start())
        free = list(range(self.depth))
        done: dict[int, tuple[int, list, list]] = {}  # batch number -> (slot, errors, frames)
        tries = [0] * len(chunks)
        queued = list(range(len(chunks)))[::-1]  # batch numbers not yet given to a worker, next one last
        held: int | None = None  # the slot of the batch the consumer has now
        for number in range(len(chunks)):
            if held is not None:  # the consumer asked for the next batch: it is done with the last one
                free.append(held)
                held = None
            while number not in done:
                self._assign(queued, free, chunks)
                self._collect(done, queued, free, chunks, tries)
            slot, errors, frames = done.pop(number)
            held = slot
            yield Batch(chunks[number], errors, frames, self._views[slot][:errors.count(None)])

    def _assign(self, queued: list[int], free: list[int], chunks: list[list[str]]) -> None:
        for worker in self._pool:
            if worker.task is None and queued and free:
                number, slot = queued.pop(), free.pop()
                worker.task = (number, slot)
                try:
                    worker.conn.send((slot, chunks[number]))
                except OSError:
                    pass  # it died: _collect sees its sentinel and gives the batch to its replacement

    def _collect(self, done, queued, free, chunks, tries) -> None:
        busy = [w for w in self._pool if w.task is not None]
        ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=_POLL_S)
        for worker in busy:
            number, slot = worker.task
            if worker.conn in ready:
                try:
                    errors, frames = worker.conn.recv()
                except (EOFError, OSError):
                    pass  # died after taking the task: handled below as a dead worker
                else:
                    done[number] = (slot, errors, frames)
                    worker.task = None
                    continue
            if worker.process.sentinel in ready or not worker.process.is_alive():
                self._replace(worker, number, slot, done, queued, free, chunks, tries)

    def _replace(self, worker, number, slot, done, queued, free, chunks, tries) -> None:
        """A worker died holding batch ``number``: start another; read the batch again, once."""
        worker.process.join()
        code = worker.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        worker.conn.close()
        self._pool[self._pool.index(worker)] = self._start()
        self.restarts += 1
        tries[number] += 1
        chunk = chunks[number]
        if tries[number] == 1:
            self.report(f"note: an input worker died ({how}) reading {len(chunk)} files; reading them again")
            queued.append(number)  # next in line: the consumer waits for it
            free.append(slot)
        else:
            reason = f"the input worker reading it died twice ({how}): a file in this batch may crash the decoder"
            done[number] = (slot, [reason] * len(chunk), [1] * len(chunk))

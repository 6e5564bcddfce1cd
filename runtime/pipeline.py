"""Files to uint8 crops in parallel: worker processes read, decode, resize and crop into shared-memory batches.

One process decoding JPEGs with Pillow delivers a few hundred images a
second, a small fraction of what a GPU scores (and on a CPU it leaves cores
idle while the model waits). :class:`InputPipeline` runs ``workers``
processes, each reading files with
:func:`~specdet.runtime.preprocess.image_crop` (the same code as the serial
path, so the crops are byte-identical) into one of a fixed number of batch
slots in shared memory; the consumer gets the batches back in order.

- **Batches shared among workers**: each worker reads a few consecutive
  files of a batch (a task, up to :data:`TASK_FILES`) into that batch's slot,
  so a batch is ready after a few files' decoding instead of a whole batch's:
  one worker per batch kept a GPU idle for the first batches while every
  worker decoded its own, then left it a queue of batches at the end.
- **Bounded memory**: ``depth`` slots (default two per worker) of
  ``batch x crop x crop x 3`` bytes; a slot is reused only once the consumer
  has asked for the next batch, so a slow consumer stalls the workers instead
  of growing a queue.
- **Workers never wait for the consumer**: each holds up to
  :data:`WORKER_TASKS` tasks, the next one queued in its pipe, while slots
  are free; and **the consumer never waits for the workers' CPU**: they run
  at a lower priority (:data:`WORKER_NICENESS`), taking the cores the model
  leaves.
- **Errors per file**, as the serial path reports them (:class:`ImageError`
  reasons); a worker that dies (killed, or crashed in a decoder) is replaced
  and the task it was reading is read again once (its queued tasks go back
  in line); if that worker dies too, the task's files are reported with the
  reason, and the run goes on.
- **Nothing left behind**: the slots live in one anonymous shared mapping
  (``multiprocessing.RawArray``: its file is unlinked as soon as it is made),
  so even a SIGKILL leaves no segment; workers ignore SIGINT and are ended by
  the consumer when it stops, Ctrl-C included.
- **workers=0** reads in the calling process: the serial loop, no processes.
- **resize_on_device**: the workers decode only, and copy the input rows and
  columns each crop reads (:mod:`specdet.runtime.resample`) into a per-slot
  arena; the runner resizes them on its GPU with Pillow's integer arithmetic,
  to the same bytes. Resizing is about half a worker's time on photos. An
  image that does not fit the arena's room left is cropped by the worker.
- **pin_memory**: the slots are page-locked for the GPU (``cudaHostRegister``)
  so that copies to the device run at full speed from them directly.

Workers are forked, as PyTorch's DataLoader workers are: they start in
milliseconds, re-run nothing of the caller's script (``spawn`` and
``forkserver`` re-import ``__main__``, which breaks ``python -`` and runs an
unguarded script once per worker), and share the slots without naming them.
A forked child must not use what other threads of its parent held: the
workers only run Pillow and NumPy on their own data, never torch, CUDA or
the backend's thread pools.
"""

from __future__ import annotations

import collections
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

from specdet.errors import SpecdetError
from specdet.limits import MAX_ARENA_BYTES, MAX_SLOT_BYTES, MAX_WORKERS, check_count
from specdet.runtime import resample
from specdet.runtime.preprocess import ImageError, check_spec, crop_pixels, decoded
from specdet.runtime.resample import CropPlan

TASK_FILES = 8  # the most files a worker reads per task (fewer when the workers outnumber a batch's tasks)
# Tasks a worker holds at once: the next one waits in its pipe, so that a worker that finishes while the consumer
# is scoring (and not handing out tasks) goes straight on; with one, workers idled for the model's time per batch.
WORKER_TASKS = 2
# How much lower the workers' scheduling priority is than the consumer's (os.nice): where the workers and the
# model share the cores, the model (or the thread that feeds the GPU) runs whenever it can and the workers take
# what it leaves. At equal priority the scheduler gave the model thread a third of two cores, one of three
# runnable processes, and it became the bottleneck (rine_ssca_tiny, 2 cores, 2 workers: 346 -> 358 images/s).
WORKER_NICENESS = 10
ARENA_BYTES_PER_IMAGE = 4 << 20  # per image of a batch: photos up to about 1.3 megapixels go to the device whole

_POLL_S = 1.0  # how often a waiting consumer looks for dead workers that closed no pipe


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(model_on_gpu: bool) -> int:
    """The default ``--workers``: every CPU when the model runs on a GPU; beside a CPU backend, a quarter of
    them (0 below four), since the workers then take cores from the model's threads. Measured on 2 cores:
    one worker with one model thread made rine_ssca_tiny 1.5x faster but the INT8 dual_branch_vit_b16 on
    OpenVINO 0.66x; one worker beside two model threads, 0.82x and 1.15x."""
    return cpus() if model_on_gpu else cpus() // 4


@dataclasses.dataclass
class Batch:
    """One batch of files read: each file's error (None when read) and frame count, and the crops of the
    readable ones, in order. ``crops`` (and ``arena``) are views of a shared slot: valid until the next batch
    is asked for. With ``resize_on_device``, the crops listed in ``regions`` are still to be made from the
    ``arena``: ``(position in crops, byte offset in arena, CropPlan)`` each (:meth:`region`)."""

    paths: list[str]
    errors: list[str | None]
    frames: list[int]
    crops: np.ndarray  # [readable, crop, crop, 3] uint8
    regions: list[tuple[int, int, CropPlan]] = dataclasses.field(default_factory=list)
    arena: np.ndarray | None = None  # uint8 bytes
    pinned: bool = False  # crops and arena are page-locked memory (pin_memory)

    @property
    def readable(self) -> list[int]:
        return [i for i, error in enumerate(self.errors) if error is None]

    def region(self, offset: int, crop_plan: CropPlan) -> np.ndarray:
        """The input pixels of one region, ``crop_plan.shape`` uint8."""
        size = int(np.prod(crop_plan.shape))
        return self.arena[offset:offset + size].reshape(crop_plan.shape)


def finish_crops(batch: Batch) -> np.ndarray:
    """The batch's crops with its device regions resized here, on the CPU (torch; Pillow's bytes)."""
    if batch.regions:
        import torch

        resample.resize_regions(torch.from_numpy(batch.arena), batch.regions, torch.from_numpy(batch.crops))
    return batch.crops


def read_batch(paths: Sequence[str], spec: dict[str, Any], max_pixels: int, out: np.ndarray,
               arena: np.ndarray | None = None) -> tuple[list, list, list]:
    """Read ``paths`` into ``out`` (``[len(paths), crop, crop, 3]`` uint8), readable ones first, in order.

    Returns each file's error (None when read), its frame count, and the
    regions left for the device: with an ``arena``, a readable image's input
    region goes there instead of being resized here, while there is room. The
    one loop that both the workers and the serial path run.
    """
    errors: list[str | None] = []
    frames: list[int] = []
    regions: list[tuple[int, int, CropPlan]] = []
    filled = used = 0
    for path in paths:
        try:
            image, count = decoded(path, spec, max_pixels)
            crop_plan = resample.plan(image.size, spec) if arena is not None else None
            size = int(np.prod(crop_plan.shape)) if crop_plan else 0
            if crop_plan and used + size <= arena.size:
                (top, bottom), (left, right) = crop_plan.rows, crop_plan.cols
                arena[used:used + size].reshape(crop_plan.shape)[...] = np.asarray(image.crop((left, top, right, bottom)))
                regions.append((filled, used, crop_plan))
                used += size
            else:
                out[filled] = crop_pixels(image, spec)
        except ImageError as err:
            errors.append(err.reason)
            frames.append(1)
            continue
        filled += 1
        errors.append(None)
        frames.append(count)
    return errors, frames, regions


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each slot's crops and arena lie in the one shared buffer."""

    depth: int
    batch: int
    crop: int
    arena: int  # bytes per slot for device regions (0: none)

    @property
    def arena_share(self) -> int:
        """Arena bytes per file of a batch: a task of k files gets k shares, from its first file's."""
        return self.arena // self.batch

    @property
    def nbytes(self) -> int:
        return self.depth * (self.batch * self.crop * self.crop * 3 + self.arena)

    def views(self, buffer: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """``(crops [depth, batch, crop, crop, 3], arenas [depth, arena] or None)`` over ``buffer``."""
        flat = np.frombuffer(buffer, dtype=np.uint8)
        split = self.depth * self.batch * self.crop * self.crop * 3
        crops = flat[:split].reshape(self.depth, self.batch, self.crop, self.crop, 3)
        return crops, (flat[split:].reshape(self.depth, self.arena) if self.arena else None)


def _worker(conn: Connection, buffer: Any, layout: _Layout, spec: dict[str, Any], max_pixels: int) -> None:
    """A worker's loop: ``(slot, first, arena range, paths)`` in, ``read_batch``'s lists out (into the slot's crops
    from ``first`` on, and that range of its arena), until ``None`` or a closed pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle: it ends us
    os.nice(WORKER_NICENESS)  # always allowed: lowering one's own priority needs no privilege
    crops, arenas = layout.views(buffer)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        slot, first, room, paths = task
        arena = None if room is None else arenas[slot][room[0]:room[0] + room[1]]
        conn.send(read_batch(paths, spec, max_pixels, crops[slot][first:first + len(paths)], arena))


@dataclasses.dataclass(frozen=True)
class _Task:
    """Some consecutive files of one batch, read by one worker into that batch's slot."""

    number: int  # the batch's
    first: int  # the position of its first file in the batch
    paths: list[str]


@dataclasses.dataclass
class _Run:
    """The state of one :meth:`InputPipeline.batches` call over its workers (task: an index into ``tasks``)."""

    tasks: list[_Task]
    free: list[int]  # slots no batch holds
    slots: dict[int, int] = dataclasses.field(default_factory=dict)  # batch number -> its slot, until yielded
    done: dict[int, tuple] = dataclasses.field(default_factory=dict)  # task -> what read_batch returned
    held: int | None = None  # the slot of the batch the consumer has now
    queued: list[int] = dataclasses.field(init=False)  # tasks not yet given to a worker, the next one last
    tries: list[int] = dataclasses.field(init=False)  # task -> times a worker died reading it

    def __post_init__(self) -> None:
        self.queued = list(range(len(self.tasks)))[::-1]
        self.tries = [0] * len(self.tasks)


class _Worker:
    """One worker process and its end of the pipe, and the task it holds."""

    def __init__(self, context, buffer, layout, spec, max_pixels):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, buffer, layout, spec, max_pixels), daemon=True)
        self.process.start()
        child.close()
        self.tasks: collections.deque[int] = collections.deque()  # tasks sent (_Run.tasks), the one it reads first

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
                 depth: int | None = None, report: Callable[[str], None] | None = None,
                 resize_on_device: bool = False, pin_memory: bool = False):
        check_spec(spec)
        self.spec, self.max_pixels, self.batch_size = spec, max_pixels, batch_size
        self.workers = check_count(workers, "workers", MAX_WORKERS, low=0)
        crop = spec["crop"]
        fits = max(2, MAX_SLOT_BYTES // (batch_size * crop * crop * 3))
        self.depth = check_count(depth or min(2 * max(workers, 1), fits), "depth", 4 * MAX_WORKERS)
        # Files per worker task: a batch's files shared among the workers, so that the first batch is ready (and
        # the accelerator busy) after a few files' time, not a whole batch's, and the last ones end together.
        self.task_size = max(1, min(TASK_FILES, -(-batch_size // max(workers, 1))))
        self.report = report or (lambda line: print(line, file=sys.stderr))
        self.restarts = 0
        depth = self.depth if workers else 1
        # Room for photo-size regions (a 1000 x 750 photo's crop reads about 1.3 MB), within MAX_ARENA_BYTES.
        arena = min(batch_size * ARENA_BYTES_PER_IMAGE, MAX_ARENA_BYTES // depth) if resize_on_device else 0
        self._layout = _Layout(depth, batch_size, crop, arena)
        self._pool: list[_Worker] = []
        self._context = multiprocessing.get_context("fork")
        # Shared with the forked workers, unlinked as soon as made: nothing to leak.
        self._buffer = self._context.RawArray(ctypes.c_uint8, self._layout.nbytes)
        self._views, self._arenas = self._layout.views(self._buffer)
        self._pinned = False
        self._pin_memory = pin_memory
        self._run_open = False  # a batches() run with workers is being iterated

    def __enter__(self) -> InputPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End the workers and unpin the slots (a second call does nothing)."""
        pool, self._pool = self._pool, []
        for worker in pool:
            worker.stop()
        self._pin(False)

    def _pin(self, pinned: bool) -> None:
        """Page-lock the slots for the GPU, or undo it: only outside a fork (a forked child must not inherit it)."""
        if pinned == self._pinned or not self._pin_memory:
            return
        import torch

        address = ctypes.addressof(self._buffer)
        cudart = torch.cuda.cudart()
        try:
            code = cudart.cudaHostRegister(address, self._layout.nbytes, 0) if pinned else cudart.cudaHostUnregister(address)
        except (RuntimeError, TypeError):  # no CUDA here: the slots stay pageable, the runner copies through staging
            return
        if int(code) == 0:
            self._pinned = pinned
        elif not pinned:
            raise SpecdetError(f"could not unpin the input slots (CUDA error {int(code)}): a bug, please report it")

    @property
    def slots(self) -> np.ndarray:
        """All batch slots' crops, ``[depth, batch, crop, crop, 3]`` uint8."""
        return self._views

    def batches(self, paths: Sequence[str]) -> Iterator[Batch]:
        """The batches of ``paths`` (``batch_size`` files each, the last one shorter), read, in order."""
        chunks = [list(paths[i:i + self.batch_size]) for i in range(0, len(paths), self.batch_size)]
        if not self.workers:
            self._pin(True)
            for chunk in chunks:
                yield self._batch(chunk, 0, read_batch(chunk, self.spec, self.max_pixels, self._views[0],
                                                       None if self._arenas is None else self._arenas[0]))
            return
        yield from self._parallel(chunks)

    def _batch(self, chunk: list[str], slot: int, read: tuple[list, list, list]) -> Batch:
        errors, frames, regions = read
        return Batch(chunk, errors, frames, self._views[slot][:errors.count(None)], regions,
                     None if self._arenas is None else self._arenas[slot], self._pinned)

    def _start(self) -> _Worker:
        pinned = self._pinned
        self._pin(False)
        try:
            return _Worker(self._context, self._buffer, self._layout, self.spec, self.max_pixels)
        finally:
            self._pin(pinned)

    def _parallel(self, chunks: list[list[str]]) -> Iterator[Batch]:
        tasks = [_Task(number, first, chunk[first:first + self.task_size])
                 for number, chunk in enumerate(chunks) for first in range(0, len(chunk), self.task_size)]
        while len(self._pool) < min(self.workers, len(tasks)):
            self._pool.append(self._start())
        self._pin(True)
        if self._run_open:
            raise SpecdetError("InputPipeline.batches: the previous run is still being iterated: finish it or call "
                               "its close() first (the workers hold its tasks)")
        run = _Run(tasks, free=list(range(self.depth)))
        ended = False
        self._run_open = True
        try:
            yield from self._in_order(chunks, run)
            ended = True
        finally:
            self._run_open = False
            if not ended:  # left before the end (closed, interrupted, failed): the workers may hold this run's
                self.close()  # tasks, whose answers the next run would take for its own; they are not reused

    def _in_order(self, chunks: list[list[str]], run: _Run) -> Iterator[Batch]:
        tasks = run.tasks
        first_task = 0
        for number, chunk in enumerate(chunks):
            if run.held is not None:  # the consumer asked for the next batch: it is done with the last one
                run.free.append(run.held)
                run.held = None
            count = -(-len(chunk) // self.task_size)
            mine = range(first_task, first_task + count)
            first_task += count
            while any(t not in run.done for t in mine):
                self._assign(run)
                self._collect(run)
            slot = run.slots.pop(number)
            run.held = slot
            read = self._assemble(slot, [(tasks[t].first, run.done.pop(t)) for t in mine])
            self._assign(run)  # before yielding: idle workers read on while the consumer scores
            yield self._batch(chunk, slot, read)

    def _assemble(self, slot: int, parts: list[tuple[int, tuple]]) -> tuple[list, list, list]:
        """One batch's ``read_batch`` lists from its tasks', its crops moved down over the unreadable files' places
        (each task packed its readable files first within its own range of the slot)."""
        errors, frames, regions = [], [], []
        share = self._layout.arena_share
        filled = 0
        for first, (task_errors, task_frames, task_regions) in parts:
            readable = task_errors.count(None)
            if filled != first and readable:
                self._views[slot][filled:filled + readable] = self._views[slot][first:first + readable]
            regions += [(filled + position, first * share + offset, crop_plan)
                        for position, offset, crop_plan in task_regions]
            errors += task_errors
            frames += task_frames
            filled += readable
        return errors, frames, regions

    def _assign(self, run: _Run) -> None:
        """Give queued tasks to the workers, in order, each up to :data:`WORKER_TASKS` (the least loaded first);
        a batch takes a free slot when its first task goes out."""
        while run.queued:
            worker = min(self._pool, key=lambda w: len(w.tasks))
            if len(worker.tasks) >= WORKER_TASKS:
                return
            if not worker.tasks and not worker.process.is_alive():  # died idle (killed between runs, say)
                self._replace_idle(worker)
                continue
            task = run.tasks[run.queued[-1]]
            if task.number not in run.slots:
                if not run.free:
                    return  # every slot holds a batch the consumer has not taken yet: wait for it
                run.slots[task.number] = run.free.pop()
            worker.tasks.append(run.queued.pop())
            share = self._layout.arena_share
            arena = (share * task.first, share * len(task.paths)) if share else None
            try:
                worker.conn.send((run.slots[task.number], task.first, arena, task.paths))
            except OSError:
                pass  # it died: _collect sees its sentinel and gives its tasks to its replacement

    def _collect(self, run: _Run) -> None:
        busy = [w for w in self._pool if w.tasks]
        ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=_POLL_S)
        for worker in busy:
            if worker.conn in ready:
                try:
                    read = worker.conn.recv()
                except (EOFError, OSError):
                    pass  # died after taking the task: handled below as a dead worker
                else:
                    run.done[worker.tasks.popleft()] = read  # a worker answers its tasks in order
                    continue
            if worker.process.sentinel in ready or not worker.process.is_alive():
                self._replace(worker, run)

    def _replace_idle(self, worker: _Worker) -> None:
        """A worker that died holding no task: start another; no file is read again or counted against."""
        worker.process.join()
        worker.conn.close()
        self._pool[self._pool.index(worker)] = self._start()
        self.restarts += 1
        self.report(f"note: an idle input worker died ({_how(worker.process.exitcode)}); started another")

    def _replace(self, worker: _Worker, run: _Run) -> None:
        """A worker died holding tasks: start another; read the task it was reading again, once, and put the
        ones queued behind it back in line."""
        worker.process.join()
        how = _how(worker.process.exitcode)
        worker.conn.close()
        key, *waiting = worker.tasks
        self._pool[self._pool.index(worker)] = self._start()
        self.restarts += 1
        run.queued += waiting[::-1]  # the next one last
        run.tries[key] += 1
        paths = run.tasks[key].paths
        if run.tries[key] == 1:
            self.report(f"note: an input worker died ({how}) reading {len(paths)} files; reading them again")
            run.queued.append(key)  # next in line: the consumer waits for it
        else:
            reason = f"the input worker reading it died twice ({how}): a file among these may crash the decoder"
            run.done[key] = ([reason] * len(paths), [1] * len(paths), [])


def _how(code: int | None) -> str:
    """How a worker process ended, from its exit code."""
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"

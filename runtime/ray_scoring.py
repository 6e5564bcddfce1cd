"""``detect-predict --ray``: score many files with a pool of Ray actors, into a resumable Parquet folder.

The output is a folder of Parquet part files (a Parquet dataset: pyarrow,
pandas, polars, DuckDB and Spark read the folder as one table), with columns
``path, probability, logit, label, error``: one row per file, an unreadable
file a row with its ``error`` and null scores. A single Parquet file cannot
be appended to, and one half written when the process is killed is
unreadable; parts can. So the driver collects the rows the actors send back
and writes them as a new part every ``rows_per_part`` rows (or
:data:`PART_SECONDS`, whichever comes first), each part written to a hidden
temporary and renamed (:func:`specdet.files.atomic_write`). A run killed at
any moment, even by SIGKILL, leaves complete parts only (readers skip the
hidden temporaries, the next run removes them), and loses at most the rows
not yet written. A rerun reads the ``path`` column of the parts and scores
only the files not in it: one row per path, however often it is resumed.
The folder records the artifact that scored it (:data:`IDENTITY`: its
SHA-256, and its external data's): a rerun with another model is refused
rather than adding its rows to the first one's, and a folder that is not
such an output (the image folder itself, say) is never written into.

Each actor holds one :class:`~specdet.runtime.detector.Detector` and reads,
preprocesses and scores its own files with
:meth:`~specdet.runtime.detector.Detector.predict_files`, the same code (and
the same per-file errors) as plain ``detect-predict``; only paths travel
through Ray, not pixels.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from specdet.errors import SpecdetError
from specdet.files import atomic_write, check_output, file_sha256, remove_stale
from specdet.limits import MAX_PIXELS, RAY_ACTOR_BYTES
from specdet.manifest import ONNX_SUFFIX
from specdet.onnx_external import external_data_files
from specdet.progress import bar as progress_bar
from specdet.progress import on_terminal
from specdet.runtime.base import RunnerOptions, default_backend, read_manifest, require_file, runner_class
from specdet.runtime.detector import Detector, Result
from specdet.runtime.pipeline import InputPipeline

INSTALL_HINT = 'install the ray extra: pip install -e ".[ray]"'
COLUMNS = ("path", "probability", "logit", "label", "error")
ROWS_PER_PART = 4096  # ~200 KB of Parquet: few files for a million images, little lost to a kill
PART_SECONDS = 60.0  # a slow model still writes a part a minute, so a kill loses at most that
DEFAULT_BATCH_CAP = 64  # an artifact without a batch limit (a checkpoint) or a large one: 64 images per call
MIN_RAY_BATCH = 32  # rows per actor call: Ray's per-call overhead amortised over several small model batches
_PART = re.compile(r"part-(\d+)\.parquet")
# The artifact a folder's rows come from. A leading "_": Parquet readers (pyarrow, Spark) skip the file.
IDENTITY = "_artifact.json"
_LOCK = ".lock"


@dataclasses.dataclass
class Summary:
    """What a run did: rows written now (scored and with errors) and paths found already in the output."""

    out: Path
    scored: int = 0
    errors: int = 0
    already: int = 0
    already_errors: int = 0

    def line(self) -> str:
        earlier = f" ({self.already_errors} of them errors)" if self.already_errors else ""
        return (f"{self.scored} scored, {self.errors} skipped with errors, {self.already} already in the output"
                f"{earlier}: {self.out}")


def require_ray() -> None:
    """A one-line error (exit 2) when ray[data] or pyarrow is missing, before any work."""
    try:
        import pyarrow.parquet  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as err:
        raise SpecdetError(INSTALL_HINT) from err


def score_to_parquet(
    artifact: Path,
    files: Sequence[Path],
    out: Path,
    *,
    backend: str | None = None,
    options: RunnerOptions | None = None,
    max_pixels: int = MAX_PIXELS,
    batch_size: int | None = None,
    actors: int | None = None,
    address: str | None = None,
    rows_per_part: int = ROWS_PER_PART,
    workers: int = 0,
    report: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> Summary:
    """Score ``files`` with ``actors`` Ray actors into the Parquet folder ``out``.

    Each actor holds ``Detector(artifact, backend, options, max_pixels=max_pixels)``,
    on ``options.threads`` threads (default 1: the actors share the CPUs).
    ``address`` joins a running cluster (its nodes need specdet and see the
    same paths); None starts a local one on 127.0.0.1, shut down at the end.
    ``workers`` input processes per actor read the files (0: the actor reads
    them itself; the actors are the parallelism).
    ``report`` gets one line per file with an error.
    """
    require_ray()
    options = options or RunnerOptions()
    if options.threads is None:
        options = dataclasses.replace(options, threads=1)
    if address is None and actors is not None:
        check_local_actors(actors, artifact)
    check_output(out, "scores", inputs=(artifact,), folder=True)
    _check_folder(out, files)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        _record_artifact(out, artifact)
        summary = Summary(out)
        done = _paths_in(out)
        # Absolute paths: actors do not share the driver's working folder, and a rerun from
        # another folder must recognise the rows. abspath, not resolve: links keep their names.
        todo = []
        for path in dict.fromkeys(os.path.abspath(p) for p in files):
            if path in done:
                summary.already += 1
                summary.already_errors += done[path]
            else:
                todo.append(path)
        if not todo:
            return summary
        limit = _batch_limit(artifact, backend, options)
        batch = min(batch_size or DEFAULT_BATCH_CAP, limit or batch_size or DEFAULT_BATCH_CAP)
        # The actors run elsewhere (another working folder, maybe another node): absolute paths only.
        if options.plugins:
            options = dataclasses.replace(options, plugins=[os.path.abspath(p) for p in options.plugins])
        job = _Job(artifact=os.path.abspath(artifact), backend=backend, options=options, max_pixels=max_pixels,
                   batch_size=batch, workers=workers, actors=actors, address=address, rows_per_part=rows_per_part)
        _run(job, todo, out, summary, report)
        return summary
    finally:
        os.close(lock)


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux ``MemAvailable``); None where that is not known."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def actor_bytes(artifact: Path) -> int:
    """What one actor is taken to need: :data:`~specdet.limits.RAY_ACTOR_BYTES` and its copy of the artifact."""
    try:
        return RAY_ACTOR_BYTES + os.stat(artifact).st_size
    except OSError:  # a missing artifact is reported where it is loaded
        return RAY_ACTOR_BYTES


def check_local_actors(actors: int, artifact: Path) -> None:
    """Refuse more actors than this machine's free memory holds, before Ray starts (64 actors on an 8 GB
    machine were killed by the kernel midway, taking the machine's other work with them)."""
    memory = available_memory()
    if memory is None:
        return
    each = actor_bytes(artifact)
    most = max(1, memory // each)
    if actors > most:
        raise SpecdetError(f"--actors {actors} would need about {actors * each / 2**30:.1f} GiB ({each / 2**30:.1f} "
                           f"GiB each) but this machine has {memory / 2**30:.1f} GiB available: give --actors "
                           f"{most} or fewer, or join a larger cluster with --ray-address")


def _check_folder(out: Path, files: Sequence[Path]) -> None:
    """Refuse an ``out`` that is not a new or empty folder or a scores folder, or that holds input files."""
    if out.is_dir():
        names = {entry.name for entry in out.iterdir()} - {_LOCK}  # a lock alone: a first run killed at its start
        if names and IDENTITY not in names:
            raise SpecdetError(f"{out} is not empty and has no {IDENTITY}: it is not a detect-predict --ray output "
                               "(or one from before the artifact was recorded); give a new or empty folder for --out")
    # The folders of the inputs, not each file: a million paths have few of them; realpath follows links.
    target = Path(os.path.realpath(out))
    for parent in {os.path.dirname(os.path.abspath(p)) for p in files}:
        if Path(os.path.realpath(parent)).is_relative_to(target):
            raise SpecdetError(f"{out} holds input images ({parent}): give --out a folder outside the images")


def _record_artifact(out: Path, artifact: Path) -> None:
    """Write the artifact's identity into a new ``out``, or check that ``out``'s rows come from the same one."""
    identity = artifact_identity(artifact)
    path = out / IDENTITY
    if not path.exists():
        text = json.dumps(identity, indent=2) + "\n"
        atomic_write(path, lambda file: file.write(text.encode()))
        return
    try:
        recorded = json.loads(path.read_text())
        same = {k: recorded[k] for k in ("sha256", "external_data")} == {k: identity[k] for k in ("sha256", "external_data")}
    except (OSError, ValueError, TypeError, KeyError):
        raise SpecdetError(f"{path} is damaged: give a new --out (its parts were scored by an unknown model)") from None
    if not same:
        raise SpecdetError(f"{out} holds scores of another model ({recorded.get('artifact')}, sha256 "
                           f"{str(recorded.get('sha256'))[:12]}...), not of {artifact.name} (sha256 "
                           f"{identity['sha256'][:12]}...): give another --out; rows of two models are not mixed")


def artifact_identity(artifact: Path) -> dict[str, Any]:
    """What identifies the model that scores: the artifact's SHA-256 and, for an ONNX file, its external data's."""
    artifact = require_file(artifact)
    external = external_data_files(artifact) if artifact.suffix.lower() == ONNX_SUFFIX else []
    return {"artifact": os.path.abspath(artifact), "sha256": file_sha256(artifact),
            "external_data": {location: file_sha256(artifact.parent / location) for location in external}}


def _batch_limit(artifact: Path, backend: str | None, options: RunnerOptions) -> int | None:
    """The artifact's largest batch (None: no limit), read without loading its model.

    A bad artifact or option is a one-line error here, before Ray starts. A
    checkpoint has no manifest and no batch limit: the actors load it.
    """
    backend = backend or default_backend(artifact)
    runner_class(backend).check_options(options)
    if backend == "torch":
        require_file(artifact)
        return None
    return read_manifest(artifact, options).batch.max


@dataclasses.dataclass(frozen=True)
class _Job:
    """What a run's actors are built with, and how many run where."""

    artifact: str  # absolute, as every path the actors get
    backend: str | None  # None: chosen by the artifact's suffix
    options: RunnerOptions  # threads set, plugins absolute
    max_pixels: int
    batch_size: int  # images per inference call
    workers: int  # input processes per actor (0: the actor reads the files itself)
    actors: int | None  # None: the cluster's CPUs / threads
    address: str | None  # None: a local cluster on 127.0.0.1
    rows_per_part: int


def _lock(out: Path) -> int:
    """Hold ``out/.lock`` for the run: two runs into one folder would score the same files twice.

    The kernel drops the lock when its process dies, SIGKILL included, so no stale lock is left.
    """
    fd = os.open(out / _LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpecdetError(f"another detect-predict --ray is writing to {out}: wait for it, or give another --out") from None
    return fd


def _parts(out: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in out.iterdir() if (m := _PART.fullmatch(p.name)))


def _paths_in(out: Path) -> dict[str, bool]:
    """The paths the output's parts hold already, each with whether its row is an error."""
    import pyarrow.parquet as pq

    done: dict[str, bool] = {}
    for _, part in _parts(out):
        remove_stale(part)  # temporaries of this part name left by a killed run
        try:
            table = pq.read_table(part, columns=["path", "error"])
        except Exception as err:  # noqa: BLE001 (pyarrow raises several types for a damaged file)
            raise SpecdetError(f"{part} is not a readable Parquet part ({err}): move it away and rerun to rescore "
                               "its images") from None
        for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist()):
            done[path] = error is not None
    return done


def _schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("probability", pa.float32()), ("logit", pa.float32()),
                      ("label", pa.string()), ("error", pa.string())])


def _table(results: Sequence[Result]):
    import pyarrow as pa

    columns = {name: [getattr(r, name) for r in results] for name in COLUMNS}
    return pa.table(columns, schema=_schema())


class _Scorer:
    """One Ray actor: one detector and its input pipeline, kept for every batch the actor is given."""

    def __init__(self, job: _Job):
        self.detector = Detector(job.artifact, job.backend, job.options, max_pixels=job.max_pixels)
        self.pipeline = InputPipeline(self.detector.preprocessing, self.detector.max_pixels, job.batch_size, job.workers)

    def __call__(self, batch: dict[str, Any]):
        reads = self.pipeline.batches(batch["path"].tolist())
        return _table([r for _, results in self.detector.scored(reads) for r in results])


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the name (surrogate escapes)
        return False
    return True


def _run(job: _Job, todo: list[str], out: Path, summary: Summary, report: Callable[[str], None]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray

    index = max((i for i, _ in _parts(out)), default=0)
    total, written = len(todo), 0
    pending: list[pa.Table] = []
    bar = progress_bar(total=total, unit="image")

    def add(table: pa.Table) -> None:
        pending.append(table)
        bar.update(table.num_rows)
        errors = table.filter(pc.is_valid(table.column("error")))
        summary.errors += errors.num_rows
        summary.scored += table.num_rows - errors.num_rows
        for path, error in zip(errors.column("path").to_pylist(), errors.column("error").to_pylist()):
            report(f"skipped {path}: {' '.join(error.split())}")

    def flush() -> None:
        nonlocal pending, index, written
        table = pa.concat_tables(pending) if pending else None
        pending = []
        if table is None or table.num_rows == 0:
            return
        index += 1
        part = out / f"part-{index:05d}.parquet"
        atomic_write(part, lambda file: pq.write_table(table, file))
        written += table.num_rows
        if not on_terminal():  # in a log the bar is off: one line per part instead
            report(f"wrote {part.name}: {written} of {total} images done")

    # Parquet text is UTF-8: a name with undecodable bytes is recorded (escaped) as an error row
    # by the driver itself, and a rerun finds it under the same escaped name.
    bad = [p for p in todo if not _utf8(p)]
    if bad:
        add(_table([Result(os.fsencode(p).decode("utf-8", "backslashreplace"),
                           error="file name is not valid UTF-8 (Parquet keeps UTF-8 text): rename it") for p in bad]))
        todo = [p for p in todo if _utf8(p)]
    threads, actors = job.options.threads, job.actors
    local = job.address is None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats banner, no phoning home
    try:
        if not todo:
            return
        if local:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            # Enough CPUs for the actors asked for, even beyond the machine's (their threads then share cores).
            ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=max(cpus, (actors or 1) * threads),
                     include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        else:
            ray.init(address=job.address, logging_level=logging.ERROR, log_to_driver=False)
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # Ray's bars redraw per operator: noise; ours counts images
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        if actors is None:
            actors = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
            memory = available_memory() if local else None
            if memory is not None:  # one per CPU, as many as fit in memory
                actors = max(1, min(actors, memory // actor_bytes(Path(job.artifact))))
        # max_restarts=0: Ray restarts a dead actor by default, and warns (an "E" line on stderr)
        # that it may fail to; a dead actor here ends the run instead, and the rerun resumes it.
        # Ray 2.60 deprecates passing it this way (a warning, silenced) without another way yet.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            scored = ray.data.from_items([{"path": p} for p in todo]).map_batches(
                _Scorer, fn_constructor_kwargs={"job": job},
                batch_size=job.batch_size * max(1, math.ceil(MIN_RAY_BATCH / job.batch_size)), batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads, max_restarts=0,
            )
        last = time.monotonic()
        for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            add(table.select(list(COLUMNS)).cast(_schema()))
            if sum(t.num_rows for t in pending) >= job.rows_per_part or time.monotonic() - last >= PART_SECONDS:
                flush()
                last = time.monotonic()
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None) or err
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise SpecdetError(f"Ray scoring failed ({first}); the rows written so far are kept in {out}: rerun to "
                           "resume") from err
    finally:
        # Rows already back are complete: keep them whatever stopped the loop (Ctrl-C, a failed actor).
        flush()
        bar.close()
        if ray.is_initialized():
            ray.shutdown()

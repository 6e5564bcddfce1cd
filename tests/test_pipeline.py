"""The input pipeline (runtime/pipeline.py): worker processes give the serial path's bytes, errors and order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import image_corpus
import numpy as np
import pytest
import torch

from specdet.errors import SpecdetError
from specdet.runtime import Detector, pipeline
from specdet.runtime.pipeline import InputPipeline
from specdet.runtime.preprocess import decoded, image_crop, image_pixels, normalise

SPEC = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic"}


@pytest.fixture(scope="module")
def corpus(image_dir, tmp_path_factory) -> list[str]:
    return image_corpus.make(image_dir, tmp_path_factory.mktemp("more"))


def _serial(paths: list[str], max_pixels: int = 64_000_000) -> list[tuple[str | None, bytes | None, int]]:
    return image_corpus.serial_reads(paths, SPEC, max_pixels)


def _piped(paths: list[str], workers: int, batch: int, **kwargs) -> list[tuple[str | None, bytes | None, int]]:
    out = []
    with InputPipeline(SPEC, 64_000_000, batch, workers, **kwargs) as pipe:
        for got in pipe.batches(paths):
            crops = iter(got.crops)
            for error, frames in zip(got.errors, got.frames):
                out.append((error, None if error else next(crops).tobytes(), frames))
    return out


@pytest.mark.parametrize("workers,batch", [(0, 4), (1, 3), (2, 4), (3, 1), (2, 7), (4, 9)])
def test_crops_errors_and_order_match_the_serial_path(corpus, workers, batch):
    assert _piped(corpus, workers, batch) == _serial(corpus)


def test_the_corpus_holds_what_it_claims(corpus):
    serial = _serial(corpus)
    assert sum(e is None for e, _, _ in serial) >= 12 and sum(e is not None for e, _, _ in serial) >= 6
    assert any(frames == 3 for _, _, frames in serial)  # the animated GIF


def test_normalised_crops_are_the_serial_float_pixels(corpus):
    readable = [p for p, (e, _, _) in zip(corpus, _serial(corpus)) if e is None]
    crops = np.stack([image_crop(p, SPEC)[0] for p in readable])
    serial = np.stack([image_pixels(p, SPEC)[0] for p in readable])
    assert normalise(crops, SPEC).tobytes() == serial.tobytes()


def test_detector_results_are_identical_with_and_without_workers(tiny_checkpoint, corpus):
    with Detector(tiny_checkpoint) as detector:
        serial = detector.predict_files(corpus, batch_size=4, workers=0)
        piped = detector.predict_files(corpus, batch_size=4, workers=2)
    assert piped == serial
    assert [r.path for r in piped] == corpus
    assert any(r.ok for r in piped) and any(not r.ok for r in piped)


def test_progress_counts_every_file_once(tiny_checkpoint, corpus):
    seen = []
    with Detector(tiny_checkpoint) as detector:
        detector.predict_files(corpus, batch_size=5, workers=2, progress=seen.append)
    assert sum(seen) == len(corpus) and max(seen) == 5


def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost_or_duplicated(corpus):
    lines = []
    out = []
    with InputPipeline(SPEC, 64_000_000, 2, 2, report=lines.append) as pipe:
        for number, got in enumerate(pipe.batches(corpus)):
            if number == 1:
                for worker in pipe._pool:
                    os.kill(worker.process.pid, signal.SIGKILL)
            crops = iter(got.crops)
            out.extend((e, None if e else next(crops).tobytes(), f) for e, f in zip(got.errors, got.frames))
        assert pipe.restarts >= 1
    assert out == _serial(corpus)
    assert lines and all(line.startswith("note: an input worker died (killed by signal 9)") for line in lines)


def test_a_worker_that_died_idle_is_replaced_without_reading_anything_again(corpus):
    lines = []
    with InputPipeline(SPEC, 64_000_000, 2, 2, report=lines.append) as pipe:
        first = [(e, f) for got in pipe.batches(corpus) for e, f in zip(got.errors, got.frames)]
        dead = pipe._pool[0].process
        os.kill(dead.pid, signal.SIGKILL)
        dead.join()
        out = []
        for got in pipe.batches(corpus):
            crops = iter(got.crops)
            out.extend((e, None if e else next(crops).tobytes(), f) for e, f in zip(got.errors, got.frames))
        assert pipe.restarts == 1 and dead not in [w.process for w in pipe._pool]
    assert out == _serial(corpus) and [(e, f) for e, _, f in out] == first
    # One line, and not "reading N files; reading them again": it held no task, so none is counted as a try.
    assert lines == ["note: an idle input worker died (killed by signal 9); started another"]


def test_a_file_that_kills_its_worker_twice_costs_its_batch_only(corpus, monkeypatch):
    def crash_on_photo(path, spec, max_pixels):
        if path.endswith("photo.jpg"):
            os.kill(os.getpid(), signal.SIGKILL)
        return decoded(path, spec, max_pixels)

    monkeypatch.setattr(pipeline, "decoded", crash_on_photo)  # the forked workers inherit it
    lines = []
    with InputPipeline(SPEC, 64_000_000, 3, 2, report=lines.append) as pipe:
        got = [(p, e) for b in pipe.batches(corpus) for p, e in zip(b.paths, b.errors)]
    assert [p for p, _ in got] == corpus
    lost = [p for p, e in got if e and "died twice" in e]
    assert any(p.endswith("photo.jpg") for p in lost) and len(lost) <= 3 * 2  # its batch, each time it appears
    expected = {p: e for p, (e, _, _) in zip(corpus, _serial(corpus))}
    assert all(e == expected[p] for p, e in got if p not in lost)


def test_the_workers_share_each_batch(image_dir, tmp_path, monkeypatch):
    """A batch's files go to several workers (tasks of a few files), so the first batch is ready after a few
    files' decoding instead of a whole batch's."""
    log = tmp_path / "readers"

    def logged(path, spec, max_pixels):
        with open(log, "a") as file:
            file.write(f"{os.getpid()} {path}\n")
        return decoded(path, spec, max_pixels)

    monkeypatch.setattr(pipeline, "decoded", logged)
    good = sorted(str(p) for p in (image_dir / "good").rglob("*.png"))
    paths = (good * 8)[:16]
    with InputPipeline(SPEC, 64_000_000, 8, 2) as pipe:
        assert pipe.task_size == 4
        assert [len(b.paths) for b in pipe.batches(paths)] == [8, 8]
    readers = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(readers) == 16 and len(set(readers[:8])) == 2  # both workers read the first batch


def test_the_normalisation_table_gives_the_formulas_values():
    """normalise looks values up in a table: the same float32 values as the elementwise formula, for every
    uint8 value of each channel (odd constants included, where a fused or reordered computation would differ)."""
    from specdet.runtime.preprocess import normalise_table

    crops = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None, None], 3, axis=3).repeat(2, axis=2)
    for mean, std in [(SPEC["mean"], SPEC["std"]), ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
                      ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), ([1e-3, 0.9, 0.3333], [1e-2, 3.7, 0.777])]:
        spec = {**SPEC, "mean": mean, "std": std}
        pixels = crops.astype(np.float32).transpose(0, 3, 1, 2)
        formula = (pixels / np.float32(255.0) - np.asarray(mean, np.float32).reshape(1, 3, 1, 1)) / np.asarray(
            std, np.float32).reshape(1, 3, 1, 1)
        assert normalise(crops, spec).tobytes() == formula.tobytes()
        assert normalise_table(tuple(mean), tuple(std)).shape == (3, 256)


def test_score_batches_keeps_one_batch_in_flight(corpus):
    """The runner is given batch k + 1 before batch k's scores are waited for (a GPU scores k while the
    workers' next batch is copied), and every batch comes out once, in order, with its own scores."""
    from specdet.runtime.base import score_batches

    calls = []

    class Recorder:
        def submit_batch(self, batch):
            number = len([c for c in calls if c[0] == "submit"])
            calls.append(("submit", number))
            scores = {"probability": np.full(len(batch.readable), number, np.float32)}
            return lambda: calls.append(("wait", number)) or scores

    with InputPipeline(SPEC, 64_000_000, 4, 2) as pipe:
        out = [(batch.paths, scores) for batch, scores in score_batches(Recorder(), pipe.batches(corpus))]
    assert [p for paths, _ in out for p in paths] == corpus
    submitted = [n for kind, n in calls if kind == "submit"]
    assert [n for kind, n in calls if kind == "wait"] == submitted == list(range(len(submitted)))
    for number in submitted[:-1]:  # k + 1 submitted before k is waited for
        assert calls.index(("submit", number + 1)) < calls.index(("wait", number))
    assert [int(s["probability"][0]) for _, s in out if s is not None] == submitted


def _count_reads(tmp_path, monkeypatch):
    """A file that grows by one byte per file the (forked) workers read."""
    log = tmp_path / "reads"

    def counted(path, spec, max_pixels):
        with open(log, "a") as file:
            file.write("x")
        return decoded(path, spec, max_pixels)

    monkeypatch.setattr(pipeline, "decoded", counted)
    return log


def test_a_slow_consumer_holds_the_workers_at_the_slot_count(image_dir, tmp_path, monkeypatch):
    log = _count_reads(tmp_path, monkeypatch)
    good = sorted(str(p) for p in (image_dir / "good").rglob("*.png"))
    paths = (good * 40)[:120]
    with InputPipeline(SPEC, 64_000_000, 4, 2, depth=3) as pipe:
        batches = pipe.batches(paths)
        next(batches)
        time.sleep(1.5)  # the consumer dawdles over its first batch
        assert pipe.slots.shape[0] == 3
        assert log.stat().st_size <= 3 * 4  # three slots of four files, not the 120 files
        rest = sum(len(b.paths) for b in batches)
    assert rest == 116


def test_workers_read_ahead_while_the_consumer_scores(image_dir, tmp_path, monkeypatch):
    """Each worker holds two tasks: while the consumer works on batch 0, two workers read batches 1 and 2, and
    3 if they were quick enough to get more tasks while batch 0 was read (with one task each, they read batch 1
    and idled until the consumer came back for it)."""
    log = _count_reads(tmp_path, monkeypatch)
    good = sorted(str(p) for p in (image_dir / "good").rglob("*.png"))
    paths = (good * 40)[:40]
    with InputPipeline(SPEC, 64_000_000, 4, 2) as pipe:  # tasks of two files, four slots
        batches = pipe.batches(paths)
        next(batches)
        time.sleep(1.5)  # the consumer scores its first batch
        # Batch 0 and at least the two next ones (with one task each, workers stopped at batch 1: 8 files); never
        # more than the four slots hold.
        assert 12 <= log.stat().st_size <= 16
        assert [len(b.paths) for b in batches] == [4] * 9


def test_workers_run_below_the_consumers_priority(image_dir):
    good = sorted(str(p) for p in (image_dir / "good").rglob("*.png"))
    with InputPipeline(SPEC, 64_000_000, 2, 2) as pipe:
        assert sum(len(b.paths) for b in pipe.batches(good)) == len(good)
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, w.process.pid) for w in pipe._pool] == [
            min(19, mine + pipeline.WORKER_NICENESS)] * 2


def test_a_run_left_early_does_not_leak_its_tasks_into_the_next(image_dir, monkeypatch):
    """A consumer that stops iterating leaves workers holding tasks of that run: the next run must not take
    their answers for its own."""
    def slow(path, spec, max_pixels):
        time.sleep(0.1)  # the workers still hold tasks when the consumer leaves
        return decoded(path, spec, max_pixels)

    monkeypatch.setattr(pipeline, "decoded", slow)
    good = sorted(str(p) for p in (image_dir / "good").rglob("*.png"))
    with InputPipeline(SPEC, 64_000_000, 2, 2) as pipe:
        first = pipe.batches(good[::-1] * 4)
        next(first)
        first.close()
        crops = [bytes(b.crops.tobytes()) for b in pipe.batches(good)]
    assert b"".join(crops) == b"".join(image_crop(p, SPEC)[0].tobytes() for p in good)


def test_a_second_run_while_the_first_is_open_is_refused(image_dir):
    good = sorted(str(p) for p in (image_dir / "good").rglob("*.png"))
    with InputPipeline(SPEC, 64_000_000, 2, 2) as pipe:
        first = pipe.batches(good * 3)
        next(first)
        with pytest.raises(SpecdetError, match="previous run is still being iterated"):
            next(pipe.batches(good))
        assert sum(len(b.paths) for b in first) == 3 * len(good) - 2  # the first run goes on, whole
        assert sum(len(b.paths) for b in pipe.batches(good)) == len(good)


def test_bad_worker_counts_are_one_line_errors():
    for bad in (-1, 1.5, True, 10_000):
        with pytest.raises(SpecdetError, match="workers="):
            InputPipeline(SPEC, 64_000_000, 4, bad)


def test_torch_and_numpy_normalise_alike(corpus):
    """What a GPU runner does on its device (float32 divide by tensors, not by a Python scalar) gives numpy's values."""
    from specdet.runtime.torch_runner import normalise_tensor

    readable = [p for p, (e, _, _) in zip(corpus, _serial(corpus)) if e is None]
    crops = np.stack([image_crop(p, SPEC)[0] for p in readable])
    on_torch = normalise_tensor(torch.from_numpy(crops), SPEC).numpy()
    assert on_torch.tobytes() == normalise(crops, SPEC).tobytes()


CTRL_C = textwrap.dedent("""
    import sys, time
    from specdet.runtime.pipeline import InputPipeline
    spec = {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    with InputPipeline(spec, 64_000_000, 2, 2) as pipe:
        for number, batch in enumerate(pipe.batches(sys.argv[1:] * 50)):
            if number == 0:
                print(" ".join(str(w.process.pid) for w in pipe._pool), flush=True)
            time.sleep(0.2)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_ctrl_c_leaves_no_worker_and_no_shared_memory(image_dir):
    shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    good = sorted(str(p) for p in (image_dir / "good").rglob("*.png"))
    child = subprocess.Popen([sys.executable, "-c", CTRL_C, *good], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    pids = [int(p) for p in child.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    if os.path.isdir("/dev/shm"):
        assert set(os.listdir("/dev/shm")) <= shm


def test_detect_predict_prints_the_same_with_any_worker_count(tiny_checkpoint, corpus, capsys):
    from specdet.runtime.cli import main

    outputs = []
    for workers in ("0", "2"):
        code = main([str(tiny_checkpoint), *corpus, "--csv", "--batch-size", "3", "--workers", workers])
        outputs.append((code, *capsys.readouterr()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == 1 and "skipped" in outputs[0][2]  # the corpus holds unreadable files


@pytest.mark.parametrize("bad", ["-1", "257", "two"])
def test_detect_predict_refuses_a_bad_worker_count_in_one_line(tiny_checkpoint, corpus, capsys, bad):
    from specdet.runtime.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_checkpoint), corpus[0], "--workers", bad])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("room", [pipeline.ARENA_BYTES_PER_IMAGE, 1_000_000])
def test_regions_left_for_the_device_give_the_serial_crops(corpus, monkeypatch, room):
    """resize_on_device: the workers ship input regions, resized by the runner (here on the CPU, in torch); with
    little room in the arena some images are cropped by the worker instead. Either way: Pillow's bytes."""
    default = pipeline.ARENA_BYTES_PER_IMAGE
    monkeypatch.setattr(pipeline, "ARENA_BYTES_PER_IMAGE", room)
    out, shipped = [], 0
    with InputPipeline(SPEC, 64_000_000, 4, 2, resize_on_device=True) as pipe:
        for got in pipe.batches(corpus):
            shipped += len(got.regions)
            crops = iter(pipeline.finish_crops(got))
            out.extend((e, None if e else next(crops).tobytes(), f) for e, f in zip(got.errors, got.frames))
    assert out == _serial(corpus)
    readable = sum(e is None for e, _, _ in out)
    # With the default room every region fits; with less, the photo-size one does not and its worker crops it.
    # (A task's two files share 2 MB: the 1500 x 1100 photo's region, about 2.9 MB, does not fit.)
    assert 0 < shipped == readable if room == default else 0 < shipped < readable


def test_detector_scores_device_regions_as_crops(tiny_checkpoint, corpus):
    with Detector(tiny_checkpoint) as detector:
        serial = detector.predict_files(corpus, batch_size=4, workers=0)
        with InputPipeline(detector.preprocessing, detector.max_pixels, 4, 2, resize_on_device=True) as pipe:
            shipped = [r for batch in pipe.batches(corpus) for r in detector.score(batch)]
    assert shipped == serial


def test_default_worker_count_follows_where_the_model_runs(tiny_checkpoint, tiny_onnx, monkeypatch):
    """Beside a CPU backend the workers take the model's cores: a quarter of the CPUs; every CPU for a GPU model."""
    monkeypatch.setattr(pipeline, "cpus", lambda: 16)
    assert pipeline.default_workers(True) == 16 and pipeline.default_workers(False) == 4
    for artifact, options in ((tiny_checkpoint, {}), (tiny_onnx, {"providers": ["CPUExecutionProvider"]})):
        with Detector(artifact, **options) as detector:
            assert detector.runner.uses_gpu is False


def test_a_non_finite_score_is_an_error_for_that_image_never_a_label(tiny_checkpoint, corpus, monkeypatch):
    with Detector(tiny_checkpoint) as detector:
        serial = detector.predict_files(corpus, batch_size=4, workers=0)
        real = detector.runner.infer_batch

        def poisoned(batch):
            scores = real(batch)
            scores["probability"][0], scores["logit"][0] = np.nan, np.nan
            return scores

        monkeypatch.setattr(detector.runner, "infer_batch", poisoned)
        got = detector.predict_files(corpus, batch_size=4, workers=2)
    # The first readable file of each batch of four got the NaN.
    poisoned_at = {next(b + i for i, r in enumerate(serial[b:b + 4]) if r.ok)
                   for b in range(0, len(corpus), 4) if any(r.ok for r in serial[b:b + 4])}
    for position, (before, after) in enumerate(zip(serial, got)):
        if position in poisoned_at:
            assert after.error == "the model produced a non-finite score" and after.label is None
        else:
            assert after == before


def test_a_huge_batch_size_over_few_files_allocates_for_the_files(tiny_checkpoint, corpus, monkeypatch):
    sizes = []
    original = InputPipeline.__init__

    def spy(self, spec, max_pixels, batch_size, workers, **kwargs):
        sizes.append(batch_size)
        original(self, spec, max_pixels, batch_size, workers, **kwargs)

    monkeypatch.setattr(InputPipeline, "__init__", spy)
    with Detector(tiny_checkpoint) as detector:
        results = detector.predict_files(corpus[:5], batch_size=65536, workers=0)
    assert sizes == [5] and [r.path for r in results] == corpus[:5]


def test_list_files_that_never_end_or_block_are_one_line_errors(tiny_checkpoint, tmp_path, capsys):
    from specdet.runtime.cli import main

    fifo = tmp_path / "paths.fifo"
    os.mkfifo(fifo)
    for listing in (fifo, Path("/dev/zero")):
        assert main([str(tiny_checkpoint), "--list", str(listing)]) == 2
        err = capsys.readouterr().err.strip()
        assert "is not a regular file" in err and len(err.splitlines()) == 1


def test_impossible_paths_in_a_list_cost_their_line_only(tiny_checkpoint, corpus, tmp_path, capsys):
    """A NUL byte or a name too long for the file system: each is one skipped line, the rest are scored."""
    from specdet.runtime.cli import main

    good = corpus[0]
    listing = tmp_path / "paths.txt"
    listing.write_bytes(b"\n".join([good.encode(), b"/tmp/a\x00b.jpg", b"/tmp/" + b"x" * 5000 + b".jpg", b""]))
    assert main([str(tiny_checkpoint), "--list", str(listing), "--csv"]) == 1
    out, err = capsys.readouterr()
    assert out.count("\n") == 2 and good in out  # the header and the good file
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and "NUL byte" in skipped[0] and "File name too long" in skipped[1]

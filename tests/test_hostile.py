"""Hostile input to the command-line tools: no crash, no hang, no silent wrong answer, nothing lost.

Grouped by class; each class holds the cases reported against it and
siblings of them. Scoring runs on the stand-in tiny checkpoint (conftest).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from specdet.models import checkpoint
from specdet.runtime import cli as predict_cli

preprocess_module = importlib.import_module("specdet.runtime.preprocess")


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims ``width x height`` (a decompression bomb's header, without the bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def good_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"good{i}.png")
    return folder


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    """A registered detector (the stand-in registry of conftest does not reach a subprocess)."""
    from specdet.models import create_model

    torch.manual_seed(0)
    return checkpoint.save(create_model("dual_branch_tiny"), tmp_path_factory.mktemp("real") / "dual.pth")


def _run_predict(*argv, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specdet.runtime.cli", *map(str, argv)], capture_output=True,
                          timeout=300, check=False, **options)


def _predict(argv, capsys):
    code = predict_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- lost work: one bad file must cost that file only --------------------------------------------


@pytest.mark.parametrize(("size", "reason"), [((30000, 30000), "decompression bomb"), ((65000, 65000), "decompression bomb"),
                                              ((9000, 9000), "megapixels, above the limit")])
def test_a_bomb_in_a_folder_is_skipped_and_the_rest_scored(tiny_checkpoint, good_dir, capsys, size, reason):
    _png_header_only(good_dir / "bomb.png", *size)
    code, out, err = _predict([tiny_checkpoint, good_dir, "--json"], capsys)
    assert code == 1
    assert len(__import__("json").loads(out)) == 4
    (line,) = err.splitlines()
    assert line.startswith("skipped ") and "bomb.png" in line and reason in line


def test_an_extreme_strip_is_refused_before_it_is_resized(tiny_checkpoint, good_dir, capsys):
    Image.fromarray(np.zeros((200000, 2), np.uint8)).save(good_dir / "strip.png")  # 0.4 megapixels, 160 once resized
    code, out, err = _predict([tiny_checkpoint, good_dir, "--csv"], capsys)
    assert code == 1 and len(out.splitlines()) == 1 + 4
    assert "strip.png" in err and "resized to" in err and "megapixels" in err


def test_the_pixel_limit_is_configurable():
    image = Image.new("RGB", (300, 200))
    spec = {"resize": None, "crop": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "bicubic"}
    assert preprocess_module.preprocess([image], spec).shape == (1, 3, 32, 32)
    with pytest.raises(preprocess_module.ImageError, match="above the limit of 0.1"):
        preprocess_module.preprocess([image], spec, max_pixels=50_000)


def test_a_memory_error_while_decoding_skips_that_file(tiny_checkpoint, good_dir, capsys, monkeypatch):
    real_load = Image.Image.load

    def load(self):
        if getattr(self, "filename", "").endswith("good2.png"):
            raise MemoryError
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", load)
    code, out, err = _predict([tiny_checkpoint, good_dir], capsys)
    assert code == 1 and len(out.splitlines()) == 1 + 3 and "good2.png: not enough memory" in err


# ---- hangs: only regular files are opened ---------------------------------------------------------


def test_a_fifo_named_like_an_image_is_reported_not_opened(real_checkpoint, good_dir):
    os.mkfifo(good_dir / "x.jpg")
    os.symlink(good_dir / "gone.png", good_dir / "dangling.png")
    done = _run_predict(real_checkpoint, good_dir, text=True)  # a blocking open would hit the timeout
    assert done.returncode == 1, done.stderr
    assert "x.jpg: not a regular file" in done.stderr and "dangling.png: a broken link" in done.stderr
    assert len(done.stdout.splitlines()) == 1 + 4


# ---- silently wrong: thresholds ------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [5, -0.1, float("nan"), float("inf"), "high", None, [0.5], True])
def test_a_checkpoint_with_a_bad_threshold_is_refused(tiny_checkpoint, good_dir, capsys, threshold):
    content = torch.load(tiny_checkpoint, weights_only=True)
    content["threshold"] = threshold
    torch.save(content, tiny_checkpoint)
    code, out, err = _predict([tiny_checkpoint, good_dir], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "a threshold is a probability from 0 to 1" in err


def test_saving_a_bad_threshold_is_refused(tiny_models, tmp_path):
    from conftest import TinyConfig, TinyDetector

    with pytest.raises(checkpoint.SpecdetError, match="probability from 0 to 1"):
        checkpoint.save(TinyDetector(TinyConfig()), tmp_path / "t.pth", threshold=float("nan"))
    assert not (tmp_path / "t.pth").exists()


# ---- output: formula injection, undecodable and multi-line names, full disks ------------------------


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(tiny_checkpoint, good_dir, capsys, monkeypatch):
    monkeypatch.chdir(good_dir)
    for name in ("=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM(1).png"):
        os.link(good_dir / "good0.png", good_dir / name)
    code, out, _ = _predict([tiny_checkpoint, "--csv", "--", "=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM(1).png"], capsys)
    assert code == 0
    cells = [line.split(",")[0] for line in out.splitlines()[1:]]
    assert cells == ["'=HYPERLINK(1).png", "'+1.png", "'-2.png", "'@SUM(1).png"]


def test_undecodable_and_multi_line_names_print_on_one_line(real_checkpoint, good_dir):
    raw = os.fsencode(good_dir) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as file:
        file.write((good_dir / "good0.png").read_bytes())
    (good_dir / "two\nlines.png").write_bytes(b"not a png")
    for form in ("--csv", None):
        done = _run_predict(real_checkpoint, good_dir, *([form] if form else []),
                            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
        assert done.returncode == 1, done.stderr
        assert b"caf\\xe9.png" in done.stdout
        (skipped,) = done.stderr.decode().splitlines()
        assert "two\\nlines.png" in skipped


def test_a_full_disk_is_one_line_not_a_traceback(real_checkpoint, good_dir):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "specdet.runtime.cli", str(real_checkpoint), str(good_dir), "--json"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    assert done.returncode == 2 and "No space left on device" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# ---- crashes get their own exit code -----------------------------------------------------------------


def test_an_internal_error_is_one_line_and_exit_3(tiny_checkpoint, good_dir, capsys, monkeypatch):
    from specdet.runtime.detector import Detector

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(Detector, "predict_files", broken)
    code, out, err = _predict([tiny_checkpoint, good_dir], capsys)
    assert code == 3 and out == ""
    assert err.strip().endswith("(rerun with --debug for the traceback and report it)") and len(err.splitlines()) == 1
    with pytest.raises(RuntimeError):
        predict_cli.main([str(tiny_checkpoint), str(good_dir), "--debug"])


# ---- arguments: sane ranges, one line ------------------------------------------------------------------

ARGUMENT_CASES = [
    ("specdet.runtime.cli", ["m.pth", "x.png", "--threads", "0"], "--threads: 0 is out of range"),
    ("specdet.runtime.cli", ["m.pth", "x.png", "--threads", "-1"], "--threads: -1 is out of range"),
    ("specdet.runtime.cli", ["m.pth", "x.png", "--threads", "100000"], "--threads: 100000 is out of range"),
    ("specdet.runtime.cli", ["m.pth", "x.png", "--batch-size", "0"], "--batch-size: 0 is out of range"),
    ("specdet.runtime.cli", ["m.pth", "x.png", "--no-such-flag"], "unrecognized arguments"),
    ("specdet.runtime.cli", ["m.pth", "x.png", "--max-pixels", "0"], "--max-pixels: 0 is out of range"),
    ("specdet.runtime.cli", ["m.pth", "x.png", "--max-pixels", "1e9"], "--max-pixels: '1e9' is not a whole number"),
    ("specdet.export.cli", ["m.pth", "--opset", "999"], "--opset: 999 is out of range"),
    ("specdet.export.cli", ["m.pth", "--max-batch", "100000000000"], "--max-batch: 100000000000 is out of range"),
    ("specdet.export.cli", ["m.pth", "--fp16-tolerance", "nan"], "--fp16-tolerance: nan is out of range"),
    ("specdet.export.cli", ["m.pth", "--precision", "fp16", "--calibration-count", "0"], "--calibration-count: 0 is out"),
    ("specdet.train.cli", ["--arch", "a", "--data", "d", "--lr", "-1"], "--lr: -1 is out of range"),
    ("specdet.train.cli", ["--arch", "a", "--data", "d", "--threads", "0"], "--threads: 0 is out of range"),
    ("specdet.train.cli", ["--arch", "a", "--data", "d", "--device", "tpu"], "'tpu' is not a device"),
    ("specdet.train.cli", ["--arch", "a", "--data", "d", "--epochs", "0"], "--epochs: 0 is out of range"),
    ("specdet.train.make_data", ["out", "--train-crops", "-1"], "--train-crops: -1 is out of range"),
    ("specdet.train.make_data", ["out", "--train-crops", "0"], "--train-crops: 0 is out of range"),
    ("specdet.benchmarks.cli", ["--iters", "0"], "--iters: 0 is out of range"),
    ("specdet.benchmarks.cli", ["--seconds", "-3"], "--seconds: -3 is out of range"),
    ("specdet.benchmarks.cli", ["--threads", "100000"], "--threads: 100000 is out of range"),
    ("specdet.export.build_cli", ["m.onnx", "--workspace", "0"], "--workspace: 0 is out of range"),
]


@pytest.mark.parametrize(("module", "argv", "message"), ARGUMENT_CASES)
def test_bad_arguments_are_one_line_with_a_pointer_to_help(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and message in err and err.rstrip().endswith("--help)")


# ---- outputs are checked before the work starts ---------------------------------------------------------


def test_outputs_are_refused_before_any_work(tmp_path, capsys):
    from specdet.benchmarks import cli as bench_cli
    from specdet.train import cli as train_cli
    from specdet.train import make_data

    folder, file = tmp_path / "folder", tmp_path / "file"
    folder.mkdir()
    file.write_text("x")
    data = tmp_path / "data"
    (data / "0_real").mkdir(parents=True)
    (data / "1_fake").mkdir(parents=True)
    assert train_cli.main(["--arch", "dual_branch_tiny", "--data", str(data), "-o", str(folder), "--device", "cpu"]) == 2
    assert "is a folder: give a file name for the checkpoint" in capsys.readouterr().err
    assert train_cli.main(["--arch", "dual_branch_tiny", "--data", str(data), "-o", str(file / "m.pth"), "--device", "cpu"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert bench_cli.main(["--out", str(file)]) == 2
    assert "is a file: give a folder for the benchmark report" in capsys.readouterr().err
    assert make_data.main([str(file)]) == 2
    assert "is a file: give a folder for the data set" in capsys.readouterr().err


# ---- security: a manifest names no module but the engine libraries -----------------------------------------


def _fake_engine(folder: Path, engine: dict, data: bytes = b"serialised engine") -> Path:
    """An engine file (bytes no library reads) with a sidecar holding ``engine`` as its engine section."""
    from conftest import tiny_manifest
    from specdet.manifest import Manifest

    path = folder / "model.engine"
    path.write_bytes(data)
    Manifest.from_dict({**tiny_manifest(), "artifact": path.name, "engine": {"plugins": [], **engine}}).write(path)
    return path


@pytest.mark.parametrize("library", ["os", "this", "subprocess", "tensorrt.foo", "specdet.demo", "tensorrt_rtx "])
def test_an_engine_manifest_cannot_make_specdet_import_a_module(tmp_path, library, monkeypatch):
    from specdet.manifest import Manifest, engine_sidecar
    from specdet.runtime import create_runner

    path = _fake_engine(tmp_path, {"library": "tensorrt"})
    sidecar = engine_sidecar(path)
    sidecar.write_text(sidecar.read_text().replace('"library": "tensorrt"', f'"library": "{library}"'))
    imported, real_import = [], importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real_import(name, *a))
    with pytest.raises(checkpoint.SpecdetError, match="engine.library must be one of tensorrt, tensorrt_rtx") as err:
        create_runner(path)
    assert "\n" not in str(err.value) and library.strip() not in imported
    with pytest.raises(checkpoint.SpecdetError, match="engine.library"):
        Manifest.read(path)


def test_the_runner_checks_the_library_again_when_given_a_typed_engine_section(monkeypatch):
    from specdet.manifest import EngineInfo
    from specdet.runtime import tensorrt_runner

    imported, real_import = [], importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real_import(name, *a))
    with pytest.raises(checkpoint.SpecdetError, match="engine library 'this' is not one of tensorrt, tensorrt_rtx"):
        tensorrt_runner._import_library(EngineInfo("this", None, None, None))
    assert imported == []


# ---- the manifest identifies its artifact ---------------------------------------------------------------------


@pytest.mark.parametrize(("recorded", "data"), [
    ({"sha256": "0" * 64}, b"serialised engine"),                        # same size, other bytes
    ({"size_bytes": 17, "sha256": "0" * 64}, b"another engine, longer"),  # another build's size
    ({"size_bytes": 3}, b"serialised engine"),                            # older builds recorded the size only
])
def test_an_engine_beside_another_engine_s_manifest_is_refused(tmp_path, recorded, data):
    from specdet.runtime import create_runner

    path = _fake_engine(tmp_path, {"library": "tensorrt", **recorded}, data)
    with pytest.raises(checkpoint.SpecdetError) as err:
        create_runner(path)
    assert str(err.value) == ("the manifest beside model.engine (model.engine.json) describes another engine: "
                              "rebuild it with detect-build")


def test_the_engine_a_manifest_describes_passes_its_identity_check(tmp_path):
    import hashlib

    from specdet.manifest import Manifest, check_engine_file

    data = b"serialised engine"
    path = _fake_engine(tmp_path, {"library": "tensorrt", "size_bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest()}, data)
    engine = Manifest.read(path).engine
    check_engine_file(path, engine)  # no error
    assert (engine.size_bytes, engine.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert Manifest.read(path).to_dict()["engine"]["sha256"] == engine.sha256  # written back when rewritten


@pytest.mark.parametrize(("field", "value"), [("sha256", "abc"), ("sha256", 5), ("size_bytes", -1), ("size_bytes", "9")])
def test_a_malformed_engine_identity_is_refused(tmp_path, field, value):
    with pytest.raises(checkpoint.SpecdetError, match=f"engine.{field} must be"):
        _fake_engine(tmp_path, {"library": "tensorrt", field: value})


# ---- outputs that would destroy inputs are refused before any work ------------------------------------------


def _export_main(argv):
    from specdet.export import cli as export_cli

    return export_cli.main([str(a) for a in argv])


@pytest.mark.parametrize(("output", "message"), [
    ("tiny.pth", "is also an input: writing the ONNX file there would destroy it"),
    ("link.onnx", "is also an input: writing the ONNX file there would destroy it"),  # a link to the checkpoint
    ("x.json", "x.json: an exported file's name must end in .onnx"),
    ("x.engine", "x.engine: an exported file's name must end in .onnx"),  # its manifest would go to a sidecar
])
def test_export_refuses_an_output_that_is_its_input_or_not_onnx(tiny_checkpoint, capsys, output, message):
    (tiny_checkpoint.parent / "link.onnx").symlink_to(tiny_checkpoint)
    before = tiny_checkpoint.read_bytes()
    assert _export_main([tiny_checkpoint, "-o", tiny_checkpoint.parent / output]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert tiny_checkpoint.read_bytes() == before and not (tiny_checkpoint.parent / "x.json").exists()


def test_fp16_conversion_refuses_to_write_over_its_source(tiny_onnx, tmp_path, capsys):
    source = tmp_path / "m.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    assert _export_main([source, "--precision", "fp16", "-o", source]) == 2
    assert "is also an input: writing the ONNX file there would destroy it" in capsys.readouterr().err
    assert source.read_bytes() == tiny_onnx.read_bytes()


def _build_case(folder: Path, tiny_onnx: Path, case: str) -> tuple[list, Path]:
    """``(argv, the input that must survive)`` of a detect-build whose outputs collide with an input."""
    from conftest import tiny_manifest

    if case == "engine output is the ONNX input":  # an ONNX file named .engine, read through its sidecar
        source = folder / "m.engine"
        source.write_bytes(tiny_onnx.read_bytes())
        (folder / "m.engine.json").write_text(__import__("json").dumps(tiny_manifest()))
        return [source], source
    source = folder / "m.engine.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    if case == "sidecar is the input's legacy manifest":
        (folder / "m.engine.json").write_text(__import__("json").dumps(tiny_manifest()))
        return [source, "-o", folder / "m.engine"], folder / "m.engine.json"
    if case == "timing cache is the ONNX input":
        return [source, "--timing-cache", source], source
    return [source, "-o", folder / "out.engine", "--timing-cache", folder / "out.engine.json"], source


@pytest.mark.parametrize(("case", "message"), [
    ("engine output is the ONNX input", "m.engine is also an input: writing the engine there would destroy it"),
    ("sidecar is the input's legacy manifest", "m.engine.json is also an input: writing the engine manifest there"),
    ("timing cache is the ONNX input", "m.engine.onnx is also an input: writing the timing cache there"),
    ("timing cache is the sidecar", "out.engine.json would be both the engine manifest and the timing cache"),
])
def test_build_refuses_outputs_that_collide_with_inputs_or_each_other(tiny_onnx, tmp_path, capsys, case, message):
    from specdet.export import build_cli

    argv, kept = _build_case(tmp_path, tiny_onnx, case)
    before = kept.read_bytes()
    assert build_cli.main([str(a) for a in argv]) == 2  # before any TensorRT library is needed
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert kept.read_bytes() == before


@pytest.mark.parametrize(("argv", "message"), [
    (["--report", "{dir}/r"], "r.json is also an input: writing the JSON report there would destroy it"),
    (["--report", "{dir}/folder"], "folder.md is a folder: give a file name for the Markdown report"),
    (["-o", "{dir}/r.json"], "r.json is also an input: writing the calibrated checkpoint there"),
    (["-o", "{dir}/x.md", "--report", "{dir}/x"], "x.md would be both the Markdown report and the calibrated checkpoint"),
])
def test_eval_only_outputs_are_checked_before_scoring(tiny_checkpoint, tmp_path, capsys, argv, message):
    from specdet.train import cli as train_cli

    model = tmp_path / "r.json"  # a checkpoint may have any name
    model.write_bytes(tiny_checkpoint.read_bytes())
    (tmp_path / "folder.md").mkdir()
    argv = [a.format(dir=tmp_path) for a in argv]
    # The data folder does not exist: an output checked after the scoring started would fail on it instead.
    assert train_cli.main(["--eval-only", str(model), "--data", str(tmp_path / "missing"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


# ---- leftovers of a killed write are removed by the next write of the same output ------------------------------


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def _leftovers(folder: Path, name: str, dead: int, alive: int) -> tuple[list[Path], list[Path]]:
    """``(stale, kept)``: the temporaries a killed writer of ``name`` left, and look-alikes that are not ours to remove."""
    stale = [folder / f".{name}.{dead}.partial", folder / f".{name}.{dead}.k3j_x9a2.tmp", folder / f".{name}.{dead}.a1.tmp"]
    kept = [folder / f".{name}.{alive}.partial",  # a writer still running
            folder / f".other.onnx.{dead}.partial", folder / f"{name}.{dead}.partial", folder / f".{name}.partial",
            folder / f".{name}.{dead}.partial.bak", folder / f".{name}.x{dead}.tmp", folder / "notes.tmp"]
    for path in stale[:2] + kept:
        path.write_bytes(b"left over")
    stale[2].mkdir()  # the FP16 export's working folder
    (stale[2] / "m.fp32.onnx").write_bytes(b"left over")
    return stale, kept


@pytest.mark.parametrize("writer", ["detect-export", "engine manifest", "checkpoint"])
def test_the_next_write_removes_the_leftovers_of_a_killed_one(tiny_checkpoint, tmp_path, writer, monkeypatch):
    from conftest import TinyConfig, TinyDetector, TinyScoring, tiny_manifest
    from specdet.export import artifact
    from specdet.manifest import Manifest

    monkeypatch.setattr(artifact, "ScoringModule", TinyScoring)  # bound when the exporter was first imported

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        name = {"detect-export": "m.onnx", "engine manifest": "m.engine.json", "checkpoint": "m.pth"}[writer]
        stale, kept = _leftovers(tmp_path, name, _dead_pid(), alive.pid)
        if writer == "detect-export":
            assert _export_main([tiny_checkpoint, "-o", tmp_path / name, "--quiet"]) == 0
        elif writer == "engine manifest":
            Manifest.from_dict({**tiny_manifest(), "engine": {"library": "tensorrt"}}).write(tmp_path / "m.engine")
        else:
            checkpoint.save(TinyDetector(TinyConfig()), tmp_path / name)
        assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
    finally:
        alive.kill()
        alive.wait()


def test_a_write_killed_midway_leaves_a_temporary_the_next_one_removes(tmp_path):
    target = tmp_path / "model.pth"
    script = ("import sys, time; from specdet.files import atomic_write; "
              "atomic_write(sys.argv[1], lambda f: (f.write(b'half'), f.flush(), print('writing', flush=True), time.sleep(60)))")
    child = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    child.kill()  # SIGKILL: no cleanup handler runs
    child.wait()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".model.pth.{child.pid}.") and left.name.endswith(".tmp")
    from specdet.files import atomic_write

    atomic_write(target, lambda f: f.write(b"whole"))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"] and target.read_bytes() == b"whole"


# ---- the Python API has the command lines' bounds ----------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, -1, 100_000, 2.5, "4", True])
@pytest.mark.parametrize("entry", ["Detector", "create_runner"])
def test_the_api_refuses_thread_counts_out_of_range(tiny_checkpoint, entry, threads):
    from specdet.runtime import Detector, create_runner

    make = Detector if entry == "Detector" else create_runner
    with pytest.raises(checkpoint.SpecdetError) as err:
        make(tiny_checkpoint, threads=threads)
    assert str(err.value) == f"threads={threads!r} is out of range: give a whole number from 1 to 1024"


@pytest.mark.parametrize("batch_size", [0, -3, 65_537, 10**12, 1.0, None])
@pytest.mark.parametrize("call", ["predict", "predict_files"])
def test_the_api_refuses_batch_sizes_out_of_range(tiny_checkpoint, good_dir, call, batch_size):
    from specdet.runtime import Detector

    with Detector(tiny_checkpoint) as detector, pytest.raises(checkpoint.SpecdetError) as err:
        getattr(detector, call)([good_dir / "good0.png"], batch_size=batch_size)
    assert str(err.value) == f"batch_size={batch_size!r} is out of range: give a whole number from 1 to 65536"


@pytest.mark.parametrize("max_pixels", [0, -1, 10**10, "big"])
def test_the_api_refuses_a_pixel_limit_out_of_range(tiny_checkpoint, max_pixels):
    from specdet.runtime import Detector

    with pytest.raises(checkpoint.SpecdetError, match=rf"max_pixels={max_pixels!r} is out of range: give a whole number "
                       r"from 1 to 178956970"):
        Detector(tiny_checkpoint, max_pixels=max_pixels)


def test_the_pixel_limit_reaches_predict_and_predict_files(tiny_checkpoint, good_dir, capsys):
    from specdet.runtime import Detector

    image = good_dir / "good0.png"  # 48 x 40, resized to 38 x 32 by the stand-in's preprocessing
    with Detector(tiny_checkpoint, max_pixels=1500) as detector:
        (result,) = detector.predict_files([image])
        assert "above the limit of 0.0" in result.error
        with pytest.raises(preprocess_module.ImageError, match="1920 megapixels|48 x 40"):
            detector.predict([image])
    with Detector(tiny_checkpoint, max_pixels=48 * 40) as detector:
        assert detector.predict_files([image])[0].ok and detector.predict([image]).shape == (1,)
    code, out, err = _predict([tiny_checkpoint, image, "--max-pixels", "1500"], capsys)
    assert code == 1 and "good0.png: 48 x 40 is 0.0 megapixels, above the limit" in err
    code, _, err = _predict([tiny_checkpoint, image, "--max-pixels", str(48 * 40)], capsys)
    assert code == 0 and err == ""


# ---- messages: say what was done, and the remedy that fits the artifact ---------------------------------------------


def _multi_frame(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(frames)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], **({"duration": 100} if path.suffix != ".tiff" else {}))
    return path


@pytest.mark.parametrize(("name", "frames"), [("anim.gif", 3), ("pages.tiff", 2), ("anim.webp", 4), ("anim.png", 2)])
def test_a_multi_frame_image_is_scored_on_its_first_frame_and_says_so(tiny_checkpoint, good_dir, capsys, name, frames):
    from specdet.runtime import Detector

    path = _multi_frame(good_dir / name, frames)
    with Image.open(path) as image:
        assert image.n_frames == frames  # this Pillow writes the frames
        first = np.asarray(image.convert("RGB"))
    code, out, err = _predict([tiny_checkpoint, good_dir, "--csv"], capsys)
    assert code == 0 and len(out.splitlines()) == 1 + 5
    assert err.splitlines() == [f"note: {path} has {frames} frames; scored the first"]
    with Detector(tiny_checkpoint) as detector:
        (result,) = detector.predict_files([path])
        assert result.frames == frames
        assert result.probability == pytest.approx(float(detector.predict(first)[0]), abs=1e-6)
        assert [r.frames for r in detector.predict_files([good_dir / "good0.png"])] == [1]


def test_batch_messages_never_say_any_and_name_the_right_tool(tiny_checkpoint, tiny_onnx):
    from conftest import MAX_BATCH
    from specdet.runtime import create_runner
    from specdet.runtime.base import batch_range_remedy, remake_remedy

    with create_runner(tiny_checkpoint) as runner, pytest.raises(checkpoint.SpecdetError) as err:
        runner.infer(np.zeros((0, 3, 32, 32), np.float32))
    assert "any" not in str(err.value) and "takes 1 image or more" in str(err.value)
    with create_runner(tiny_onnx) as runner, pytest.raises(checkpoint.SpecdetError) as err:
        runner.infer(np.zeros((MAX_BATCH + 1, 3, 32, 32), np.float32))
    assert str(err.value).endswith(f"takes 1 to {MAX_BATCH}: use a smaller --batch-size or re-export with a larger "
                                   "detect-export --max-batch")
    for engine in ("m.engine", "m.PLAN"):
        assert batch_range_remedy(engine) == "rebuild the engine with a larger detect-build --batch"
        assert remake_remedy(engine) == "rebuild it with detect-build"
    assert remake_remedy("m.onnx") == "re-export it with detect-export"


@pytest.mark.parametrize("kind", ["raw pickle", "torch.save"])
def test_a_pickle_is_refused_in_one_line_without_torch_s_warning(tmp_path, good_dir, kind):
    import pickle

    path = tmp_path / "evil.pth"
    payload = {"x": os.system}  # loading would need a Python object: refused
    if kind == "raw pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))  # torch warns about protocol 4 before refusing
    else:
        torch.save(payload, path)
    done = _run_predict(path, good_dir, text=True)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()  # torch's two-line warning would come first
    assert line.endswith(f"error: {path} holds pickled Python objects, which are refused for safety: save only tensors "
                         "and plain containers (specdet.models.checkpoint.save does)")


def test_a_pickled_resume_state_is_refused_without_torch_s_warning(tmp_path):
    import pickle
    import warnings

    from specdet.train.state import load_state

    path = tmp_path / "evil.state.pth"
    path.write_bytes(pickle.dumps({"x": os.system}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(checkpoint.SpecdetError, match="is not a readable training state"):
            load_state(path)
    assert caught == []


# ---- the fuzz test's finds, each as a case of its own ---------------------------------------------------


def _reembedded(tiny_onnx: Path, folder: Path, **changes) -> Path:
    """A copy of the tiny ONNX file whose embedded manifest has ``changes`` (validated on write)."""
    from conftest import tiny_manifest
    from specdet.manifest import Manifest

    target = folder / "changed.onnx"
    shutil.copy(tiny_onnx, target)
    Manifest.from_dict({**tiny_manifest(), "artifact": target.name, **changes}).write(target)
    return target


@pytest.mark.parametrize(("inputs", "message"), [
    ([{"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float16"}], "takes float32"),
])
def test_a_manifest_input_that_is_not_the_graphs_is_refused(tiny_onnx, tmp_path, capsys, good_dir, inputs, message):
    artifact = _reembedded(tiny_onnx, tmp_path, inputs=inputs)
    code, out, err = _predict([artifact, good_dir], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err


def test_a_preprocessing_without_resize_scores_as_no_resize(tiny_onnx, tmp_path, capsys, good_dir):
    """It crashed with exit 3 (KeyError); a missing ``resize`` means none, as ``null`` does."""
    from conftest import TINY_PREPROCESSING

    spec = {k: v for k, v in TINY_PREPROCESSING.items() if k != "resize"}
    from conftest import tiny_manifest
    from specdet import onnx_metadata

    text = json.dumps({**tiny_manifest(), "artifact": "rewritten.onnx", "preprocessing": spec})
    with open(tmp_path / "rewritten.onnx", "wb") as target:  # written as is: Manifest.write would refuse it
        onnx_metadata.write_metadata(tiny_onnx, target, {"specdet.manifest": text})
    code, out, err = _predict([tmp_path / "rewritten.onnx", good_dir], capsys)
    assert code == 0 and err == "" and len(out.splitlines()) == 1 + 4


def test_a_corrupt_tiff_is_reported_once_without_pillow_log_lines(real_checkpoint, good_dir):
    """Pillow logs some decoder errors before raising them; unconfigured logging printed that on stderr.

    In a subprocess: pytest's own log capture would hide the stray line.
    """
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good_dir / "bad.tif")
    data = bytearray((good_dir / "bad.tif").read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]  # Pillow writes little-endian TIFF
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 277:  # SamplesPerPixel
            struct.pack_into("<H", data, entry + 8, 59139)
    (good_dir / "bad.tif").write_bytes(bytes(data))
    done = _run_predict(real_checkpoint, good_dir, text=True)
    assert done.returncode == 1 and len(done.stdout.splitlines()) == 1 + 4
    (line,) = done.stderr.splitlines()
    assert line.startswith("skipped ") and "bad.tif" in line

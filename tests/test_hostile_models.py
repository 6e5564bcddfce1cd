"""Hostile models, checkpoints, configs and outputs (issue 21, round 3): no NaN labelled, nothing unbounded.

Each class holds the reported case and siblings: a model or manifest that
scores NaN, a checkpoint whose config asks for a giant model, training that
diverges, outputs that would destroy inputs, images and runs that need more
memory than the machine has, and closed streams.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from conftest import tiny_manifest
from specdet import onnx_metadata
from specdet.errors import SpecdetError
from specdet.limits import MAX_JSON_DEPTH, MAX_PIXELS_CEILING
from specdet.manifest import ONNX_METADATA_KEY, Manifest, finite_normalisation, json_problem
from specdet.models import checkpoint, create_model
from specdet.runtime import cli as predict_cli
from specdet.runtime.detector import NON_FINITE, labelled
from specdet.train.cli import main as train_main


@pytest.fixture
def good_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"good{i}.png")
    return folder


def _predict(argv, capsys):
    code = predict_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, (code, out, err)


def _strict_json(text: str):
    """``json.loads`` that refuses the bare NaN / Infinity Python's encoder writes by default."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def _with_manifest_text(tiny_onnx: Path, folder: Path, text: str) -> Path:
    """A copy of the tiny ONNX file with ``text`` as its embedded manifest, written as is (unchecked)."""
    target = folder / "raw.onnx"
    with open(target, "wb") as file:
        onnx_metadata.write_metadata(tiny_onnx, file, {ONNX_METADATA_KEY: text})
    return target


def _nan_onnx(tiny_onnx: Path, folder: Path, value: float = float("nan")) -> Path:
    """The tiny ONNX file with its first floating-point initializer set to ``value`` (the manifest kept)."""
    model = onnx.load(str(tiny_onnx))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            init.CopyFrom(numpy_helper.from_array(np.full_like(array, value), init.name))
            break
    target = folder / "nan.onnx"
    onnx.save(model, str(target))
    return target


# ---- non-finite preprocessing: refused when the manifest is read ------------------------------------------


@pytest.mark.parametrize(("mean", "std", "finite"), [
    ([0.5] * 3, [0.5] * 3, True),
    ([0.5] * 3, [1e-30] * 3, True),  # large, still finite in float32
    ([0.5] * 3, [1e-40] * 3, False),  # a float32 denormal: its reciprocal overflows
    ([0.5] * 3, [1e-50] * 3, False),  # 0 in float32
    ([3e38, 0, 0], [0.5] * 3, False),  # finite, but (0 - mean) / std is not
    ([1e38, 0, 0], [0.5] * 3, True),  # huge but finite pixels: a NaN score, if any, is a per-image error
    ([1e39, 0, 0], [1.0] * 3, False),  # infinite in float32
    ([0.5] * 3, [1e39, 1, 1], False),
    ([0.5] * 3, [-0.5] * 3, True),  # a negative std flips the sign: odd, but finite
])
def test_the_finite_normalisation_rule(mean, std, finite):
    assert finite_normalisation(mean, std) is finite


@pytest.mark.parametrize(("field", "value"), [
    ("std", [1e-40, 0.2, 0.2]), ("mean", [3e38, 0.4, 0.4]), ("mean", [float("inf"), 0.4, 0.4]),
    ("std", [float("nan"), 0.2, 0.2]),
])
def test_a_manifest_that_cannot_normalise_to_finite_pixels_is_refused(tiny_onnx, tmp_path, capsys, good_dir,
                                                                      field, value):
    data = tiny_manifest()
    data["preprocessing"] = {**data["preprocessing"], field: value}
    artifact = _with_manifest_text(tiny_onnx, tmp_path, json.dumps(data))  # Python writes NaN / Infinity bare
    _one_line_error(*_predict([artifact, good_dir], capsys), "invalid preprocessing")


def test_a_checkpoint_whose_preprocessing_cannot_be_finite_is_refused_when_loaded(tiny_checkpoint, tmp_path):
    content = torch.load(tiny_checkpoint, weights_only=True)
    content["preprocessing"]["std"] = [1e-40, 1e-40, 1e-40]
    torch.save(content, tmp_path / "tiny-std.pth")
    with pytest.raises(SpecdetError, match="finite float32 pixels"):
        checkpoint.load(tmp_path / "tiny-std.pth")


# ---- JSON: nesting, size, non-finite numbers ------------------------------------------------------------


def test_a_manifest_nested_100000_levels_deep_is_one_line(tiny_onnx, tmp_path, capsys, good_dir):
    text = '{"format": "specdet-manifest", "version": 1, "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    artifact = _with_manifest_text(tiny_onnx, tmp_path, text)
    _one_line_error(*_predict([artifact, good_dir], capsys), "levels deep")


@pytest.mark.parametrize(("extra", "message"), [
    ({"deep": json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))}, "levels deep"),
    ({"validation": {"ap": float("nan")}}, "JSON cannot write"),
    ({"metadata": {"loss": float("-inf")}}, "JSON cannot write"),
])
def test_a_manifest_that_json_readers_cannot_take_is_refused(extra, message):
    with pytest.raises(SpecdetError, match=message):
        Manifest.from_dict({**tiny_manifest(), **extra})


def test_shared_references_are_counted_as_written_out_without_expanding():
    bomb: list = [0]
    for _ in range(60):  # 2**60 values written out; a few hundred bytes pickled
        bomb = [bomb, bomb]
    assert "more than" in json_problem({"x": bomb})
    assert json_problem({"a": [1, 2.5, "x", None, True, {"b": []}]}) is None
    assert json_problem({1: "x"}) == "an object has a key that is not text"


# ---- non-finite scores: a per-image error everywhere, never a label -----------------------------------------


def test_the_label_rule_takes_only_finite_scores():
    probability = np.array([0.2, np.nan, 1.0, 0.0, np.inf, -0.1, 1.0, 0.0], np.float32)
    logit = np.array([-1.4, np.nan, np.inf, -np.inf, 0.0, 0.0, 90.0, -90.0], np.float32)
    assert labelled(probability, logit).tolist() == [True, False, False, False, False, False, True, True]


@pytest.mark.parametrize("form", [[], ["--json"], ["--csv"]])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_onnx_initializer_set_to_nan_skips_every_image(tiny_onnx, tmp_path, capsys, good_dir, form, value):
    artifact = _nan_onnx(tiny_onnx, tmp_path, value)
    code, out, err = _predict([artifact, good_dir, *form], capsys)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.startswith("skipped ") and line.endswith(NON_FINITE) for line in lines), err
    if form == ["--json"]:
        assert _strict_json(out) == []
    else:
        assert "nan" not in out.lower() and len(out.splitlines()) == 1  # the header only


def test_openvino_refuses_non_finite_weights(tiny_onnx, tmp_path, capsys, good_dir):
    """OpenVINO's ReLU turns NaN into 0: the file scored finite, constant, wrong probabilities, exit 0."""
    pytest.importorskip("openvino")
    artifact = _nan_onnx(tiny_onnx, tmp_path)
    _one_line_error(*_predict([artifact, good_dir, "--backend", "openvino", "--json"], capsys), "NaN or infinite")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_by_every_command(tiny_checkpoint, tmp_path, capsys,
                                                                          good_dir, value):
    content = torch.load(tiny_checkpoint, weights_only=True)
    content["state_dict"]["conv.weight"][0, 0, 0, 0] = value
    torch.save(content, tmp_path / "broken.pth")
    _one_line_error(*_predict([tmp_path / "broken.pth", good_dir], capsys), "NaN or infinite values")
    code = train_main(["--eval-only", str(tmp_path / "broken.pth"), "--data", str(good_dir)])
    out, err = capsys.readouterr()
    _one_line_error(code, out, err, "NaN or infinite values")


def test_saving_non_finite_weights_is_refused(tiny_models, tmp_path):
    from conftest import TinyConfig, TinyDetector

    model = TinyDetector(TinyConfig())
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(SpecdetError, match="not saving"):
        checkpoint.save(model, tmp_path / "nan.pth")
    assert not (tmp_path / "nan.pth").exists()


def test_eval_only_on_a_checkpoint_with_garbage_metadata_is_one_line(tiny_checkpoint, tmp_path, capsys, good_dir):
    """Non-text keys went on to ``save(**metadata)``: a TypeError, exit 3."""
    content = torch.load(tiny_checkpoint, weights_only=True)
    content["metadata"] = {1: "one", "labels": [None, {2: 3}]}
    torch.save(content, tmp_path / "garbage.pth")
    code = train_main(["--eval-only", str(tmp_path / "garbage.pth"), "--data", str(good_dir),
                       "-o", str(tmp_path / "out.pth")])
    out, err = capsys.readouterr()
    _one_line_error(code, out, err, "metadata cannot be written as JSON")


# ---- configs: every field bounded before anything is allocated ---------------------------------------------


def _real_checkpoint(folder: Path, **config) -> Path:
    """A registered tiny detector's checkpoint whose saved config is changed to ``config`` (weights kept)."""
    path = folder / "real.pth"
    torch.manual_seed(0)
    checkpoint.save(create_model("rine_ssca_tiny"), path)
    content = torch.load(path, weights_only=True)
    content["config"].update(config)
    torch.save(content, path)
    return path


def _self_referential(levels: int = 60) -> list:
    bomb: list = [1]
    for _ in range(levels):
        bomb = [bomb, bomb]
    return bomb


@pytest.mark.parametrize(("config", "message"), [
    ({"input_size": 10**9}, "input_size=1000000000"),
    ({"clip_hidden": 10**6}, "clip_hidden=1000000"),
    ({"clip_hidden": 60000, "clip_intermediate": 60000}, "weights and buffers, above the limit"),
    ({"clip_layers": 100_000}, "clip_layers=100000"),
    ({"clip_heads": True}, "clip_heads=True"),
    ({"dropout": float("nan")}, "dropout=nan"),
    ({"weights": "x" * 100_000}, "weights="),
    ({"proj_dim": _self_referential()}, "proj_dim=list"),
    ({"proj_dim": {"a": 1}}, "proj_dim=dict"),
    ({"clip_heads": 3}, "cannot build"),  # each field in range, the combination refused by transformers
])
def test_a_config_asking_for_a_giant_or_broken_model_is_one_line(tmp_path, capsys, good_dir, config, message):
    path = _real_checkpoint(tmp_path, **config)
    assert path.stat().st_size < 10_000_000  # the bomb is small on disk
    _one_line_error(*_predict([path, good_dir], capsys), message)


def test_export_refuses_a_giant_config_before_building(tmp_path, capsys):
    from specdet.export.cli import main as export_main

    path = _real_checkpoint(tmp_path, clip_hidden=60000, clip_intermediate=60000)
    code = export_main([str(path), "-o", str(tmp_path / "out.onnx")])
    out, err = capsys.readouterr()
    _one_line_error(code, out, err, "above the limit")
    assert not (tmp_path / "out.onnx").exists()


def test_a_list_field_refers_to_itself_without_expanding(tmp_path, capsys, good_dir):
    torch.manual_seed(0)
    path = checkpoint.save(create_model("dual_branch_tiny"), tmp_path / "dual.pth")
    content = torch.load(path, weights_only=True)
    content["config"]["freq_channels"] = _self_referential()
    content["metadata"] = {"history": _self_referential()}
    torch.save(content, path)
    _one_line_error(*_predict([path, good_dir], capsys), "JSON")


def test_training_refuses_a_giant_model_override_before_reading_data(tmp_path, capsys):
    code = train_main(["--arch", "rine_ssca_tiny", "--data", str(tmp_path / "absent"),
                       "--set", "clip_layers=100000", "-o", str(tmp_path / "m.pth")])
    out, err = capsys.readouterr()
    _one_line_error(code, out, err, "clip_layers=100000")


# ---- training that diverges; outputs onto inputs -------------------------------------------------------------


SMALL = ["--set", "input_size=64", "--set", "freq_grid=2", "--batch-size", "4", "--workers", "0", "--threads", "1",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from specdet.train.make_data import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, train_crops=8, val_crops=2, size=64, seed=0)
    return root


def test_training_stops_at_the_first_non_finite_loss_and_keeps_the_last_finite_checkpoint(demo, tmp_path, capsys):
    out = tmp_path / "model.pth"
    code = train_main(["--arch", "dual_branch_tiny", "--data", str(demo / "train"), "-o", str(out), "--lr", "10",
                       "--epochs", "4", *SMALL])
    _, err = capsys.readouterr()
    assert code == 2
    last = err.splitlines()[-1]
    assert "training diverged" in last and "the last finite one" in last, err
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "model.log.jsonl").read_text().splitlines()]
    kept = checkpoint.load(out)  # loads: every weight finite
    assert kept.metadata["epoch"] == epochs[-1] < 4
    assert f"keeps epoch {epochs[-1]}" in last


def test_training_refuses_to_write_over_one_of_its_images(demo, tmp_path, capsys):
    target = tmp_path / "data"
    shutil.copytree(demo / "train", target)
    image = sorted((target / "0_real").iterdir())[0]
    before = image.read_bytes()
    code = train_main(["--arch", "dual_branch_tiny", "--data", str(target), "-o", str(image), *SMALL])
    out, err = capsys.readouterr()
    _one_line_error(code, out, err, "is an image in the input folder")
    assert image.read_bytes() == before


def test_make_data_keeps_a_readme_of_the_user(tmp_path, capsys):
    from specdet.train.make_data import main as make_main

    (tmp_path / "README.md").write_text("my notes")
    code = make_main([str(tmp_path), "--train-crops", "1", "--val-crops", "1", "--size", "64"])
    out, err = capsys.readouterr()
    _one_line_error(code, out, err, "was not written by detect-make-data")
    assert (tmp_path / "README.md").read_text() == "my notes" and not (tmp_path / "train").exists()


def test_make_data_overwrite_with_a_bad_size_keeps_the_previous_set(tmp_path, capsys):
    from specdet.train.make_data import main as make_main

    assert make_main([str(tmp_path), "--train-crops", "1", "--val-crops", "1", "--size", "64"]) == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    code = make_main([str(tmp_path), "--overwrite", "--size", "7"])
    out, err = capsys.readouterr()
    _one_line_error(code, out, err, "crop size 7")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # Rerunning over its own README is fine.
    assert make_main([str(tmp_path), "--overwrite", "--train-crops", "1", "--val-crops", "1", "--size", "64"]) == 0


def test_a_calibrated_threshold_is_at_most_one():
    from specdet.train.metrics import threshold_at_fpr

    assert threshold_at_fpr([1.0, 1.0, 0.5], 0.0) == 1.0


# ---- memory: per image, per run ----------------------------------------------------------------------------


def _png_header(path: Path, width: int, height: int, depth: int, colour: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_16_bit_image_under_the_pixel_limit_but_over_the_memory_limit_is_skipped(tiny_checkpoint, good_dir,
                                                                                    capsys):
    _png_header(good_dir / "deep.png", 13_000, 13_000, 16, 0)
    code, out, err = _predict([tiny_checkpoint, good_dir, "--max-pixels", MAX_PIXELS_CEILING], capsys)
    assert code == 1 and len(out.splitlines()) == 1 + 3
    (line,) = err.splitlines()
    assert line.startswith("skipped ") and "deep.png" in line and "GiB to decode" in line


def test_a_raised_pixel_limit_adds_no_pillow_warning_lines(tiny_onnx, good_dir):
    """Above Pillow's own threshold (89 megapixels) it printed a DecompressionBombWarning: two stray lines."""
    _png_header(good_dir / "deep.png", 13_000, 13_000, 16, 0)
    done = _run_closed("", tiny_onnx, good_dir, "--max-pixels", MAX_PIXELS_CEILING)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr


def test_the_16_bit_conversion_in_blocks_is_the_exact_rounding(monkeypatch):
    preprocess = sys.modules["specdet.runtime.preprocess"]
    monkeypatch.setattr(preprocess, "_BLOCK_PIXELS", 1000)  # many blocks, one partial
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    rgb = np.asarray(preprocess.load_image(Image.fromarray(values)))  # mode I;16
    expected = np.clip(np.round(values.astype(np.float64) * (255.0 / 65535)), 0, 255).astype(np.uint8)
    assert (rgb[..., 0] == expected).all() and (rgb[..., 1] == expected).all()


def test_too_many_local_ray_actors_for_the_memory_are_refused_before_ray_starts(tiny_onnx, tmp_path, capsys,
                                                                                good_dir, monkeypatch):
    pytest.importorskip("ray.data", reason="needs the ray extra")
    from specdet.runtime import ray_scoring

    monkeypatch.setattr(ray_scoring, "available_memory", lambda: 8 << 30)
    monkeypatch.setattr(ray_scoring, "_run", lambda *a, **k: pytest.fail("Ray started"))
    code, out, err = _predict([tiny_onnx, good_dir, "--ray", "--out", tmp_path / "scores", "--actors", "64"], capsys)
    _one_line_error(code, out, err, "give --actors 7 or fewer")
    assert not (tmp_path / "scores").exists()


def test_a_calibration_count_beyond_memory_is_refused_before_any_image_is_read(tmp_path, monkeypatch):
    from specdet.export import artifact

    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"not read")
    monkeypatch.setattr(artifact, "MAX_CALIBRATION_BYTES", 2 * 3 * 32 * 32 * 4)  # two 32 x 32 images
    monkeypatch.setattr(sys.modules["specdet.runtime.preprocess"], "preprocess", lambda *a, **k: pytest.fail("read"))
    manifest = Manifest.from_dict(tiny_manifest())
    with pytest.raises(SpecdetError, match="give --calibration-count 2 or fewer"):
        artifact.calibration_batches(manifest, folder, 3)


# ---- closed streams ----------------------------------------------------------------------------------------


def _run_closed(redirect: str, *argv) -> subprocess.CompletedProcess:
    """detect-predict started by the shell with ``redirect`` (``>&-``: stdout closed)."""
    return subprocess.run(["bash", "-c", f'exec "$0" -m specdet.runtime.cli "$@" {redirect}', sys.executable,
                           *map(str, argv)], capture_output=True, text=True, timeout=300, check=False)


def test_stdout_closed_is_one_line_not_an_internal_error(tiny_onnx, good_dir):
    done = _run_closed(">&-", tiny_onnx, good_dir)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert "standard output is closed" in line


def test_stderr_closed_still_scores_and_reports_through_the_exit_code(tiny_onnx, good_dir):
    (good_dir / "bad.png").write_text("not a PNG")
    done = _run_closed("2>&-", tiny_onnx, good_dir, "--json")
    assert done.returncode == 1 and len(_strict_json(done.stdout)) == 3


# ---- Ray: the same rule for its Parquet rows -----------------------------------------------------------------


def test_ray_rows_of_a_nan_model_are_errors_not_labels(tiny_onnx, tmp_path, capsys, good_dir):
    pq = pytest.importorskip("pyarrow.parquet", reason="needs the ray extra (pyarrow)")
    pytest.importorskip("ray.data", reason="needs the ray extra (ray[data])")
    artifact = _nan_onnx(tiny_onnx, tmp_path)
    out = tmp_path / "scores"
    code = predict_cli.main([str(artifact), str(good_dir), "--ray", "--out", str(out), "--actors", "1",
                             "--threads", "1"])
    capsys.readouterr()
    assert code == 1
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 3 and all(r["error"] == NON_FINITE and r["probability"] is None and r["label"] is None
                                  for r in rows), rows


# ---- Triton: the postprocess model applies the same rule (Triton's Python stub stood in for) -----------------


def test_the_triton_postprocess_model_never_labels_a_non_finite_score(monkeypatch):
    import importlib
    import types

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class Response:
        def __init__(self, tensors=None, error=None):
            self.tensors, self.error = tensors, error

    stub = types.ModuleType("triton_python_backend_utils")
    stub.Tensor, stub.InferenceResponse, stub.TritonError = Tensor, Response, str
    stub.get_input_tensor_by_name = lambda request, name: request[name]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    monkeypatch.delitem(sys.modules, "specdet.serve.python_models", raising=False)
    python_models = importlib.import_module("specdet.serve.python_models")
    from specdet.serve.contract import LABEL, LOGIT, PROBABILITY

    model = python_models.PostprocessModel({}, {"specdet_threshold": "0.5"})

    def request(probability, logit):
        return {PROBABILITY: Tensor(PROBABILITY, np.array(probability, np.float32).reshape(-1, 1)),
                LOGIT: Tensor(LOGIT, np.array(logit, np.float32).reshape(-1, 1))}

    good, nan, infinite = model.execute([request([0.2, 0.9], [-1.4, 2.2]), request([0.2, np.nan], [-1.4, np.nan]),
                                         request([1.0], [np.inf])])
    assert good.error is None and [t.array.ravel().tolist() for t in good.tensors if t.name == LABEL] == [
        [b"real", b"fake"]]
    assert nan.error == NON_FINITE and nan.tensors is None
    assert infinite.error == NON_FINITE
    monkeypatch.delitem(sys.modules, "specdet.serve.python_models")  # not left importing the stand-in

"""Manifests, runners (input checks, backend registry, torch vs onnxruntime) and the Detector."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import MAX_BATCH, TINY_PREPROCESSING, tiny_manifest
from specdet.errors import SpecdetError
from specdet.manifest import manifest_path, read_manifest, write_manifest
from specdet.runtime import BACKENDS, Detector, create_runner
from specdet.runtime.base import default_backend, runner_class

# ---- manifest -------------------------------------------------------------


def test_manifest_round_trip(tmp_path):
    artifact = tmp_path / "model.onnx"
    assert manifest_path(artifact) == tmp_path / "model.json"
    write_manifest(artifact, tiny_manifest())
    data = read_manifest(artifact)
    assert data["format"] == "specdet-manifest" and data["version"] == 1 and data["artifact"] == "model.onnx"
    assert data["preprocessing"] == TINY_PREPROCESSING
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temporary left behind


def test_missing_manifest(tmp_path):
    with pytest.raises(SpecdetError) as err:
        read_manifest(tmp_path / "model.onnx")
    assert str(err.value) == "no manifest model.json beside model.onnx: re-export it with detect-export"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "someone-else"}), "not a specdet manifest"),
        (json.dumps({"format": "specdet-manifest", "version": 7}), "version 7"),
        (json.dumps({"format": "specdet-manifest", "version": 1, "artifact": "model.onnx"}), "lacks architecture"),
    ],
    ids=["json", "foreign", "version", "keys"],
)
def test_bad_manifest(tmp_path, content, message):
    (tmp_path / "model.json").write_text(content)
    with pytest.raises(SpecdetError, match=message) as err:
        read_manifest(tmp_path / "model.onnx")
    assert "\n" not in str(err.value)


def test_write_refuses_an_incomplete_manifest(tmp_path):
    with pytest.raises(SpecdetError, match="lacks"):
        write_manifest(tmp_path / "model.onnx", {"architecture": "tiny"})
    assert not (tmp_path / "model.json").exists()


# ---- backend registry -------------------------------------------------------


def test_default_backend_by_suffix():
    assert default_backend("a/model.pth") == "torch"
    assert default_backend("model.PT") == "torch"
    assert default_backend("model.onnx") == "onnxruntime"
    assert default_backend("model.engine") == "tensorrt"
    with pytest.raises(SpecdetError, match="pass --backend"):
        default_backend("model.bin")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(SpecdetError, match="unknown backend 'tensorflow': known: torch, onnxruntime, tensorrt"):
        runner_class("tensorflow")
    assert set(BACKENDS) == {"torch", "onnxruntime", "tensorrt"}


def test_missing_onnx_artifact(tmp_path):
    with pytest.raises(SpecdetError, match="not found"):
        create_runner(tmp_path / "model.onnx")


def test_onnx_file_that_is_not_onnx(tmp_path):
    artifact = tmp_path / "model.onnx"
    artifact.write_text("nope")
    write_manifest(artifact, tiny_manifest())
    with pytest.raises(SpecdetError, match="not an ONNX model"):
        create_runner(artifact)


# ---- runner input checks ---------------------------------------------------


@pytest.fixture(params=["torch", "onnxruntime"])
def runner(request, tiny_checkpoint, tiny_onnx):
    artifact = tiny_checkpoint if request.param == "torch" else tiny_onnx
    return create_runner(artifact, threads=1)


def test_input_spec(runner):
    spec = runner.input_spec()
    assert (spec.name, spec.shape, spec.dtype) == ("image", ("batch", 3, 32, 32), "float32")


@pytest.mark.parametrize(
    "batch, message",
    [
        (np.zeros((3, 32, 32), np.float32), r"shape \(3, 32, 32\)"),
        (np.zeros((1, 1, 32, 32), np.float32), r"shape \(1, 1, 32, 32\)"),
        (np.zeros((1, 3, 30, 32), np.float32), r"shape \(1, 3, 30, 32\)"),
        (np.zeros((1, 3, 32, 32), np.float64), "dtype float64"),
        (np.zeros((0, 3, 32, 32), np.float32), "batch of 0"),
        ([[0.0]], "not a numpy array"),
    ],
    ids=["ndim", "channels", "size", "dtype", "empty", "list"],
)
def test_bad_inputs_are_one_line_errors(runner, batch, message):
    with pytest.raises(SpecdetError, match=message) as err:
        runner.infer(batch)
    assert "\n" not in str(err.value)


def test_batch_above_the_manifest_maximum(tiny_onnx):
    with pytest.raises(SpecdetError, match=f"takes 1 to {MAX_BATCH}"):
        create_runner(tiny_onnx).infer(np.zeros((MAX_BATCH + 1, 3, 32, 32), np.float32))


def test_torch_and_onnxruntime_agree(tiny_checkpoint, tiny_onnx):
    batch = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    reference = create_runner(tiny_checkpoint).infer(batch)
    exported = create_runner(tiny_onnx).infer(batch)
    for name in ("logit", "probability"):
        assert reference[name].shape == (3,) and reference[name].dtype == np.float32
        np.testing.assert_allclose(exported[name], reference[name], atol=1e-5)
    np.testing.assert_allclose(reference["probability"], 1 / (1 + np.exp(-reference["logit"])), rtol=1e-5)


def test_manifest_that_contradicts_the_onnx_file(tiny_onnx, tmp_path):
    artifact = tmp_path / "renamed.onnx"
    shutil.copy(tiny_onnx, artifact)
    manifest = tiny_manifest()
    manifest["inputs"][0]["name"] = "pixels"
    write_manifest(artifact, manifest)
    with pytest.raises(SpecdetError, match="does not match its manifest"):
        create_runner(artifact)


# ---- detector ---------------------------------------------------------------


def test_detector_reads_preprocessing_and_threshold(tiny_onnx):
    detector = Detector(tiny_onnx)
    assert detector.backend == "onnxruntime"
    assert detector.preprocessing == TINY_PREPROCESSING and detector.threshold == 0.5


def test_predict_accepts_one_image_or_a_list(tiny_checkpoint, image_dir):
    detector = Detector(tiny_checkpoint)
    path = image_dir / "good" / "coffee.jpg"
    single = detector.predict(path)
    assert single.shape == (1,) and 0.0 <= single[0] <= 1.0
    mixed = detector.predict([path, str(path), Image.open(path), np.asarray(Image.open(path))], batch_size=3)
    np.testing.assert_allclose(mixed, single[0], rtol=1e-6)


def test_predict_files_on_both_backends_agrees(tiny_checkpoint, tiny_onnx, image_dir):
    good = sorted((image_dir / "good").rglob("*.*"))
    good = [p for p in good if p.suffix != ".txt"]
    files = [image_dir / "bad" / "truncated.jpg", *good, image_dir / "bad" / "text.png"]
    # Batch 8 > the ONNX file's max batch 4: the detector runs batches of 4.
    results = {a.suffix: Detector(a).predict_files(files, batch_size=8) for a in (tiny_checkpoint, tiny_onnx)}
    for outcome in results.values():
        assert [r.path for r in outcome] == [str(p) for p in files]
        assert [r.ok for r in outcome] == [False] + [True] * len(good) + [False]
        assert "unreadable image" in outcome[0].error and "not an image file" in outcome[-1].error
        assert all(r.label == ("fake" if r.probability >= 0.5 else "real") for r in outcome if r.ok)
    probabilities = [[r.probability for r in outcome if r.ok] for outcome in results.values()]
    np.testing.assert_allclose(*probabilities, atol=1e-5)


def test_progress_is_reported_per_batch(tiny_checkpoint, image_dir):
    files = sorted((image_dir / "good").glob("*.png"))
    steps = []
    Detector(tiny_checkpoint).predict_files(files, batch_size=2, progress=steps.append)
    assert sum(steps) == len(files) and max(steps) == 2


def test_bad_batch_size(tiny_checkpoint, image_dir):
    with pytest.raises(SpecdetError, match="--batch-size"):
        Detector(tiny_checkpoint).predict(image_dir / "good" / "coffee.jpg", batch_size=0)

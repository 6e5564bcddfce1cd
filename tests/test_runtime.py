"""Runners (input checks, backend registry and options, life cycle, torch vs onnxruntime) and the Detector."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import MAX_BATCH, TINY_PREPROCESSING, tiny_manifest
from specdet.errors import SpecdetError
from specdet.manifest import Manifest, legacy_onnx_sidecar
from specdet.runtime import BACKENDS, Detector, create_runner
from specdet.runtime.base import ArtifactInfo, default_backend, runner_class

# ---- backend registry -------------------------------------------------------


def test_default_backend_by_suffix():
    assert default_backend("a/model.pth") == "torch"
    assert default_backend("model.PT") == "torch"
    assert default_backend("model.onnx") == "onnxruntime"
    assert default_backend("model.engine") == "tensorrt"
    with pytest.raises(SpecdetError, match="pass --backend"):
        default_backend("model.bin")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(SpecdetError, match="unknown backend 'tensorflow': known: torch, onnxruntime, openvino, tensorrt"):
        runner_class("tensorflow")
    assert set(BACKENDS) == {"torch", "onnxruntime", "openvino", "tensorrt"}


def test_missing_onnx_artifact(tmp_path):
    with pytest.raises(SpecdetError, match="not found"):
        create_runner(tmp_path / "model.onnx")


def test_onnx_file_that_is_not_onnx(tmp_path):
    artifact = tmp_path / "model.onnx"
    artifact.write_text("nope")
    with pytest.raises(SpecdetError, match="model.onnx is not an ONNX file"):
        create_runner(artifact)
    # A file that walks like protobuf (no fields at all) but that onnxruntime cannot load, with an older sidecar.
    artifact.write_bytes(b"")
    legacy_onnx_sidecar(artifact).write_text(json.dumps(tiny_manifest()))
    with pytest.raises(SpecdetError, match="not an ONNX model onnxruntime can load"):
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
    Manifest.from_dict(manifest).write(artifact)
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
    with pytest.raises(SpecdetError, match="batch_size=0 is out of range: give a whole number from 1 to 65536"):
        Detector(tiny_checkpoint).predict(image_dir / "good" / "coffee.jpg", batch_size=0)


def test_an_onnx_file_copied_alone_scores_the_same(tiny_onnx, tmp_path, image_dir):
    copied = tmp_path / "elsewhere" / "copied.onnx"
    copied.parent.mkdir()
    shutil.copy(tiny_onnx, copied)  # the one file: its manifest is inside
    files = sorted((image_dir / "good").glob("*.png"))
    with Detector(tiny_onnx) as original, Detector(copied) as alone:
        np.testing.assert_array_equal(alone.predict(files), original.predict(files))
        assert alone.threshold == original.threshold and alone.preprocessing == original.preprocessing
    assert [p.name for p in copied.parent.iterdir()] == ["copied.onnx"]


# ---- backend options -----------------------------------------------------------


@pytest.mark.parametrize(
    "artifact, options, message",
    [
        ("pth", {"providers": ["CPUExecutionProvider"]}, "the torch backend has no option providers (it takes none)"),
        ("onnx", {"plugins": ["lib.so"]}, "the onnxruntime backend has no option plugins (it takes providers)"),
        ("onnx", {"cuda_graphs": True, "plugins": []}, "has no option plugins, cuda_graphs (it takes providers)"),
        ("pth", {"cuda_graphs": False}, "the torch backend has no option cuda_graphs"),
    ],
)
def test_an_option_the_backend_lacks_is_a_one_line_error(tiny_checkpoint, tiny_onnx, artifact, options, message):
    path = tiny_checkpoint if artifact == "pth" else tiny_onnx
    for make in (create_runner, Detector):
        with pytest.raises(SpecdetError) as err:
            make(path, **options)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_providers_choose_what_onnxruntime_runs_on(tiny_onnx):
    with create_runner(tiny_onnx, providers=["CPUExecutionProvider"]) as runner:
        assert runner.session.get_providers() == ["CPUExecutionProvider"]
    for wrong in (["NoSuchExecutionProvider"], []):
        with pytest.raises(SpecdetError, match="has no execution provider .*: choose from .*CPUExecutionProvider"):
            create_runner(tiny_onnx, providers=wrong)


def test_runners_expose_what_they_run(tiny_checkpoint, tiny_onnx):
    import onnxruntime
    import torch

    with create_runner(tiny_checkpoint) as torch_runner, create_runner(tiny_onnx) as onnx_runner:
        assert isinstance(torch_runner.module, torch.nn.Module) and not torch_runner.module.training
        assert isinstance(onnx_runner.session, onnxruntime.InferenceSession)
        assert onnx_runner.info.manifest == Manifest.read(tiny_onnx)
        assert torch_runner.info.manifest is None


# ---- life cycle ----------------------------------------------------------------


def test_a_closed_runner_refuses_to_run(runner):
    batch = np.zeros((1, 3, 32, 32), np.float32)
    with runner as same:
        assert same is runner and runner.infer(batch)["probability"].shape == (1,)
    assert runner.closed
    runner.close()  # a second close does nothing
    with pytest.raises(SpecdetError) as err:
        runner.infer(batch)
    assert str(err.value) == f"the {runner.name} runner of {runner.artifact.name} is closed: create a new one"
    accessor = "module" if runner.name == "torch" else "session"
    with pytest.raises(SpecdetError, match="is closed"):
        getattr(runner, accessor)
    assert runner.input_spec().name == "image"  # what it learned from the artifact stays readable


def test_close_releases_the_backend_objects(tiny_onnx):
    import gc
    import weakref

    runner = create_runner(tiny_onnx)
    session = weakref.ref(runner.session)
    runner.close()
    gc.collect()
    assert session() is None


def test_a_closed_detector_refuses_before_reading_images(tiny_onnx, image_dir):
    with Detector(tiny_onnx) as detector:
        assert detector.predict(image_dir / "good" / "coffee.jpg").shape == (1,)
    assert detector.runner.closed
    detector.close()
    with pytest.raises(SpecdetError, match="is closed"):
        detector.predict_files([image_dir / "absent.jpg"])


def test_a_detector_that_fails_to_start_closes_its_runner(tiny_onnx, tmp_path, monkeypatch):
    from specdet.runtime.onnxruntime_runner import OnnxRuntimeRunner

    closed = []
    monkeypatch.setattr(OnnxRuntimeRunner, "_close", lambda self: closed.append(self.artifact.name))
    artifact = tmp_path / "cropped.onnx"
    shutil.copy(tiny_onnx, artifact)
    manifest = tiny_manifest()
    manifest["preprocessing"]["crop"] = 30  # the file takes 32x32
    Manifest.from_dict(manifest).write(artifact)
    with pytest.raises(SpecdetError, match="takes 32x32 images but its preprocessing crops 30x30"):
        Detector(artifact)
    assert closed == ["cropped.onnx"]


def test_tensorrt_close_frees_every_thread_s_state_once():
    """The tensorrt runner needs a GPU to load; its close() is checked on stand-in thread states."""
    import threading

    from specdet.runtime.tensorrt_runner import TensorRTRunner

    class State:
        released = 0

        def release(self):
            self.released += 1

    runner = TensorRTRunner.__new__(TensorRTRunner)  # skips loading: no engine here
    info = ArtifactInfo.from_manifest(Manifest.from_dict(tiny_manifest()))
    super(TensorRTRunner, runner).__init__("m.engine", info)
    states = [State(), State()]
    runner._states, runner._states_lock, runner._local = list(states), threading.Lock(), threading.local()
    runner._engine, runner._runtime = object(), object()
    runner.close()
    runner.close()
    assert [s.released for s in states] == [1, 1] and runner._states == []
    assert not hasattr(runner, "_engine") and not hasattr(runner, "_runtime")
    with pytest.raises(SpecdetError, match="the tensorrt runner of m.engine is closed"):
        _ = runner.engine

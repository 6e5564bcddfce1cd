"""Bad input to the C/C++ runtime: an error code and a message, never a crash, also under
AddressSanitizer and UndefinedBehaviorSanitizer (one sanitized build runs the same programs)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cpp_support import SANITIZER_ENV, assert_sanitizer_clean, copy_with_manifest, embedded_manifest, png_bytes, run
from specdet.runtime.cpp.binding import CppDetector, RuntimeError_


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, image_dir):
    """``good.jpg`` and a file for each way an image can be unreadable, with the words its error has."""
    folder = tmp_path_factory.mktemp("bad")
    jpeg = (image_dir / "good" / "coffee.jpg").read_bytes()
    png = (image_dir / "good" / "astronaut.png").read_bytes()
    shutil.copy(image_dir / "good" / "coffee.jpg", folder / "good.jpg")
    cases = {
        "empty.jpg": (b"", "empty input"),
        "text.png": (b"this is text, not a PNG", "not a JPEG or PNG"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated JPEG"),
        "corrupt.jpg": (jpeg[:200] + bytes(range(256)) * 20, "JPEG"),
        "truncated.png": (png[: len(png) // 2], "PNG"),
        "bad-crc.png": (png[:40] + bytes([png[40] ^ 0xFF]) + png[41:], "PNG"),
        "one-pixel.png": (png_bytes([b"\x80\x80\x80"], 2, 8), "min_side"),
        "huge.png": (png_bytes([bytes(3000 * 3)] * 400, 2, 8), "max_pixels"),
        "zero-width.png": (png_bytes([b""], 2, 8), "PNG"),
        "image.gif": (b"GIF89a" + bytes(20), "GIF images are not supported"),
        "image.bmp": (b"BM" + bytes(60), "BMP images are not supported"),
    }
    for name, (content, _) in cases.items():
        (folder / name).write_bytes(content)
    return folder, {name: words for name, (_, words) in cases.items()}


def _check_skips(result, folder, cases) -> None:
    assert result.returncode == 1, result.stdout + result.stderr  # files skipped, the rest scored
    scored = json.loads(result.stdout)
    assert [r["path"] for r in scored] == [str(folder / "good.jpg")]
    for name, words in cases.items():
        line = next((s for s in result.stderr.splitlines() if s.startswith(f"skipped {folder / name}:")), None)
        assert line is not None and words in line, (name, result.stderr)


def test_unreadable_images_are_skipped_with_their_reason(cpp, tiny_onnx, bad_images):
    folder, cases = bad_images
    result = run(cpp.outputs["specdet-score"], tiny_onnx, folder, "--json", "--max-pixels", "1000000", "--min-side", "2",
                 "--threads", "3", "--batch-size", "2")
    _check_skips(result, folder, cases)


def test_unreadable_images_through_the_library(cpp, tiny_onnx, bad_images):
    folder, cases = bad_images
    detector = CppDetector(cpp.library, tiny_onnx, max_pixels=1_000_000, min_side=2)
    result = detector.score([(folder / name).read_bytes() for name in cases])
    assert (result["status"] == 7).all()  # SPECDET_ERROR_IMAGE
    assert np.isnan(result["probability"]).all() and (result["label"] == -1).all()
    with pytest.raises(RuntimeError_, match="empty input") as err:
        detector.predict([b""])
    assert err.value.status == "IMAGE"


def test_missing_file_and_folder_given_as_a_file(cpp, tiny_onnx, bad_images, tmp_path):
    folder, _ = bad_images
    result = run(cpp.outputs["specdet-score"], tiny_onnx, folder / "good.jpg", tmp_path / "missing.jpg")
    assert result.returncode == 1 and f"skipped {tmp_path / 'missing.jpg'}: no such file" in result.stderr
    result = run(cpp.outputs["specdet-score"], tiny_onnx, tmp_path / "empty-folder-that-is-not-there")
    assert result.returncode == 1


def _artifact_with(tiny_onnx, folder, edit=None, text=None):
    folder.mkdir(parents=True, exist_ok=True)
    if edit is not None:
        manifest = embedded_manifest(tiny_onnx)
        edit(manifest)
        text = json.dumps(manifest)
    return copy_with_manifest(tiny_onnx, folder / "model.onnx", text)


def _drop(key):
    return lambda m: m.pop(key)


def _set(path, value):
    def edit(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit, text, message",
    [
        (None, None, "model.onnx carries no specdet manifest"),
        (None, "{ not json", "not valid JSON"),
        (None, "[]", "not a specdet manifest"),
        (_set(["version"], 2), None, "version 2"),
        (_drop("threshold"), None, "lacks threshold"),
        (_set(["preprocessing", "crop"], 30), None, "input shape"),
        (_set(["preprocessing", "std"], [0.5, 0, 0.5]), None, "with std not 0"),
        (_set(["preprocessing", "interpolation"], "lanczos"), None, "interpolation must be one of"),
        (_set(["inputs", 0, "name"], "pixels"), None, "does not match its manifest"),
        (_set(["outputs"], [{"name": "logit"}]), None, "outputs must include logit and probability"),
        (_set(["batch"], {"min": 3, "max": 2}), None, "batch must be"),
        (_set(["inputs", 0, "dtype"], "int8"), None, "input dtype"),
    ],
)
def test_missing_or_tampered_manifest(cpp, tiny_onnx, image_dir, tmp_path, edit, text, message):
    artifact = _artifact_with(tiny_onnx, tmp_path, edit, text)
    with pytest.raises(RuntimeError_, match=message) as err:
        CppDetector(cpp.library, artifact)
    assert err.value.status == "MANIFEST"
    result = run(cpp.outputs["specdet-score"], artifact, image_dir / "good" / "coffee.jpg")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_artifact_that_is_not_onnx(cpp, tiny_onnx, tmp_path):
    artifact = _artifact_with(tiny_onnx, tmp_path, edit=lambda m: None)
    artifact.write_bytes(b"not a model")
    with pytest.raises(RuntimeError_, match="is not an ONNX model") as err:
        CppDetector(cpp.library, artifact)
    assert err.value.status == "BACKEND"


def test_engine_without_tensorrt_is_unsupported(cpp, tiny_onnx, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    (tmp_path / "model.engine.json").write_text(json.dumps(embedded_manifest(tiny_onnx)))
    with pytest.raises(RuntimeError_, match="built without TensorRT") as err:
        CppDetector(cpp.library, engine)
    assert err.value.status == "UNSUPPORTED"


# ---- the same programs under ASan + UBSan -------------------------------------------------------


def test_sanitized_abi_and_wrapper(cpp_sanitized, tiny_onnx):
    for program in ("specdet-abi-test", "specdet-hpp-test"):
        result = run(cpp_sanitized.outputs[program], tiny_onnx, env=SANITIZER_ENV)
        assert_sanitizer_clean(result)
        assert result.returncode == 0 and result.stdout.splitlines()[-1].endswith(" 0 failed"), result.stdout


def test_sanitized_scoring_of_bad_and_good_images(cpp_sanitized, tiny_onnx, bad_images, image_dir, tmp_path):
    folder, cases = bad_images
    result = run(cpp_sanitized.outputs["specdet-score"], tiny_onnx, folder, "--json", "--max-pixels", "1000000",
                 "--min-side", "2", "--threads", "8", "--batch-size", "3", env=SANITIZER_ENV)
    assert_sanitizer_clean(result)
    _check_skips(result, folder, cases)
    good = sorted(p for p in (image_dir / "good").rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    result = run(cpp_sanitized.outputs["specdet-score"], tiny_onnx, *good, "--csv", "--threads", "8", env=SANITIZER_ENV)
    assert_sanitizer_clean(result)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == len(good) + 1
    broken = _artifact_with(tiny_onnx, tmp_path / "broken", text="{ not json")
    result = run(cpp_sanitized.outputs["specdet-score"], broken, folder, env=SANITIZER_ENV)
    assert_sanitizer_clean(result)
    assert result.returncode == 2


@pytest.mark.tensorrt
def test_tensorrt_backend_compiles_against_the_public_headers(tmp_path):
    """The TensorRT backend is compile-checked only: it runs on a GPU with TensorRT, which CI lacks."""
    import os

    from specdet.runtime.cpp import build as cpp_build

    root = os.environ.get("TensorRT_ROOT")
    if not root or not os.path.isfile(os.path.join(root, "include", "NvInfer.h")):
        pytest.skip("no TensorRT headers ($TensorRT_ROOT): the TensorRT backend is built where TensorRT is installed")
    if cpp_build.find_compiler() is None:
        pytest.skip("no C++ compiler")
    result = cpp_build.build(tmp_path / "trt", tensorrt_root=root)
    assert "libspecdet_runtime" in result.outputs

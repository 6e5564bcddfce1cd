"""The C/C++ runtime (runtime/cpp) against its C ABI contract and against the Python runtime.

Parity: from decoded pixels the C++ runtime must match ``specdet.runtime.Detector`` (onnxruntime)
within 1e-5 in probability, and from encoded JPEG/PNG files within 1e-3 with the same labels. The
preprocessed tensors are compared too: resizing reimplements Pillow's, so they are expected equal.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data as samples

import tiny_exports
from cpp_support import THUMBS, copy_with_manifest, embedded_manifest, exif_orientation_block, png_bytes, run
from specdet.images import sample_photos
from specdet.runtime import Detector
from specdet.runtime.cpp.binding import CppDetector, RuntimeError_
from specdet.runtime.preprocess import preprocess


@pytest.fixture(scope="module")
def dual_tiny():
    """A real detector (dual-branch, FFTs as matmuls), tiny and randomly initialised, exported to ONNX."""
    return tiny_exports.exported("dual_branch_tiny", "matmul")


def _with_preprocessing(artifact, folder, **changes):
    """A copy of ``artifact`` whose manifest preprocesses differently (both runtimes read it)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = embedded_manifest(artifact)
    manifest["preprocessing"].update(changes)
    return copy_with_manifest(artifact, folder / artifact.name, json.dumps(manifest))


# ---- the ABI ---------------------------------------------------------------------------------


def _all_passed(result) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith(" 0 failed"), result.stdout


def test_c_abi_contract(cpp, tiny_onnx):
    _all_passed(run(cpp.outputs["specdet-abi-test"], tiny_onnx))


def test_cpp_wrapper(cpp, tiny_onnx):
    _all_passed(run(cpp.outputs["specdet-hpp-test"], tiny_onnx))


def test_c_example_program(cpp, tiny_onnx, image_dir):
    good = image_dir / "good" / "coffee.jpg"
    result = run(cpp.outputs["specdet-example-c"], tiny_onnx, good, image_dir / "bad" / "text.png")
    assert result.returncode == 1
    path, probability, label = result.stdout.split()
    expected = Detector(tiny_onnx).predict([good])[0]
    assert path == str(good) and abs(float(probability) - expected) < 1e-5
    assert "skipped" in result.stderr and "SPECDET_ERROR_IMAGE" in result.stderr


def test_build_prints_one_line_per_output(cpp, capsys):
    from specdet.runtime.cpp.build import main

    assert main(["--build-dir", str(cpp.build_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"libspecdet_runtime: {cpp.library}", f"specdet-score: {cpp.outputs['specdet-score']}"]


# ---- decoded pixels --------------------------------------------------------------------------


def _arrays():
    photos = dict(sample_photos())
    arrays = [photos["astronaut"], photos["camera"], photos["logo"], photos["coffee"], photos["chelsea"][::3, ::2]]
    padded = np.zeros((120, 200, 3), np.uint8)
    padded[:, :150] = photos["rocket"][:120, :150]
    arrays.append(padded[:, :150])  # rows with a stride above width * 3
    arrays.append(np.full((7, 300, 3), 200, np.uint8))  # very wide
    # Tall: resized to a 64-pixel width, the height shrinks by more than twice the width, and Pillow 13
    # resizes vertically first (a different rounding from horizontal first).
    arrays.append(np.concatenate([photos["astronaut"][:, :200], photos["coffee"][:, :200]]))
    return arrays


@pytest.mark.parametrize("changes", [{}, {"resize": 64, "interpolation": "bilinear"}, {"resize": 333},
                                     # the published detectors: small images (and sides) padded with black
                                     {"pad_small": True}, {"pad_small": True, "resize": 23}])
def test_preprocessing_equals_python_on_decoded_pixels(cpp, tiny_onnx, tmp_path, changes):
    artifact = _with_preprocessing(tiny_onnx, tmp_path, **changes)
    detector = CppDetector(cpp.library, artifact)
    spec = embedded_manifest(artifact)["preprocessing"]
    for array in _arrays():
        np.testing.assert_array_equal(detector.preprocess(array), preprocess(array, spec)[0])


def test_decoded_pixels_score_as_python(cpp, dual_tiny):
    arrays = _arrays()
    expected = Detector(dual_tiny).predict(arrays)
    got = CppDetector(cpp.library, dual_tiny).predict(arrays)
    assert np.abs(got - expected).max() <= 1e-5


def test_fp16_artifact_scores_as_python(cpp):
    """An FP16 file: inputs converted to half with numpy's rounding, ONNX Runtime below its layout optimiser."""
    fp16 = tiny_exports.exported("dual_branch_tiny", "matmul", "fp16")  # shared with test_precision.py
    arrays = _arrays()
    detector = CppDetector(cpp.library, fp16)
    assert detector.get_string("precision") == "fp16"
    assert np.abs(detector.predict(arrays) - Detector(fp16).predict(arrays)).max() <= 1e-5


# ---- encoded files ---------------------------------------------------------------------------


def _encoded_cases(folder):
    """Files of every kind the Python path converts: modes, bit depths, transparency, orientation."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = samples.astronaut()[::4, ::4]
    gray = samples.camera()[::4, ::4]
    files = {}

    def save(name, image, **kwargs):
        image.save(folder / name, **kwargs)
        files[name] = folder / name

    save("rgb.png", Image.fromarray(photo))
    save("gray.png", Image.fromarray(gray))
    save("logo-rgba.png", Image.fromarray(samples.logo()[::3, ::3]))
    save("coffee.jpg", Image.fromarray(samples.coffee()), quality=90)
    save("progressive.jpg", Image.fromarray(photo), quality=75, progressive=True)
    save("subsampled-444.jpg", Image.fromarray(photo), quality=95, subsampling=0)
    save("gray.jpg", Image.fromarray(gray), quality=85)
    save("cmyk.jpg", Image.fromarray(photo).convert("CMYK"), quality=92)
    save("gray16.png", Image.fromarray((gray.astype(np.uint16) * 257 + 100).astype(np.uint16)))
    la = Image.fromarray(np.dstack([gray, np.tile(np.arange(gray.shape[1], dtype=np.uint8) * 2, (gray.shape[0], 1))]), "LA")
    save("gray-alpha.png", la)
    palette = Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette.png", palette)
    save("palette-one-transparent.png", palette, transparency=3)
    alphas = bytes(range(0, 256, 16))
    (folder / "palette-alphas.png").write_bytes(
        png_bytes([bytes(palette.crop((0, y, palette.width, y + 1)).tobytes()) for y in range(palette.height)], 3, 8,
                  palette=bytes(palette.getpalette()[: 16 * 3]), trns=alphas))
    files["palette-alphas.png"] = folder / "palette-alphas.png"
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"orientation-{orientation}.jpg", Image.fromarray(photo[:, :100]), quality=95, exif=exif)
    save("orientation-6.png", Image.fromarray(photo[:, :100]), exif=exif_orientation_block(6))
    # Hand-written PNGs for what Pillow does not save.
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    rgba16 = rng.integers(0, 65536, (40, 50, 4), dtype=np.uint16)
    la16 = rng.integers(0, 65536, (40, 50, 2), dtype=np.uint16)
    gray2 = rng.integers(0, 256, (40, 50 // 4 * 1), dtype=np.uint8)  # 2-bit samples, 4 per byte
    gray1 = rng.integers(0, 256, (40, 8), dtype=np.uint8)  # 1-bit, 64 pixels wide
    gray4 = rng.integers(0, 256, (40, 25), dtype=np.uint8)  # 4-bit, 50 pixels wide
    made = {
        "rgb16.png": png_bytes([row.astype(">u2").tobytes() for row in rgb16], 2, 16),
        "rgba16.png": png_bytes([row.astype(">u2").tobytes() for row in rgba16], 6, 16),
        "la16.png": png_bytes([row.astype(">u2").tobytes() for row in la16], 4, 16),
        "gray2.png": png_bytes([row.tobytes() for row in gray2], 0, 2),
        "gray1.png": png_bytes([row.tobytes() for row in gray1], 0, 1),
        "gray4.png": png_bytes([row.tobytes() for row in gray4], 0, 4),
        "gray-colour-key.png": png_bytes([row.tobytes() for row in gray], 0, 8, trns=b"\x00\x80"),
    }
    for name, content in made.items():
        (folder / name).write_bytes(content)
        files[name] = folder / name
    return files


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    return _encoded_cases(tmp_path_factory.mktemp("encoded"))


def test_encoded_files_preprocess_as_python(cpp, tiny_onnx, encoded, tmp_path):
    """Decoding, conversion to RGB and orientation equal Pillow's + preprocess.py's, file by file."""
    artifact = _with_preprocessing(tiny_onnx, tmp_path, resize=48)
    detector = CppDetector(cpp.library, artifact, min_side=1)
    spec = embedded_manifest(artifact)["preprocessing"]
    differences = {}
    for name, path in encoded.items():
        differences[name] = float(np.abs(detector.preprocess(path.read_bytes()) - preprocess(path, spec)[0]).max())
    assert differences == {name: 0.0 for name in encoded}


def test_encoded_files_score_as_python(cpp, dual_tiny, encoded):
    paths = sorted(encoded.values())
    python = Detector(dual_tiny)
    expected = python.predict(paths)
    cpp_detector = CppDetector(cpp.library, dual_tiny, min_side=1)
    result = cpp_detector.score([p.read_bytes() for p in paths])
    assert (result["status"] == 0).all()
    assert np.abs(result["probability"] - expected).max() <= 1e-3
    assert [bool(x) for x in result["label"]] == [python.label(p) == "fake" for p in expected]


@pytest.mark.skipif(not THUMBS.is_dir(), reason=f"real photos not found at {THUMBS}")
def test_specdet_score_prints_what_detect_predict_prints_on_the_thumbs(cpp, dual_tiny, tmp_path):
    """All 400 CNNDetection thumbnails: the same JSON as detect-predict, probabilities within 1e-3."""
    from specdet.runtime.cli import main as detect_predict

    result = run(cpp.outputs["specdet-score"], dual_tiny, THUMBS, "--json", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert detect_predict([str(dual_tiny), str(THUMBS), "--json", "--batch-size", "4"]) == 0
    theirs = json.loads(out.getvalue())
    assert len(ours) == len(theirs) == 400
    assert [r["path"] for r in ours] == [r["path"] for r in theirs]
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    difference = max(abs(a["probability"] - b["probability"]) for a, b in zip(ours, theirs))
    assert difference <= 1e-3
    if difference == 0:  # same decoder output and same inference: the text itself is the same
        assert result.stdout == out.getvalue()


def test_csv_and_table_forms_match_detect_predict(cpp, tiny_onnx, image_dir, capsys):
    from specdet.runtime.cli import main as detect_predict

    files = [image_dir / "good" / n for n in ("astronaut.png", "coffee.jpg", "camera.png", "deep.png", "rgba.png")]
    for form in (["--csv"], []):
        result = run(cpp.outputs["specdet-score"], tiny_onnx, *files, *form)
        assert result.returncode == 0, result.stderr
        assert detect_predict([str(tiny_onnx), *map(str, files), *form]) == 0
        assert result.stdout == capsys.readouterr().out


# ---- threads ---------------------------------------------------------------------------------


def test_eight_threads_score_as_one(cpp, dual_tiny, encoded, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, path in encoded.items():
        shutil.copy(path, folder / name)
    if THUMBS.is_dir():
        shutil.copytree(THUMBS / "biggan", folder / "biggan")
    one = run(cpp.outputs["specdet-score"], dual_tiny, folder, "--json", "--threads", "1", "--min-side", "1")
    eight = run(cpp.outputs["specdet-score"], dual_tiny, folder, "--json", "--threads", "8", "--min-side", "1",
                "--batch-size", "3")
    assert one.returncode == eight.returncode == 0, one.stderr + eight.stderr
    a, b = json.loads(one.stdout), json.loads(eight.stdout)
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) >= len(encoded)
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b)) <= 1e-6


# ---- where the manifest comes from -----------------------------------------------------------
# (the lookup order, on both runtimes: tests/test_manifest_lookup.py)


def test_manifest_embedded_in_the_onnx_file(cpp, tiny_onnx, tmp_path):
    manifest = embedded_manifest(tiny_onnx)
    manifest["threshold"] = 0.25  # tells the embedded copy apart from a sidecar
    artifact = copy_with_manifest(tiny_onnx, tmp_path / "embedded.onnx", json.dumps(manifest))
    detector = CppDetector(cpp.library, artifact)
    assert detector.threshold == 0.25 and "metadata_props" in detector.get_string("manifest_source")
    # A stale sidecar beside it does not win over the file's own manifest.
    artifact.with_suffix(".json").write_text(json.dumps(embedded_manifest(tiny_onnx)))
    assert CppDetector(cpp.library, artifact).threshold == 0.25


def test_missing_runtime_library_is_an_error(cpp, tiny_onnx):
    with pytest.raises(RuntimeError_, match="cannot load ONNX Runtime from /nowhere/libonnxruntime.so.1") as err:
        CppDetector(cpp.library, tiny_onnx, onnxruntime_library="/nowhere/libonnxruntime.so.1")
    assert err.value.status == "BACKEND"
    result = run(cpp.outputs["specdet-score"], tiny_onnx, cpp.library,
                 env={"SPECDET_ONNXRUNTIME_LIBRARY": "/nowhere/libonnxruntime.so.1"})
    assert result.returncode == 2 and "cannot load ONNX Runtime" in result.stderr


def test_readme_cpp_example_compiles_and_runs(cpp, tiny_onnx, image_dir, tmp_path):
    import re
    import subprocess
    from pathlib import Path

    from specdet.runtime.cpp.build import SOURCE_DIR, find_compiler

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (source,) = re.findall(r"^```cpp\n(.*?)^```", readme, re.S | re.M)
    (tmp_path / "app.cpp").write_text(source)
    library_dir = cpp.library.parent
    subprocess.run([find_compiler(), "-std=c++17", f"-I{SOURCE_DIR / 'include'}", str(tmp_path / "app.cpp"),
                    f"-L{library_dir}", "-lspecdet_runtime", f"-Wl,-rpath,{library_dir}", "-o", str(tmp_path / "app")],
                   check=True)
    good = image_dir / "good" / "coffee.jpg"
    result = run(tmp_path / "app", tiny_onnx, good, image_dir / "bad" / "text.png")
    assert result.returncode == 0 and result.stdout.startswith(f"{good} ") and "skipped" in result.stderr


def test_bench_variant_runs_the_library(cpp, tiny_onnx):
    from specdet.benchmarks import loading, variants
    from specdet.runtime import create_runner

    assert "cpp-onnxruntime" not in [v.name for v, _ in variants.select(["onnxruntime"], tiny_onnx, [tiny_onnx],
                                                                        strict=False)]
    (pair,) = variants.select(["cpp-onnxruntime"], tiny_onnx, [tiny_onnx], strict=True)
    loaded = loading.load(*pair, threads=1)
    batch = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ours = loaded.runner.infer(batch)
    theirs = create_runner(tiny_onnx, "onnxruntime").infer(batch)
    assert np.abs(ours["probability"] - theirs["probability"]).max() <= 1e-6
    assert set(loaded.facts["preprocessing_ms_per_image"]) == {"cpp", "python"}

"""One set of rules for both runtimes: the same bad manifests, images, paths and flags given to
``detect-predict`` (Python) and ``specdet-score`` (C/C++), with the same outcome: refused (exit 2, one
line), skipped (exit 1, a ``skipped PATH:`` line) or scored (exit 0). Issue 21's C/C++ cases: manifests
that Python refuses (thresholds of 5 and -1, preprocessing that cannot give finite pixels, JSON nested
too deep), images that Python skips before the work explodes (a 3 x 30000 strip, a resize beyond 32
bits), paths that must not hang (a FIFO, /dev/zero, a link loop), and non-finite model outputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from cpp_support import SANITIZER_ENV, assert_sanitizer_clean, copy_with_manifest, embedded_manifest, png_bytes, run
from specdet import limits
from specdet.images import IMAGE_SUFFIXES
from specdet.runtime.cli import main as detect_predict
from specdet.runtime.cpp.binding import CppDetector

CPP = Path(__file__).resolve().parents[1] / "runtime" / "cpp"
# A regression that blocks on a FIFO or reads /dev/zero must fail the test, not hang the suite.
TIMEOUT = 120


def _python(capsys, artifact, *args) -> tuple[int, str, str]:
    try:
        code = detect_predict([str(artifact), *map(str, args)])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _cpp(cpp, artifact, *args) -> tuple[int, str, str]:
    result = run(cpp.outputs["specdet-score"], artifact, *args, timeout=TIMEOUT)
    return result.returncode, result.stdout, result.stderr


def _both(cpp, capsys, artifact, *args):
    """``{"python": (code, out, err), "cpp": (code, out, err)}`` for the same command line."""
    return {"python": _python(capsys, artifact, *args), "cpp": _cpp(cpp, artifact, *args)}


# ---- the constants are Python's ------------------------------------------------------------------


def test_cpp_limits_are_specdet_limits():
    text = (CPP / "src" / "limits.hpp").read_text()
    constants = {name: int(eval(value)) for name, value in re.findall(r"int64_t (k\w+) = ([\d *]+);", text)}
    assert constants == {
        "kMaxThreads": limits.MAX_THREADS, "kMaxBatch": limits.MAX_BATCH, "kMaxPixels": limits.MAX_PIXELS,
        "kMaxPixelsCeiling": limits.MAX_PIXELS_CEILING, "kMaxInputSize": limits.MAX_INPUT_SIZE,
        "kMaxJsonDepth": limits.MAX_JSON_DEPTH, "kMaxJsonValues": limits.MAX_JSON_VALUES,
    }


def test_cpp_folders_look_for_python_suffixes():
    text = (CPP / "tools" / "specdet_score.cpp").read_text()
    listed = re.search(r"kSuffixes\[\] = \{(.*?)\};", text, re.S).group(1)
    assert set(re.findall(r'"(\.\w+)"', listed)) == set(IMAGE_SUFFIXES)


# ---- manifests: refused by both, one line, exit 2 -------------------------------------------------


def _nested(depth: int) -> str:
    """A manifest whose provenance nests ``depth`` lists deep (the rest of it valid)."""
    return "[" * depth + "]" * depth


BAD_MANIFESTS = {
    "threshold 5 (every image real)": lambda m: m.update(threshold=5),
    "threshold -1 (every image fake)": lambda m: m.update(threshold=-1),
    "threshold as text": lambda m: m.update(threshold="0.5"),
    "threshold true": lambda m: m.update(threshold=True),
    "std 1e-40 (0 in float32)": lambda m: m["preprocessing"].update(std=[1e-40, 0.2, 0.2]),
    "std 1e-39 (a float32 denormal whose quotient overflows)": lambda m: m["preprocessing"].update(std=[1e-39] * 3),
    "std 0": lambda m: m["preprocessing"].update(std=[0.2, 0, 0.2]),
    "mean 1e39 (inf in float32)": lambda m: m["preprocessing"].update(mean=[1e39, 0.4, 0.4]),
    "mean 1e300": lambda m: m["preprocessing"].update(mean=[0.4, 1e300, 0.4]),
    "mean 3e38 over std 0.1 (the quotient overflows)": lambda m: m["preprocessing"].update(mean=[3e38] * 3,
                                                                                            std=[0.1] * 3),
    "crop 0": lambda m: m["preprocessing"].update(crop=0),
    "crop above MAX_INPUT_SIZE": lambda m: m["preprocessing"].update(crop=limits.MAX_INPUT_SIZE + 1),
    "crop beyond 32 bits (the C++ reader truncated it)": lambda m: m["preprocessing"].update(crop=2**32 + 32),
    "precision fp64": lambda m: m.update(precision="fp64"),
    "empty architecture": lambda m: m.update(architecture=""),
    "batch min 0": lambda m: m.update(batch={"min": 0, "max": 4}),
    # Written into the JSON text: json.dumps cannot write them (nlohmann refuses NaN; Python reads both).
    "provenance nested 100,000 deep": ("deep", _nested(100_000)),
    "mean written as 1e400 (inf)": ("mean", "1e400"),
    "std written as NaN": ("std", "NaN"),
}
_SENTINEL = 0.123456789  # a number json.dumps writes as itself, replaced in the text


def _manifest_text(tiny_onnx, case) -> str:
    manifest = embedded_manifest(tiny_onnx)
    edit = BAD_MANIFESTS[case]
    if callable(edit):
        edit(manifest)
        return json.dumps(manifest)
    key, token = edit
    if key == "deep":
        manifest["deep"] = _SENTINEL
    else:
        manifest["preprocessing"][key][0] = _SENTINEL
    text = json.dumps(manifest)
    assert text.count(repr(_SENTINEL)) == 1
    return text.replace(repr(_SENTINEL), token)


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_refused_by_both_runtimes(cpp, capsys, tiny_onnx, image_dir, tmp_path, case):
    text = _manifest_text(tiny_onnx, case)
    artifact = copy_with_manifest(tiny_onnx, tmp_path / "model.onnx", text)
    for runtime, (code, out, err) in _both(cpp, capsys, artifact, image_dir / "good" / "coffee.jpg").items():
        assert code == 2 and out == "", (runtime, code, out, err)
        assert len(err.splitlines()) == 1 and "model.onnx" in err, (runtime, err)


def test_the_bad_manifest_texts_are_what_they_say(tiny_onnx):
    """The text edits above change the one number they name (else the cases would test nothing)."""
    for case in ("mean written as 1e400 (inf)", "std written as NaN"):
        key = BAD_MANIFESTS[case][0]
        values = json.loads(_manifest_text(tiny_onnx, case))["preprocessing"][key]
        assert len(values) == 3 and not np.isfinite(values[0]) and np.isfinite(values[1:]).all(), (case, values)
    assert "[" * 100_000 + "]" * 100_000 in _manifest_text(tiny_onnx, "provenance nested 100,000 deep")


def test_the_unchanged_manifest_scores_in_both(cpp, capsys, tiny_onnx, image_dir):
    """The control: what the cases above change is all that makes them refused."""
    for runtime, (code, out, err) in _both(cpp, capsys, tiny_onnx, image_dir / "good" / "coffee.jpg", "--json").items():
        assert code == 0 and len(json.loads(out)) == 1, (runtime, err)


# ---- images and paths: the same skipped and scored files ---------------------------------------------


def _gray_png(width: int, height: int) -> bytes:
    return png_bytes([bytes(width)] * height, 0, 8)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# Each makes one input in a folder and says what both runtimes must do with it. The manifest resizes the
# short side to 224 (as the real detectors do), so strips are scaled up as in issue 21.
INPUTS = {
    "a photo": (lambda d: Image.open(d / "control.jpg").transpose(Image.Transpose.ROTATE_90).save(d / "photo.png"), "scored"),
    "a 1 x 1 image": (lambda d: (d / "one.png").write_bytes(png_bytes([b"\x80\x80\x80"], 2, 8)), "scored"),
    "a 3 x 30000 strip (500 megapixels resized)": (lambda d: (d / "strip.png").write_bytes(_gray_png(3, 30000)),
                                                    "skipped"),
    "a 2 x 100000 strip (7.5 GB resized)": (lambda d: (d / "strip.png").write_bytes(_gray_png(100000, 2)), "skipped"),
    "a 1 x 20,000,000 strip (resized side beyond 32 bits)": (
        lambda d: (d / "strip.png").write_bytes(_gray_png(20_000_000, 1)), "skipped"),
    "an image above max_pixels as stored": (lambda d: (d / "big.png").write_bytes(_gray_png(8001, 8001)), "skipped"),
    "a FIFO named like an image": (lambda d: _fifo(d / "z.jpg"), "skipped"),
    "/dev/zero behind an image name": (lambda d: (d / "zero.jpg").symlink_to("/dev/zero"), "skipped"),
    "a link to itself": (lambda d: (d / "loop.jpg").symlink_to(d / "loop.jpg"), "skipped"),
    "a broken link": (lambda d: (d / "gone.png").symlink_to(d / "nothing-here.png"), "skipped"),
    "a folder named like an image": (lambda d: (d / "folder.jpg").mkdir(), "none"),
    "a link loop of folders": (lambda d: ((d / "sub").mkdir(), (d / "sub" / "up").symlink_to(d)), "none"),
}


@pytest.fixture(scope="module")
def resize_224(tiny_onnx, tmp_path_factory):
    """The tiny model with the real detectors' resize (224): strips are scaled up, as in issue 21."""
    manifest = embedded_manifest(tiny_onnx)
    manifest["preprocessing"]["resize"] = 224
    return copy_with_manifest(tiny_onnx, tmp_path_factory.mktemp("resize224") / "model.onnx", json.dumps(manifest))


def _outcome(code: int, out: str, err: str, folder: Path) -> tuple[int, list[str], list[str]]:
    scored = [row["path"] for row in json.loads(out)] if out.strip() else []
    skipped = sorted(line.split(": ")[0].removeprefix("skipped ") for line in err.splitlines()
                     if line.startswith("skipped "))
    assert len(err.splitlines()) == len(skipped), err  # nothing but the skipped lines
    return code, sorted(scored), skipped


@pytest.mark.parametrize("case", sorted(INPUTS))
def test_same_inputs_same_outcome(cpp, capsys, resize_224, image_dir, tmp_path, case):
    make, expected = INPUTS[case]
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(image_dir / "good" / "coffee.jpg", folder / "control.jpg")  # never a folder without images
    make(folder)
    given = sorted(p for p in folder.iterdir() if p.name != "control.jpg")
    # The folder walked, and (when it is a file) the input named on the command line.
    for inputs in ([folder], [folder / "control.jpg", *given] if expected != "none" else None):
        if inputs is None:
            continue
        results = {runtime: _outcome(*outcome, folder)
                   for runtime, outcome in _both(cpp, capsys, resize_224, *inputs, "--json").items()}
        assert results["python"] == results["cpp"], (case, inputs, results)
        code, scored, skipped = results["cpp"]
        assert str(folder / "control.jpg") in scored
        assert code == (1 if expected == "skipped" else 0), (case, results)
        assert len(skipped) == (1 if expected == "skipped" else 0), (case, results)
        assert len(scored) == (2 if expected == "scored" else 1), (case, results)


# ---- non-finite scores: never labelled --------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_onnx(tiny_onnx, tmp_path_factory):
    """The tiny model with its weights set to NaN: every score is NaN."""
    model = onnx.load(tiny_onnx)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if np.issubdtype(values.dtype, np.floating):
            tensor.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), tensor.name))
    path = tmp_path_factory.mktemp("nan") / "model.onnx"
    onnx.save(model, path)
    return path


def test_non_finite_scores_are_skipped_by_both(cpp, capsys, nan_onnx, image_dir):
    good = sorted(p for p in (image_dir / "good").rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    for runtime, (code, out, err) in _both(cpp, capsys, nan_onnx, *good, "--json").items():
        assert code == 1 and json.loads(out) == [], (runtime, out, err)
        lines = err.splitlines()
        assert lines == [f"skipped {p}: the model produced a non-finite score" for p in good], (runtime, err)


def test_non_finite_scores_through_the_library(cpp, nan_onnx, image_dir):
    detector = CppDetector(cpp.library, nan_onnx)
    result = detector.score([(image_dir / "good" / "coffee.jpg").read_bytes()])
    assert result["status"].tolist() == [11]  # SPECDET_ERROR_NON_FINITE_SCORE
    assert result["label"].tolist() == [-1]  # SPECDET_LABEL_NONE, never real
    assert np.isnan(result["probability"]).all()


# ---- flags: one line, exit 2, the same bounds ---------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--threads", "100000"], ["--threads", "0"], ["--batch-size", str(limits.MAX_BATCH + 1)], ["--batch-size", "x"],
    ["--max-pixels", "0"], ["--max-pixels", str(limits.MAX_PIXELS_CEILING + 1)],
    ["--threads", "99999999999999999999999"],
])
def test_bad_flags_are_one_line_in_both(cpp, capsys, tiny_onnx, image_dir, args):
    for runtime, (code, out, err) in _both(cpp, capsys, tiny_onnx, image_dir / "good" / "coffee.jpg", *args).items():
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (runtime, code, err)
        assert args[0] in err, (runtime, err)


@pytest.mark.parametrize("args", [[], ["model.onnx"], ["--bogus"], ["--intra-op-threads", "100000"], ["--json", "--csv"]])
def test_specdet_score_usage_errors_are_one_line(cpp, args):
    result = run(cpp.outputs["specdet-score"], *args)
    assert result.returncode == 2 and result.stdout == "", result
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("specdet-score: error: "), result.stderr


def test_intra_op_threads_100000_is_refused_by_the_library(cpp, tiny_onnx):
    with pytest.raises(Exception, match="from 0 to 1024"):
        CppDetector(cpp.library, tiny_onnx, intra_op_threads=100_000)


# ---- the same hostile inputs under AddressSanitizer + UndefinedBehaviorSanitizer ------------------------


def test_sanitized_hostile_inputs(cpp_sanitized, resize_224, nan_onnx, tiny_onnx, image_dir, tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    shutil.copy(image_dir / "good" / "coffee.jpg", folder / "control.jpg")
    for name in ("a 3 x 30000 strip (500 megapixels resized)", "a 1 x 20,000,000 strip (resized side beyond 32 bits)",
                 "a FIFO named like an image", "a link to itself", "a link loop of folders"):
        INPUTS[name][0](folder)
    score = cpp_sanitized.outputs["specdet-score"]
    for artifact, skipped in ((resize_224, 3), (nan_onnx, 4)):
        result = run(score, artifact, folder, "--json", "--threads", "2", env=SANITIZER_ENV, timeout=TIMEOUT)
        assert_sanitizer_clean(result)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == skipped, result.stderr
    deep = copy_with_manifest(tiny_onnx, tmp_path / "deep.onnx", _manifest_text(tiny_onnx, "provenance nested 100,000 deep"))
    result = run(score, deep, folder, env=SANITIZER_ENV, timeout=TIMEOUT)
    assert_sanitizer_clean(result)
    assert result.returncode == 2 and "levels deep" in result.stderr

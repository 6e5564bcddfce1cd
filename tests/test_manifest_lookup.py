"""Where an artifact's manifest is found (README "Checkpoints and manifests"): one table of cases,
each run through the Python reader (``Manifest.read``) and the C++ one (libspecdet_runtime through
its C ABI, and specdet-score), which must both give the table's answer. A drift of either side's
lookup order fails a case: every place a case offers and the order must not read holds either a
broken manifest or one whose threshold names it.
"""

from __future__ import annotations

import json

import pytest

from cpp_support import copy_with_manifest, embedded_manifest, run
from specdet.errors import SpecdetError
from specdet.manifest import Manifest, is_engine
from specdet.runtime.cpp.binding import CppDetector, RuntimeError_

INSIDE = "inside"  # the manifest an ONNX file carries in its metadata_props
MANIFEST, BROKEN = "manifest", "broken"  # what a place holds: a valid manifest, or text that is not JSON

NO_ONNX_MANIFEST = ("model.onnx carries no specdet manifest (ONNX metadata specdet.manifest) and has no model.json "
                    "beside it: re-export it with detect-export")
NO_ENGINE_MANIFEST = "no manifest model.engine.json beside model.engine: rebuild it with detect-build"

# id: (artifact, what lies where, the place whose manifest is used (a broken one: the error names it) or the error).
CASES = {
    "onnx-inside": ("model.onnx", {INSIDE: MANIFEST}, INSIDE),
    "onnx-inside-leaves-model.json-unopened": ("model.onnx", {INSIDE: MANIFEST, "model.json": BROKEN}, INSIDE),
    "onnx-inside-ignores-specdet.json": ("model.onnx", {INSIDE: MANIFEST, "model.onnx.specdet.json": BROKEN}, INSIDE),
    "onnx-broken-inside-no-fallback": ("model.onnx", {INSIDE: BROKEN, "model.json": MANIFEST}, INSIDE),
    "onnx-model.json": ("model.onnx", {"model.json": MANIFEST}, "model.json"),
    "onnx-model.json-over-specdet.json": (
        "model.onnx", {"model.json": MANIFEST, "model.onnx.specdet.json": MANIFEST}, "model.json"),
    "onnx-broken-model.json": ("model.onnx", {"model.json": BROKEN, "model.onnx.json": MANIFEST}, "model.json"),
    "onnx-engine-style-sidecar-unread": ("model.onnx", {"model.onnx.json": MANIFEST}, NO_ONNX_MANIFEST),
    "onnx-specdet.json-unread": ("model.onnx", {"model.onnx.specdet.json": MANIFEST}, NO_ONNX_MANIFEST),
    "onnx-none": ("model.onnx", {}, NO_ONNX_MANIFEST),
    "engine": ("model.engine", {"model.engine.json": MANIFEST, "model.engine.specdet.json": BROKEN,
                                "model.json": BROKEN}, "model.engine.json"),
    "plan-any-case": ("model.PLAN", {"model.PLAN.json": MANIFEST, "model.json": BROKEN}, "model.PLAN.json"),
    "engine-broken": ("model.engine", {"model.engine.json": BROKEN}, "model.engine.json"),
    "engine-stem-sidecar-unread": ("model.engine", {"model.json": MANIFEST}, NO_ENGINE_MANIFEST),
    "engine-specdet.json-unread": ("model.engine", {"model.engine.specdet.json": MANIFEST}, NO_ENGINE_MANIFEST),
    "engine-none": ("model.engine", {}, NO_ENGINE_MANIFEST),
}
PLACES = sorted({place for _, present, _ in CASES.values() for place in present})
# Each place's manifest has a threshold of its own (exact in binary: both sides read it back unchanged).
THRESHOLDS = {place: (i + 1) / 32 for i, place in enumerate(PLACES)}
PLACE_OF = {threshold: place for place, threshold in THRESHOLDS.items()}


def _lay_out(tiny_onnx, folder, artifact: str, present: dict) -> None:
    def text(place):
        if place not in present:
            return None
        if present[place] == BROKEN:
            return "{ not json"
        data = dict(embedded_manifest(tiny_onnx), artifact=artifact, threshold=THRESHOLDS[place])
        if is_engine(artifact):  # what a TensorRT build of the library checks before the engine itself
            data["engine"] = {"library": "tensorrt", "plugins": []}
        return json.dumps(data)

    if is_engine(artifact):
        (folder / artifact).write_bytes(b"\0" * 64)  # never read by either lookup
    else:
        copy_with_manifest(tiny_onnx, folder / artifact, text(INSIDE))
    for place in present.keys() - {INSIDE}:
        (folder / place).write_text(text(place))


def _from_error(message: str, folder) -> str:
    """The place a broken manifest's error names, else the error itself."""
    assert "\n" not in message, message
    if "not valid JSON" not in message:
        return message
    named = [place for place in PLACES if place != INSIDE and str(folder / place) in message]
    return named[0] if named else INSIDE if "specdet.manifest" in message else message


def _python(path) -> str:
    try:
        return PLACE_OF[Manifest.read(path).threshold]
    except SpecdetError as err:
        return _from_error(str(err), path.parent)


def _cpp(library, path, present: dict) -> str:
    try:
        return PLACE_OF[CppDetector(library, path).threshold]
    except RuntimeError_ as err:
        if err.status == "MANIFEST":
            return _from_error(str(err), path.parent)
        # An engine whose manifest was read and accepted, then refused by the backend (every engine
        # without TensorRT, this stand-in with it): the place read is the case's one valid manifest,
        # since reading any other place would have failed or been absent.
        assert is_engine(path) and err.status in ("UNSUPPORTED", "BACKEND"), (err.status, str(err))
        valid = [place for place, kind in present.items() if kind == MANIFEST]
        return valid[0] if len(valid) == 1 else f"an engine opened without one valid manifest ({err})"


@pytest.mark.parametrize("artifact, present, expected", CASES.values(), ids=CASES.keys())
def test_both_runtimes_find_the_same_manifest(tiny_onnx, image_dir, tmp_path, request, artifact, present, expected):
    _lay_out(tiny_onnx, tmp_path, artifact, present)
    path = tmp_path / artifact
    assert _python(path) == expected
    cpp = request.getfixturevalue("cpp")  # after the Python half, which also runs where no compiler exists
    assert _cpp(cpp.library, path, present) == expected
    if expected not in PLACES:  # no manifest: specdet-score says the same one line
        result = run(cpp.outputs["specdet-score"], path, image_dir / "good" / "coffee.jpg")
        assert result.returncode == 2 and result.stderr.splitlines() == [f"specdet-score: error: {expected}"]

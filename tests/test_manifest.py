"""The artifact contract: Manifest fields and checks, the manifest inside ONNX files, engine and legacy sidecars."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import TINY_PREPROCESSING, tiny_manifest
from specdet import onnx_metadata
from specdet.errors import SpecdetError
from specdet.manifest import ONNX_METADATA_KEY, Manifest, PluginLibrary, engine_sidecar, legacy_onnx_sidecar

SHA = "ab" * 32


@pytest.fixture
def onnx_copy(tiny_onnx, tmp_path):
    """The tiny ONNX file, manifest inside, copied to ``tmp_path/model.onnx``."""
    path = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx, path)
    return path


def _without_manifest(source, target):
    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(target))
    return target


# ---- the typed manifest ------------------------------------------------------


def test_fields_are_typed():
    manifest = Manifest.from_dict(tiny_manifest())
    assert manifest.input.name == "image" and manifest.input.shape == ("batch", 3, 32, 32)
    assert [o.name for o in manifest.outputs] == ["logit", "probability"]
    assert (manifest.batch.min, manifest.batch.max) == (1, 4)
    assert manifest.threshold == 0.5 and manifest.precision == "fp32" and manifest.engine is None
    assert manifest.provenance == {"versions": {}, "validation": {}, "metadata": {}}
    assert manifest.ort_optimization == "ORT_ENABLE_ALL"
    assert dataclasses.replace(manifest, precision="fp16").ort_optimization == "ORT_ENABLE_EXTENDED"


def test_unknown_keys_survive_a_round_trip():
    data = {**tiny_manifest(), "made_by_a_newer_exporter": {"x": [1, 2]}}
    assert Manifest.from_dict(data).to_dict() == data


def test_optional_keys_default():
    data = tiny_manifest()
    for key in ("config", "precision", "fft_mode", "opset", "parent", "versions", "validation", "metadata"):
        del data[key]
    manifest = Manifest.from_dict(data)
    assert manifest.precision == "fp32" and manifest.config == {} and manifest.parent is None


def _changed(path: str, value):
    data = tiny_manifest()
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key] if not key.isdigit() else target[int(key)]
    if value is KeyError:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("format", "someone-else", "is not a specdet manifest"),
        ("version", 7, "manifest version 7; this specdet reads version 1"),
        ("architecture", KeyError, "lacks architecture"),
        ("threshold", 1.5, "threshold must be a number from 0 to 1, not 1.5"),
        ("threshold", float("nan"), "threshold must be a number from 0 to 1, not nan"),
        ("threshold", "0.5", "threshold must be a number from 0 to 1, not '0.5'"),
        ("threshold", True, "threshold must be a number from 0 to 1, not True"),
        ("batch", {"min": 0, "max": 4}, "batch must be {min, max} with positive integers"),
        ("batch", {"min": 4, "max": 2}, "min <= max"),
        ("batch", {"min": 1, "max": "8"}, "batch must be"),
        ("preprocessing.mean", [0.5, 0.5], "invalid preprocessing (mean must list 3 numbers)"),
        ("preprocessing.std", [0.2, 0.0, 0.2], "std must not be 0"),
        ("preprocessing.crop", 0, "crop must be a whole number from 1 to 4096"),
        ("preprocessing.crop", 32.0, "crop must be a whole number from 1 to 4096"),
        ("preprocessing.interpolation", "lanczos", "interpolation must be one of bicubic, bilinear"),
        ("inputs", {"name": "image"}, "inputs must be a list of {name, shape, dtype}"),
        ("inputs.0.dtype", "float128", "inputs entry"),
        ("inputs.0.shape", ["batch", 3, -1, 32], "inputs entry"),
        ("inputs", [], "inputs must list one tensor (the image batch), not 0"),
        ("outputs.1.name", "score", "outputs lack probability"),
        ("precision", "int4", "precision must be one of fp32, fp16, int8, not 'int4'"),
        ("opset", 0, "opset must be a positive integer"),
        ("config", [], "config must be an object"),
        ("engine", {"library": "tensorrt", "plugins": [{"name": "lib.so", "sha256": "xyz"}]}, "engine.plugins entry"),
    ],
)
def test_invalid_fields_are_one_line_errors(path, value, message):
    with pytest.raises(SpecdetError) as err:
        Manifest.from_dict(_changed(path, value), "m.onnx", "re-export it")
    text = str(err.value)
    assert message in text and text.startswith("m.onnx") and text.endswith("re-export it") and "\n" not in text


def test_engine_section_accepts_plugins_recorded_by_path():
    data = {**tiny_manifest(), "engine": {
        "library": "tensorrt_rtx", "library_version": "1.7", "compute_capabilities": ["8.6"], "build_device": None,
        "plugins": [{"path": "/build/x/libspecdet_trt_plugins.so", "sha256": SHA, "ops": [{"name": "BandSplit"}]}],
        "profile": {"batch": {"min": 1, "opt": 2, "max": 4}},
    }}
    engine = Manifest.from_dict(data).engine
    assert engine.plugins == (PluginLibrary("libspecdet_trt_plugins.so", SHA, ({"name": "BandSplit"},)),)
    assert engine.compute_capabilities == ("8.6",) and engine.details == {"profile": {"batch": {"min": 1, "opt": 2, "max": 4}}}
    written = Manifest.from_dict(data).to_dict()["engine"]["plugins"]
    assert written == [{"name": "libspecdet_trt_plugins.so", "sha256": SHA, "ops": [{"name": "BandSplit"}]}]


def test_provenance_cannot_shadow_a_field():
    with pytest.raises(ValueError, match="threshold"):
        dataclasses.replace(Manifest.from_dict(tiny_manifest()), provenance={"threshold": 0.1})


# ---- inside the ONNX file ------------------------------------------------------


def test_the_manifest_travels_inside_the_onnx_file(onnx_copy, tmp_path):
    manifest = Manifest.read(onnx_copy)
    assert manifest == Manifest.from_dict(tiny_manifest())
    assert not legacy_onnx_sidecar(onnx_copy).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    model = onnx.load(str(onnx_copy))
    (entry,) = [p for p in model.metadata_props if p.key == ONNX_METADATA_KEY]
    assert json.loads(entry.value) == manifest.to_dict()
    onnx.checker.check_model(model)
    # ONNX Runtime (and its C API, for the C++ runtime) sees it as custom metadata.
    session = ort.InferenceSession(str(onnx_copy), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY]) == manifest.to_dict()


def test_rewriting_replaces_the_entry_and_keeps_the_rest(onnx_copy, tmp_path):
    model = onnx.load(str(onnx_copy))
    model.metadata_props.add(key="owner", value="someone else")
    onnx.save(model, str(onnx_copy))
    graph = model.graph.SerializeToString()
    changed = dataclasses.replace(Manifest.read(onnx_copy), threshold=0.25)
    assert changed.write(onnx_copy) == onnx_copy
    model = onnx.load(str(onnx_copy))
    assert [p.key for p in model.metadata_props].count(ONNX_METADATA_KEY) == 1
    assert {p.key: p.value for p in model.metadata_props}["owner"] == "someone else"
    assert model.graph.SerializeToString() == graph
    assert Manifest.read(onnx_copy).threshold == 0.25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind


def test_an_invalid_manifest_leaves_the_file_alone(onnx_copy):
    before = onnx_copy.read_bytes()
    bad = dataclasses.replace(Manifest.read(onnx_copy), threshold=2.0)
    with pytest.raises(SpecdetError, match="threshold must be a number from 0 to 1.*nothing was written"):
        bad.write(onnx_copy)
    assert onnx_copy.read_bytes() == before


def test_reading_never_parses_the_graph(tmp_path):
    """The metadata is found by walking top-level fields: a graph field of garbage is skipped, not parsed."""
    path = tmp_path / "huge.onnx"
    garbage = b"\xff" * (8 << 20)  # not a GraphProto: onnx.load would fail on it
    with open(path, "wb") as file:
        file.write(onnx_metadata._field(7, garbage))
        file.write(onnx_metadata._field(14, onnx_metadata._field(1, b"k") + onnx_metadata._field(2, b"v")))
    assert onnx_metadata.read_metadata(path) == {"k": "v"}
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        onnx.load(str(path))


@pytest.mark.parametrize("content", [b"nope", b'[{"path": "x.jpg"}]', b"\x0a\xff\xff\xff\x0f"],
                         ids=["text", "json", "truncated"])
def test_a_file_that_is_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(SpecdetError, match="model.onnx is not an ONNX file") as err:
        Manifest.read(path)
    assert "\n" not in str(err.value)


def test_external_data_stays_where_it_is(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="big.onnx.data", size_threshold=256)  # the conv weights; ORT wants small axes inline
    data = (tmp_path / "big.onnx.data").read_bytes()
    manifest = dataclasses.replace(Manifest.read(path), artifact="big.onnx", threshold=0.75)
    manifest.write(path)
    assert (tmp_path / "big.onnx.data").read_bytes() == data
    assert Manifest.read(path).threshold == 0.75
    loaded = onnx.load(str(path))  # the weights still resolve from the data file
    assert len(data) >= 256 and sum(len(i.raw_data) for i in loaded.graph.initializer) >= len(data)
    batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    def run(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": batch})

    np.testing.assert_array_equal(run(path)[1], run(tiny_onnx)[1])


def test_the_embedded_manifest_wins_over_a_json_beside_it(onnx_copy):
    # `detect-predict model.onnx --json > model.json` once destroyed the manifest of older exports.
    legacy_onnx_sidecar(onnx_copy).write_text('[{"path": "a.jpg", "probability": 0.1, "label": "real"}]\n')
    assert Manifest.read(onnx_copy).architecture == "tiny"


# ---- sidecars ----------------------------------------------------------------


def test_older_exports_read_from_their_model_json(onnx_copy, tmp_path):
    bare = _without_manifest(onnx_copy, tmp_path / "old.onnx")
    legacy_onnx_sidecar(bare).write_text(json.dumps({**tiny_manifest(), "artifact": "old.onnx"}))
    assert Manifest.read(bare).artifact == "old.onnx"


def test_missing_manifest(onnx_copy, tmp_path):
    bare = _without_manifest(onnx_copy, tmp_path / "bare.onnx")
    with pytest.raises(SpecdetError) as err:
        Manifest.read(bare)
    assert str(err.value) == (
        "bare.onnx carries no specdet manifest (ONNX metadata specdet.manifest) and has no bare.json beside it: "
        "re-export it with detect-export"
    )
    with pytest.raises(SpecdetError, match="artifact .*absent.onnx not found"):
        Manifest.read(tmp_path / "absent.onnx")


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ("[]", "not a specdet manifest")])
def test_bad_legacy_sidecar(onnx_copy, tmp_path, content, message):
    bare = _without_manifest(onnx_copy, tmp_path / "bare.onnx")
    legacy_onnx_sidecar(bare).write_text(content)
    with pytest.raises(SpecdetError, match=message) as err:
        Manifest.read(bare)
    assert "\n" not in str(err.value)


def test_engines_keep_a_sidecar(tmp_path):
    engine = tmp_path / "model.engine"
    data = {**tiny_manifest(), "artifact": "model.engine", "engine": {"library": "tensorrt", "plugins": []}}
    with pytest.raises(SpecdetError, match="no manifest model.engine.json beside model.engine: rebuild it"):
        Manifest.read(engine)
    assert Manifest.from_dict(data).write(engine) == engine_sidecar(engine) == tmp_path / "model.engine.json"
    assert not engine.exists()  # only the sidecar is written: the engine is the builder's
    assert Manifest.read(engine).engine.library == "tensorrt"
    assert Manifest.read(tmp_path / "model.engine").preprocessing == TINY_PREPROCESSING


def test_writing_into_a_missing_onnx_file(tmp_path):
    with pytest.raises(SpecdetError, match="cannot embed a manifest in .*model.onnx: the file does not exist"):
        Manifest.from_dict(tiny_manifest()).write(tmp_path / "model.onnx")

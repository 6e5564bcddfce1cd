"""External data of an ONNX artifact: followed only to regular files inside the model's folder, by every command."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from specdet.errors import SpecdetError
from specdet.export import build_cli
from specdet.export import cli as export_cli
from specdet.onnx_external import _PATHS, external_data_files
from specdet.runtime import Detector
from specdet.runtime import cli as predict_cli


def _with_external_data(tiny_onnx: Path, folder: Path, location: str = "w.data") -> Path:
    """``tiny_onnx`` saved in ``folder`` with its weights in ``folder/location`` (manifest kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / tiny_onnx.name
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.load(str(tiny_onnx)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=256)
    return path


def _point_at(model: Path, location: str) -> None:
    """Rewrite every external data location of ``model`` to ``location``, leaving the data where it is."""
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    model.write_bytes(proto.SerializeToString())


def _hostile(case: str, tiny_onnx: Path, tmp_path: Path) -> Path:
    """A model in ``tmp_path/m`` whose external data is ``case``; the real data is in ``tmp_path/outside``."""
    outside = _with_external_data(tiny_onnx, tmp_path / "outside")
    data = outside.parent / "w.data"
    model = _with_external_data(tiny_onnx, tmp_path / "m")
    local = model.parent / "w.data"
    if case == "a symlink to a file outside":
        local.unlink()
        local.symlink_to(data)
    elif case == "a folder symlink to outside":
        _point_at(model, "sub/w.data")
        (model.parent / "sub").symlink_to(outside.parent)
    elif case == "an absolute path":
        _point_at(model, str(data))
    elif case == "a path up and out":
        _point_at(model, "../outside/w.data")
    elif case == "a FIFO":
        local.unlink()
        os.mkfifo(local)
    elif case == "a folder":
        local.unlink()
        local.mkdir()
    elif case == "missing":
        local.unlink()
    elif case == "truncated":
        local.write_bytes(local.read_bytes()[:100])
    return model


HOSTILE = {
    "a symlink to a file outside": "outside the model's folder",
    "a folder symlink to outside": "outside the model's folder",
    "an absolute path": "is not a file name relative to the model's folder",
    "a path up and out": "is not a file name relative to the model's folder",
    "a FIFO": "is not a regular file",
    "a folder": "is not a regular file",
    "missing": "'w.data' is missing: copy it into",
    "truncated": "is truncated or belongs to another model",
}


def test_the_walk_knows_every_message_on_the_way_to_a_tensor():
    """The field numbers hard-coded in onnx_external are onnx.proto's: each leads to the message it names."""
    protos = {name: getattr(onnx, f"{name}Proto") for name in (*_PATHS, "Tensor")}
    for name, fields in _PATHS.items():
        by_number = {f.number: f for f in protos[name].DESCRIPTOR.fields}
        for number, child in fields.items():
            assert by_number[number].message_type is protos[child].DESCRIPTOR, (name, number)
        # and no field that can hold a tensor is left out
        holding = {f.number for f in protos[name].DESCRIPTOR.fields if f.message_type is not None
                   and f.message_type.name.removesuffix("Proto") in protos}
        assert holding == set(fields), name
    tensor = {f.name: f.number for f in onnx.TensorProto.DESCRIPTOR.fields}
    assert (tensor["external_data"], tensor["data_location"]) == (13, 14)


def test_data_beside_the_model_is_listed_and_loads(tiny_onnx, tmp_path):
    assert external_data_files(tiny_onnx) == []
    model = _with_external_data(tiny_onnx, tmp_path / "m", "sub/w.data")
    assert external_data_files(model) == ["sub/w.data"]
    # a link that stays inside the folder is followed
    (model.parent / "inner").mkdir()
    os.replace(model.parent / "sub" / "w.data", model.parent / "inner" / "w.data")
    (model.parent / "sub" / "w.data").symlink_to(model.parent / "inner" / "w.data")
    batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with Detector(model, backend="onnxruntime") as detector, Detector(tiny_onnx, backend="onnxruntime") as reference:
        np.testing.assert_array_equal(detector.runner.infer(batch)["probability"],
                                      reference.runner.infer(batch)["probability"])


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_external_data_is_refused_by_the_check(case, tiny_onnx, tmp_path):
    model = _hostile(case, tiny_onnx, tmp_path)
    with pytest.raises(SpecdetError, match=HOSTILE[case]) as err:
        external_data_files(model)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["a symlink to a file outside", "an absolute path", "a FIFO"])
@pytest.mark.parametrize("command", ["detect-predict", "detect-build", "detect-export --precision int8",
                                     "detect-export --precision fp16", "Detector"])
def test_every_command_that_reads_onnx_refuses_it(case, command, tiny_onnx, image_dir, tmp_path, capsys):
    model = _hostile(case, tiny_onnx, tmp_path)
    before = sorted(p.name for p in model.parent.iterdir())
    if command == "Detector":
        with pytest.raises(SpecdetError, match=HOSTILE[case]):
            Detector(model, backend="onnxruntime")
        return
    main, argv = {
        "detect-predict": (predict_cli.main, [model, image_dir, "--backend", "onnxruntime"]),
        "detect-build": (build_cli.main, [model, "-o", tmp_path / "m.engine"]),
        "detect-export --precision int8": (export_cli.main, [model, "--precision", "int8", "-o", tmp_path / "q.onnx"]),
        "detect-export --precision fp16": (export_cli.main, [model, "--precision", "fp16", "-o", tmp_path / "h.onnx"]),
    }[command]
    assert main([str(a) for a in argv]) == 2  # a user error, not onnx's ValidationError (exit 3)
    err = capsys.readouterr().err
    assert HOSTILE[case] in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in model.parent.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".engine", ".onnx")]


def test_conversion_of_a_model_with_good_external_data_still_works(tiny_onnx, tmp_path):
    from specdet.export.artifact import convert_to_int8

    model = _with_external_data(tiny_onnx, tmp_path / "m")
    convert_to_int8(model, tmp_path / "q.onnx", count=2, tolerance=1.0, progress=False)
    assert onnx.load(str(tmp_path / "q.onnx")).graph.node

"""``detect-predict``: output formats, skipped files, exit statuses, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import shutil

import onnx
import pytest
import torch

from conftest import TinyConfig, TinyDetector
from specdet.errors import SpecdetError
from specdet.images import collect_images
from specdet.runtime.cli import main

GOOD = 9  # images under image_dir/good (notes.txt is not one)


def test_folders_are_searched_recursively_and_sorted(image_dir):
    files = collect_images([image_dir / "good"])
    assert len(files) == GOOD
    assert files == sorted(files, key=str)
    assert any(p.name == "chelsea.JPG" for p in files)


def test_table_for_mixed_good_and_corrupt(tiny_checkpoint, image_dir, capsys):
    assert main([str(tiny_checkpoint), str(image_dir)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["path", "probability", "label"]
    assert len(lines) == 1 + GOOD
    for line in lines[1:]:
        path, probability, label = line.split()
        assert 0.0 <= float(probability) <= 1.0 and label in ("fake", "real")
        assert len(probability.split(".")[1]) == 6
    skipped = err.splitlines()
    assert len(skipped) == 2
    assert all(line.startswith("skipped ") for line in skipped)
    assert any("truncated.jpg: unreadable image" in line for line in skipped)
    assert "Traceback" not in err


def test_all_good_exits_zero(tiny_checkpoint, image_dir, capsys):
    assert main([str(tiny_checkpoint), str(image_dir / "good"), "--batch-size", "4"]) == 0
    assert capsys.readouterr().err == ""


def test_json_output_on_onnx(tiny_onnx, image_dir, capsys):
    assert main([str(tiny_onnx), str(image_dir / "good"), "--json", "--threads", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == GOOD
    assert set(rows[0]) == {"path", "probability", "label"}
    assert isinstance(rows[0]["probability"], float)


def test_csv_output(tiny_checkpoint, image_dir, capsys):
    good = image_dir / "good"
    assert main([str(tiny_checkpoint), str(good / "coffee.jpg"), str(good / "camera.png"), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"] for r in rows] == [str(good / "coffee.jpg"), str(good / "camera.png")]
    assert all(r["label"] in ("fake", "real") for r in rows)


def test_backends_print_the_same_scores(tiny_checkpoint, tiny_onnx, image_dir, capsys):
    scores = []
    for artifact in (tiny_checkpoint, tiny_onnx):
        main([str(artifact), str(image_dir / "good"), "--json"])
        scores.append([r["probability"] for r in json.loads(capsys.readouterr().out)])
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_missing_path_is_counted_as_skipped(tiny_checkpoint, image_dir, capsys):
    absent = image_dir / "absent.jpg"
    assert main([str(tiny_checkpoint), str(absent), str(image_dir / "good" / "coffee.jpg")]) == 1
    out, err = capsys.readouterr()
    assert err.strip() == f"skipped {absent}: no such file"
    assert "coffee.jpg" in out


def test_missing_artifact_is_one_line(tmp_path, image_dir, capsys):
    assert main([str(tmp_path / "model.pth"), str(image_dir / "good")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not found" in err and "Traceback" not in err


def test_onnx_without_manifest(tmp_path, tiny_onnx, image_dir, capsys):
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    artifact = tmp_path / "model.onnx"
    onnx.save(model, str(artifact))
    assert main([str(artifact), str(image_dir / "good")]) == 2
    err = capsys.readouterr().err
    assert "model.onnx carries no specdet manifest" in err and len(err.splitlines()) == 1


def test_json_output_beside_the_model_breaks_nothing(tmp_path, tiny_onnx, image_dir, capsys):
    """``detect-predict model.onnx --json > model.json`` once overwrote the manifest beside the ONNX file."""
    artifact = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx, artifact)
    assert main([str(artifact), str(image_dir / "good"), "--json"]) == 0
    first = capsys.readouterr().out
    (tmp_path / "model.json").write_text(first)
    assert main([str(artifact), str(image_dir / "good"), "--json"]) == 0
    assert capsys.readouterr().out == first


def test_backend_options(tiny_checkpoint, tiny_onnx, image_dir, capsys):
    image = str(image_dir / "good" / "coffee.jpg")
    assert main([str(tiny_onnx), image, "--providers", "CPUExecutionProvider"]) == 0
    capsys.readouterr()
    for argv, message in (
        ([str(tiny_onnx), image, "--providers", "NoSuchExecutionProvider"], "no execution provider"),
        ([str(tiny_onnx), image, "--plugins", str(tiny_onnx)], "the onnxruntime backend has no option plugins"),
        ([str(tiny_checkpoint), image, "--cuda-graphs"], "the torch backend has no option cuda_graphs"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1


def test_no_images_found(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tiny_checkpoint), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no images found" in err


def test_json_and_csv_are_exclusive(tiny_checkpoint, image_dir):
    with pytest.raises(SystemExit) as exit_:
        main([str(tiny_checkpoint), str(image_dir), "--json", "--csv"])
    assert exit_.value.code == 2


def test_debug_shows_the_traceback(tmp_path, image_dir):
    with pytest.raises(SpecdetError):
        main([str(tmp_path / "model.pth"), str(image_dir / "good"), "--debug"])


def test_bare_state_dict_with_arch(tiny_models, tmp_path, image_dir, capsys):
    weights = tmp_path / "weights.pt"
    torch.save(TinyDetector(TinyConfig()).state_dict(), weights)
    assert main([str(weights), str(image_dir / "good" / "coffee.jpg")]) == 2
    assert "pass --arch NAME" in capsys.readouterr().err
    assert main([str(weights), str(image_dir / "good" / "coffee.jpg"), "--arch", "tiny"]) == 0

"""detect-bench end to end on the stand-in tiny model: the record, its schema, the files, argument errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image
from skimage import data as samples

from conftest import MAX_BATCH
from specdet.benchmarks import bench, cli, report, variants

FAST = ["--warmup", "1", "--iters", "2", "--quiet"]


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory) -> Path:
    """Two sources, each with 0_real/ and 1_fake/ holding two small photos."""
    root = tmp_path_factory.mktemp("labelled")
    photos = [samples.astronaut(), samples.coffee(), samples.chelsea(), samples.rocket()]
    for s, source in enumerate(("gan", "diffusion")):
        for label, folder in enumerate(("0_real", "1_fake")):
            (root / source / folder).mkdir(parents=True)
            for i in range(2):
                array = np.roll(photos[(s + label + i) % 4], 40 * i, axis=1)
                Image.fromarray(array).resize((64, 48)).save(root / source / folder / f"{i}.png")
    return root


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_full_run_writes_valid_json_markdown_and_plots(tiny_checkpoint, tiny_onnx, labelled_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = _run([tiny_checkpoint, tiny_onnx, "--images", labelled_dir, "--batch-sizes", "1,2",
                           "--profile", "--out", out_dir, *FAST], capsys)
    assert code == 0, err
    (json_path,) = out_dir.glob("*.json")
    record = json.loads(json_path.read_text())
    jsonschema.validate(record, report.schema())
    assert json_path.name.endswith("-tiny.json")
    for key in ("markdown", "latency_plot", "probability_diff_plot"):
        assert (out_dir / record["files"][key]).stat().st_size > 0
    assert (out_dir / record["files"]["latency_plot"]).read_bytes()[:4] == b"\x89PNG"

    # Every variant at every batch size, torch as the reference.
    assert record["reference"] == "torch-fp32:tiny.pth"
    assert {(r["variant"], r["batch"]) for r in record["latency"]} == {
        (v, b) for v in ("torch-fp32:tiny.pth", "onnxruntime-cpu:tiny.onnx") for b in (1, 2)}
    assert all(r["iterations"] == 2 for r in record["latency"])
    assert [r["batch"] for r in record["preprocessing"]] == [1, 2]
    ref_rows = [r for r in record["latency"] if r["variant"] == record["reference"]]
    assert all(r["speedup_vs_reference"] == 1.0 for r in ref_rows)
    assert record["model"]["flops_per_image"] > 0

    # Accuracy: same weights, so ONNX Runtime matches torch closely; labelled, so AUC per source.
    rows = {r["variant"]: r for r in record["accuracy"]}
    assert rows["torch-fp32:tiny.pth"]["logit_max_abs"] == 0.0
    onnx = rows["onnxruntime-cpu:tiny.onnx"]
    assert onnx["images"] == 8 and onnx["probability_max_abs"] < 1e-5 and onnx["decision_agreement"] == 1.0
    assert set(onnx["detection"]["per_source"]) == {"gan", "diffusion"}
    assert abs(onnx["detection"]["mean"]["auc_diff"]) < 1e-6
    assert record["images"]["sources"] == {"diffusion": {"real": 2, "fake": 2}, "gan": {"real": 2, "fake": 2}}

    # What ran, row by row.
    facts = {v["variant"]: v for v in record["variants"]}
    assert facts["onnxruntime-cpu"]["provider"].startswith("CPUExecutionProvider")
    assert facts["onnxruntime-cpu"]["fft_mode"] == "torch" and facts["torch-fp32"]["fft_mode"] == "torch.fft"
    assert facts["torch-fp32"]["library"]["torch"] and facts["onnxruntime-cpu"]["threads"] >= 1

    # --profile: each variant's time by operator type at the smallest batch size.
    profiles = {p["variant"]: p for p in record["profile"]}
    assert profiles["torch-fp32:tiny.pth"]["batch"] == 1
    assert all(o["op"].startswith("aten::") for o in profiles["torch-fp32:tiny.pth"]["ops"])
    onnx_ops = {o["op"] for o in profiles["onnxruntime-cpu:tiny.onnx"]["ops"]}
    assert onnx_ops & {"Conv", "FusedConv"}
    assert all(0 < sum(o["share"] for o in p["ops"]) <= 1 + 1e-9 for p in record["profile"])

    # The printed report is the Markdown file.
    assert out == (out_dir / record["files"]["markdown"]).read_text() + "\n"
    assert "| onnxruntime-cpu | tiny.onnx |" in out and "AUC per source" in out

    # A second run the same day does not overwrite the first.
    assert _run([tiny_checkpoint, tiny_onnx, "--out", out_dir, "--batch-sizes", "1", "--no-plots", *FAST],
                capsys)[0] == 0
    assert len(list(out_dir.glob("*.json"))) == 2


def test_reference_from_the_manifest_and_unlabelled_images(tiny_models, tiny_checkpoint, tiny_onnx, image_dir,
                                                             tmp_path, capsys):
    # tiny.onnx's manifest names tiny.pth as its parent: found beside it, not passed.
    folder = tmp_path / "artifacts"
    folder.mkdir()
    shutil.copy(tiny_onnx, folder / "tiny.onnx")  # its manifest inside
    shutil.copy(tiny_checkpoint, folder / "tiny.pth")
    code, out, err = _run([folder / "tiny.onnx", "--images", image_dir / "good", "--batch-sizes", "1",
                           "--backends", "onnxruntime", "--out", tmp_path / "out", "--no-plots", *FAST], capsys)
    assert code == 0, err
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    jsonschema.validate(record, report.schema())
    assert not record["images"]["labelled"] and "detection" not in record["accuracy"][0]
    assert record["images"]["count"] == 9  # the good/ images, the text file left out
    # The reference is loaded for accuracy but, not selected, not timed.
    assert [v["timed"] for v in record["variants"]] == [False, True]
    assert {r["variant"] for r in record["latency"]} == {"onnxruntime-cpu:tiny.onnx"}
    assert all(r["speedup_vs_reference"] is None for r in record["latency"])


def test_no_arguments_runs_the_builtin_default(tiny_checkpoint, tiny_onnx, tmp_path, monkeypatch, capsys):
    made = []

    def builtin(folder, max_batch):  # the real one exports dual_branch_tiny: seconds, tested by hand
        made.append(folder)
        return [tiny_checkpoint, tiny_onnx]

    monkeypatch.setattr(bench, "builtin_artifacts", builtin)
    monkeypatch.setattr(bench, "DEFAULT_SELECTION", "torch-fp32,onnxruntime")
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(["--batch-sizes", "1", "--warmup", "0", "--seconds", "0.01", "--quiet"], capsys)
    assert code == 0, err
    assert not made[0].exists()  # the temporary folder is gone
    record = json.loads(next((tmp_path / cli.DEFAULT_OUT).glob("*.json")).read_text())
    jsonschema.validate(record, report.schema())
    assert record["arguments"]["builtin_default"] is True
    assert record["arguments"]["seconds"] == 0.01 and record["arguments"]["iters"] is None
    assert all(r["iterations"] >= 3 for r in record["latency"])  # a time budget still times each 3 times
    assert record["images"]["description"].startswith("15 scikit-image sample photos")
    assert "| torch-fp32 | tiny.pth |" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{pth}", "--backends", "torch,tensorflow"], "unknown backend 'tensorflow'"),
        (["{missing}"], "artifact {missing} not found"),
        (["{pth}", "{onnx}", "--batch-sizes", f"1,{MAX_BATCH * 2}"],
         f"batch size {MAX_BATCH * 2} is outside what tiny.onnx allows (1 to {MAX_BATCH})"),
        (["{pth}", "--batch-sizes", "1,x"], "--batch-sizes '1,x'"),
        (["{pth}", "--batch-sizes", "0"], "give one or more sizes of at least 1"),
        (["{pth}", "{pth}"], "one model per run"),
        (["{pth}", "--backends", "tensorrt"], "--backends tensorrt has nothing to run"),
        (["{onnx_alone}"], "accuracy is measured against the PyTorch checkpoint"),
        (["{pth}", "--images", "{missing}"], "image folder {missing} not found"),
        (["{pth}", "{onnx}", "--backends", "torch-fp32"],
         "nothing selected runs tiny.onnx here (--backends names none of onnxruntime-cpu, onnxruntime-cuda, openvino-cpu, "
         "openvino-cpu-bf16)"),
    ],
    ids=["backend", "artifact", "batch-range", "batch-syntax", "batch-zero", "two-models", "no-engine",
         "no-reference", "images", "unrun-file"],
)
def test_argument_errors_are_one_line(argv, message, tiny_checkpoint, tiny_onnx, tmp_path, capsys):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tiny_onnx, alone / "tiny.onnx")  # its manifest inside
    names = {"pth": tiny_checkpoint, "onnx": tiny_onnx, "missing": tmp_path / "nope.onnx",
             "onnx_alone": alone / "tiny.onnx"}
    argv = [a.format(**names) for a in argv]
    code, out, err = _run([*argv, "--out", tmp_path / "out", *FAST], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0], err
    assert message.format(**names) in lines[0]
    assert not (tmp_path / "out").exists()


def test_iters_and_seconds_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--iters", "3", "--seconds", "2"])
    assert exit.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_registry_selection(tiny_checkpoint, tiny_onnx):
    pairs = variants.select(["torch-fp32", "onnxruntime"], tiny_checkpoint, [tiny_checkpoint, tiny_onnx], strict=True)
    assert [(v.name, a.name) for v, a in pairs] == [("torch-fp32", "tiny.pth"), ("onnxruntime-cpu", "tiny.onnx")]
    # A backend name stands for the variants of it that can run here; GPU ones drop out on a CPU machine.
    names = {v.name for v, _ in variants.select(["torch"], tiny_checkpoint, [], strict=True)}
    assert {"torch-fp32", "torch-autocast-bf16"} <= names
    assert all(variants.VARIANTS[n].device == "cpu" or variants.VARIANTS[n].requires() is None for n in names)
    assert variants.VARIANTS["onnxruntime-cpu"].suffixes == (".onnx",)
    assert variants.select(["tensorrt"], tiny_checkpoint, [tiny_onnx], strict=False) == []


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_a_batch_beyond_the_limit_is_one_line_before_anything_is_allocated(with_checkpoint, tiny_checkpoint, tmp_path,
                                                                            capsys):
    """A checkpoint has no batch range, and the built-in default none either: 1,000,000 was a MemoryError (exit 3)."""
    argv = [tiny_checkpoint] if with_checkpoint else []
    code, _, err = _run([*argv, "--batch-sizes", "1,1000000", "--out", tmp_path / "out", "--quiet"], capsys)
    from specdet.limits import MAX_BATCH as LIMIT

    assert code == 2 and f"--batch-sizes=1000000 is out of range: give a whole number from 1 to {LIMIT}" in err
    assert len(err.strip().splitlines()) == 1

"""``detect-export`` on the tiny detectors: ONNX file, manifest, same scores as the checkpoint, one-line errors.

An export of a tiny detector takes several seconds on a 2-core CPU, so each
(model, FFT mode) is exported once for the whole module and the files are
shared by the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from skimage import data as samples

from specdet.errors import SpecdetError
from specdet.export import artifact, cli
from specdet.export import onnx as export_onnx_module
from specdet.files import file_sha256
from specdet.manifest import Manifest, legacy_onnx_sidecar
from specdet.models import checkpoint, create_model, default_preprocessing
from specdet.runtime import Detector

MODELS = ("dual_branch_tiny", "rine_ssca_tiny")
MODES = ("dft", "matmul", "plugin")
MAX_BATCH = 4
# The spectral op each detector uses: one specdet node in plugin mode.
PLUGIN_OP = {"dual_branch_tiny": "BandSplit", "rine_ssca_tiny": "SpectrumMagnitudeMean"}
# One export reads a plain state dict with --arch; one writes to the default output name.
FROM_STATE_DICT = ("rine_ssca_tiny", "dft")
DEFAULT_OUTPUT = ("dual_branch_tiny", "matmul")


@dataclasses.dataclass
class Exported:
    name: str
    fft: str
    source: Path  # what detect-export read: the checkpoint or a plain state dict
    checkpoint: Path  # the equivalent checkpoint, for the torch reference
    onnx: Path
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = create_model(name)
        paths[name] = checkpoint.save(model, folder / f"{name}.pth")
        torch.save(model.state_dict(), folder / f"{name}.state_dict.pth")
    return paths


def _state_dict(checkpoints, name: str) -> Path:
    return checkpoints[name].with_name(f"{name}.state_dict.pth")


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with its stdout and stderr, for module-scoped fixtures (no capsys there)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def export_once(checkpoints, tmp_path_factory):
    """``export_once(name, fft)``: the detect-export run of that model and mode, made on first use."""
    done: dict[tuple[str, str], Exported] = {}

    def export(name: str, fft: str) -> Exported:
        if (name, fft) in done:
            return done[name, fft]
        folder = tmp_path_factory.mktemp(f"{name}-{fft}")
        source, argv = checkpoints[name], ["--fft", fft, "--max-batch", str(MAX_BATCH)]
        if (name, fft) == FROM_STATE_DICT:
            source = _state_dict(checkpoints, name)
            argv += ["--arch", name]
        if (name, fft) == DEFAULT_OUTPUT:
            source = Path(shutil.copy(source, folder / source.name))  # the ONNX file goes beside it
            output = folder / f"{name}.onnx"
        else:
            output = folder / "model.onnx"
            argv += ["-o", str(output)]
        code, out, err = _run([str(source), *argv])
        assert code == 0, err
        done[name, fft] = Exported(name, fft, source, checkpoints[name], output, code, out, err)
        return done[name, fft]

    return export


@pytest.fixture(params=[(n, m) for n in MODELS for m in MODES], ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, export_once) -> Exported:
    return export_once(*request.param)


@pytest.fixture(scope="module")
def photos(image_dir) -> list:
    """Real photos, as arrays of several sizes and as files (one below the crop size, one grayscale)."""
    return [
        samples.astronaut(),
        samples.coffee(),
        samples.chelsea(),
        samples.rocket(),
        image_dir / "good" / "nested" / "chelsea.JPG",
        image_dir / "good" / "camera.png",
    ]


@pytest.fixture(scope="module")
def torch_scores(checkpoints, photos) -> dict[str, np.ndarray]:
    return {name: Detector(path).predict(photos) for name, path in checkpoints.items()}


def test_cli_reports_what_it_wrote(exported):
    lines = exported.out.splitlines()
    assert lines[0].startswith(f"wrote {exported.onnx} (")
    assert f"fft={exported.fft}, opset 18, batch 1..{MAX_BATCH})" in lines[0]
    assert lines[1] == "validated against PyTorch at batch sizes [2, 1]:"
    assert [line.split(":")[0].strip() for line in lines[2:]] == ["logit", "probability"]
    assert exported.err == ""
    # The manifest is inside the ONNX file: nothing else is written.
    assert [p.name for p in exported.onnx.parent.iterdir() if p.suffix != ".pth"] == [exported.onnx.name]


def test_manifest_inside_the_onnx_file(exported):
    manifest = Manifest.read(exported.onnx).to_dict()
    assert not legacy_onnx_sidecar(exported.onnx).exists()
    assert manifest["artifact"] == exported.onnx.name
    assert manifest["architecture"] == exported.name
    assert manifest["fft_mode"] == exported.fft
    assert manifest["batch"] == {"min": 1, "max": MAX_BATCH}
    assert manifest["opset"] == 18 and manifest["precision"] == "fp32"
    assert manifest["inputs"] == [{"name": "image", "shape": ["batch", 3, 224, 224], "dtype": "float32"}]
    assert manifest["outputs"] == [
        {"name": "logit", "shape": ["batch"], "dtype": "float32"},
        {"name": "probability", "shape": ["batch"], "dtype": "float32"},
    ]
    assert manifest["preprocessing"] == default_preprocessing(exported.name)
    assert manifest["threshold"] == 0.5
    assert manifest["parent"] == {"path": str(exported.source), "sha256": file_sha256(exported.source)}
    if (exported.name, exported.fft) == FROM_STATE_DICT:
        assert manifest["config"] == {}  # a plain state dict names no config: the registry default
    else:
        config = dataclasses.asdict(create_model(exported.name).config)
        assert manifest["config"] == json.loads(json.dumps(config))  # JSON has lists, not tuples
    assert manifest["validation"]["batch_sizes"] == [2, 1]
    assert {o["name"] for o in manifest["validation"]["outputs"]} == {"logit", "probability"}
    assert all(o["max_abs"] <= 1e-4 for o in manifest["validation"]["outputs"])
    assert {"python", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])


def test_onnx_file_has_a_dynamic_batch_and_the_mode_s_nodes(exported):
    model = onnx.load(str(exported.onnx))
    onnx.checker.check_model(model)
    (image,) = model.graph.input
    assert image.name == "image"
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert [o.name for o in model.graph.output] == ["logit", "probability"]
    op_types = {node.op_type for node in model.graph.node}
    specdet_ops = {node.op_type for node in model.graph.node if node.domain == "specdet"}
    assert ("DFT" in op_types) == (exported.fft == "dft")
    if exported.fft == "plugin":
        assert specdet_ops == {PLUGIN_OP[exported.name]}
        assert [(f.domain, f.name) for f in model.functions] == [("specdet", PLUGIN_OP[exported.name])]
    else:
        assert specdet_ops == set() and not model.functions


def test_no_float64_tensors(exported):
    """Constants (the matmul lowering's DFT matrices above all) are stored in float32, the graph's precision.

    Together with the validation against PyTorch at export (see the manifest
    test) and the photos scored below, in every FFT mode of both models.
    """
    model = onnx.load(str(exported.onnx))
    doubles = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.DOUBLE]
    for nodes in (model.graph.node, *(f.node for f in model.functions)):
        doubles += [n.output[0] for n in nodes if n.op_type == "Constant"
                    and any(a.t.data_type == onnx.TensorProto.DOUBLE for a in n.attribute)]
        doubles += [n.output[0] for n in nodes if n.op_type == "Cast"
                    and any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in n.attribute)]
    assert doubles == []


def test_onnx_detector_scores_real_photos_like_the_checkpoint(exported, photos, torch_scores):
    detector = Detector(exported.onnx)
    assert detector.backend == "onnxruntime"
    assert detector.threshold == 0.5
    scores = detector.predict(photos)  # 6 photos: batches of MAX_BATCH and 2
    expected = torch_scores[exported.name]
    assert scores.shape == expected.shape == (len(photos),)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
    assert np.ptp(expected) > 1e-3  # the photos get different scores: the comparison means something
    np.testing.assert_allclose(detector.predict(photos[:1]), expected[:1], atol=1e-4, rtol=0)


def test_plain_state_dict_scores_like_its_checkpoint(checkpoints, photos, torch_scores):
    name = FROM_STATE_DICT[0]
    scores = Detector(_state_dict(checkpoints, name), arch=name).predict(photos)
    np.testing.assert_allclose(scores, torch_scores[name], atol=1e-6, rtol=0)


# --- errors: exit 2, one line on stderr, nothing written ---


def _assert_one_line_error(capsys, code: int, *fragments: str) -> str:
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert "error:" in err
    for fragment in fragments:
        assert fragment in err
    return err


def _written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".json", ".partial"))


def test_missing_checkpoint(tmp_path, capsys):
    absent = tmp_path / "absent.pth"
    code = cli.main([str(absent), "-o", str(tmp_path / "model.onnx")])
    _assert_one_line_error(capsys, code, f"checkpoint {absent} not found")
    assert _written(tmp_path) == []


def test_a_text_file_is_not_a_checkpoint(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("these are notes, not weights\n")
    code = cli.main([str(text)])
    _assert_one_line_error(capsys, code, "is not a readable checkpoint")
    assert _written(tmp_path) == []


def test_unknown_arch(checkpoints, tmp_path, capsys):
    output = tmp_path / "model.onnx"
    code = cli.main([str(_state_dict(checkpoints, "dual_branch_tiny")), "--arch", "resnet50", "-o", str(output)])
    _assert_one_line_error(capsys, code, "unknown architecture 'resnet50'", "dual_branch_tiny")
    code = cli.main([str(checkpoints["dual_branch_tiny"]), "--arch", "resnet50", "-o", str(output)])
    _assert_one_line_error(capsys, code, "holds a dual_branch_tiny model, not resnet50")
    assert _written(tmp_path) == []


def test_state_dict_without_arch(checkpoints, tmp_path, capsys):
    code = cli.main([str(_state_dict(checkpoints, "rine_ssca_tiny")), "-o", str(tmp_path / "model.onnx")])
    _assert_one_line_error(capsys, code, "pass --arch")
    assert _written(tmp_path) == []


def test_incompatible_state_dict(checkpoints, tmp_path, capsys):
    state_dict = _state_dict(checkpoints, "dual_branch_tiny")
    code = cli.main([str(state_dict), "--arch", "rine_ssca_tiny", "-o", str(tmp_path / "model.onnx")])
    _assert_one_line_error(capsys, code, "does not fit RineSSCA", "check --arch")
    assert _written(tmp_path) == []


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-batch", "0"], "--max-batch: 0 is out of range: give a whole number from 1"),
        (["--opset", "16"], "--opset: 16 is out of range: give a whole number from 17"),
    ],
    ids=["max-batch-0", "opset-16"],
)
def test_bad_flags(checkpoints, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as info:  # refused while parsing, before anything is loaded
        cli.main([str(checkpoints["rine_ssca_tiny"]), "-o", str(tmp_path / "model.onnx"), *flags])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err
    assert _written(tmp_path) == []


def test_unknown_fft_mode_is_an_argparse_error(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([str(checkpoints["rine_ssca_tiny"]), "--fft", "cufft"])
    assert info.value.code == 2
    assert "invalid choice: 'cufft'" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(SpecdetError, match="not found"):
        cli.main([str(tmp_path / "absent.pth"), "--debug"])


# --- a failed export leaves neither the ONNX file nor its manifest ---


def _trace_copying(source: Path):
    """A stand-in for the exporter's trace that writes ``source`` (an ONNX file exported before)."""

    def trace(module, path, *args, **kwargs):
        shutil.copyfile(source, path)

    return trace


def test_failed_validation_leaves_no_onnx_and_no_manifest(export_once, checkpoints, tmp_path, capsys, monkeypatch):
    # The "exporter" writes the other detector's graph: same inputs and
    # outputs, other scores. Validation must refuse it and clean up.
    other = export_once("dual_branch_tiny", "dft")
    monkeypatch.setattr(export_onnx_module, "_trace", _trace_copying(other.onnx))
    output = tmp_path / "model.onnx"
    code = cli.main([str(checkpoints["rine_ssca_tiny"]), "-o", str(output), "--max-batch", str(MAX_BATCH)])
    _assert_one_line_error(capsys, code, "output 'logit' differs from PyTorch", "try another --fft mode")
    assert list(tmp_path.iterdir()) == []


def test_failed_manifest_write_removes_the_onnx_file(export_once, checkpoints, tmp_path, capsys, monkeypatch):
    def refuse(manifest, path):
        raise SpecdetError(f"cannot write the manifest into {path}")

    same = export_once("rine_ssca_tiny", "matmul")
    monkeypatch.setattr(export_onnx_module, "_trace", _trace_copying(same.onnx))  # the right graph: validation passes
    monkeypatch.setattr(artifact.Manifest, "write", refuse)
    output = tmp_path / "model.onnx"
    code = cli.main([str(checkpoints["rine_ssca_tiny"]), "-o", str(output), "--max-batch", str(MAX_BATCH)])
    _assert_one_line_error(capsys, code, "cannot write the manifest")
    assert list(tmp_path.iterdir()) == []

"""``detect-build``: engines built ahead of time on the CPU with TensorRT-RTX, and the tensorrt runtime backend.

Building needs the ``tensorrt_rtx`` package (the ``test`` extra installs it)
but no GPU. Running an engine needs a GPU: those tests are marked ``gpu`` and
skip without one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import tiny_exports
from specdet import tensorrt as trt_plugins
from specdet.errors import SpecdetError
from specdet.export import build_cli, engine, engine_stages
from specdet.files import file_sha256
from specdet.manifest import Manifest, engine_sidecar

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'specdet[rtx]')")
pytestmark = pytest.mark.tensorrt

CASES = [(arch, fft, p) for arch in ("dual_branch_tiny", "rine_ssca_tiny") for fft in ("matmul", "plugin")
         for p in ("fp32", "fp16")]
_built: dict[tuple, Path] = {}


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def built(arch: str, fft: str, precision: str) -> Path:
    key = (arch, fft, precision)
    if key not in _built:
        source = tiny_exports.exported(arch, fft, precision)
        result = engine.build_engine(source, backend="tensorrt-rtx")
        _built[key] = result.path
    return _built[key]


def _weight_bytes(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(len(i.raw_data) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)


@pytest.mark.parametrize("arch, fft, precision", CASES, ids=["-".join(c) for c in CASES])
def test_engine_io_matches_the_manifest(arch, fft, precision):
    path = built(arch, fft, precision)
    manifest = Manifest.read(path).to_dict()
    onnx_manifest = Manifest.read(tiny_exports.exported(arch, fft, precision)).to_dict()
    assert engine_sidecar(path).is_file() and engine_sidecar(path).name == path.name + ".json"
    assert manifest["inputs"] == onnx_manifest["inputs"]
    assert manifest["outputs"] == onnx_manifest["outputs"]
    assert manifest["inputs"] == [{"name": "image", "shape": ["batch", 3, 224, 224], "dtype": "float32"}]
    assert [o["dtype"] for o in manifest["outputs"]] == ["float32", "float32"]
    assert manifest["precision"] == precision
    info = manifest["engine"]
    assert info["library"] == "tensorrt_rtx" and info["library_version"] == trt.__version__
    assert info["strongly_typed"]
    assert info["profile"]["batch"] == {"min": 1, "opt": tiny_exports.MAX_BATCH, "max": tiny_exports.MAX_BATCH}
    assert info["profile"]["shapes"]["image"]["max"] == [tiny_exports.MAX_BATCH, 3, 224, 224]
    assert info["compute_capabilities"] and "7.5" not in info["compute_capabilities"]
    assert manifest["parent"]["path"] == str(tiny_exports.exported(arch, fft, precision).resolve())
    if fft == "plugin":  # no plugin library loaded: the fallback body is inlined
        assert info["plugin_ops_stripped"] == [] and len(info["plugin_ops_inlined"]) == 1
    assert path.stat().st_size == info["size_bytes"]


@pytest.mark.parametrize("arch", ["dual_branch_tiny", "rine_ssca_tiny"])
def test_fp16_engine_weights_are_fp16(arch):
    """The FP16 engine is smaller than the FP32 one by at least half the FP32 file's weights.

    Engines also hold kernels and metadata (most of a tiny engine), and
    TensorRT-RTX 1.7 engines of the tiny models shrink by 0.8 to 1.1 times
    the FP32 weights: they seem to keep the weights in more than one form.
    """
    fp32, fp16 = built(arch, "matmul", "fp32"), built(arch, "matmul", "fp16")
    weights = _weight_bytes(tiny_exports.exported(arch, "matmul"))
    saved = fp32.stat().st_size - fp16.stat().st_size
    assert 0.45 * weights < saved < 1.3 * weights, (fp32.stat().st_size, fp16.stat().st_size, weights)


def test_profile_timing_cache_and_targets(tmp_path):
    source = tiny_exports.exported("rine_ssca_tiny", "matmul")
    cache = tmp_path / "timing.cache"
    out = tmp_path / "r.engine"
    result = engine.build_engine(source, out, batch=(1, 2, 3), timing_cache=cache, compute_capabilities=["8.6"])
    # TensorRT-RTX tunes kernels at run time: its timing-cache calls are no-ops, so the flag is recorded as ignored.
    assert not cache.exists()
    assert Manifest.read(out).engine.details["timing_cache"].startswith("ignored")
    assert result.profile["batch"] == {"min": 1, "opt": 2, "max": 3}
    assert Manifest.read(out).batch.max == 3
    assert result.compute_capabilities == ["8.6"]
    again = engine.build_engine(source, out, batch=(1, 2, 3), compute_capabilities=["sm86"])
    assert again.path == out and again.compute_capabilities == ["8.6"]


@pytest.mark.parametrize("text, expected", [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), ("1:32", (1, 8, 32)),
                                            ("2:3", (2, 3, 3))])
def test_parse_batch(text, expected):
    assert engine.parse_batch(text) == expected


@pytest.mark.parametrize("text", ["0:1:2", "8:4:16", "a:b:c", "1:2:3:4"])
def test_parse_batch_refuses(text):
    with pytest.raises(SpecdetError, match="--batch"):
        engine.parse_batch(text)


def test_batch_outside_the_onnx_range(tmp_path):
    with pytest.raises(SpecdetError, match="outside the ONNX file's batch range"):
        engine.build_engine(tiny_exports.exported("rine_ssca_tiny", "matmul"), tmp_path / "x.engine", batch=(1, 4, 64))


def test_unknown_compute_capability(tmp_path):
    with pytest.raises(SpecdetError, match="unknown compute capability '9.0'.*8.0"):
        engine.build_engine(tiny_exports.exported("rine_ssca_tiny", "matmul"), tmp_path / "x.engine",
                            compute_capabilities=["9.0"])


def _save(model: onnx.ModelProto, target: Path) -> Path:
    """``model`` (loaded from an export, so carrying its manifest) saved as ``target``."""
    onnx.save(model, str(target))
    return target


def test_strip_plugin_fallbacks():
    model = onnx.load(str(tiny_exports.exported("dual_branch_tiny", "plugin")))
    assert [f.name for f in model.functions] == ["BandSplit"]
    op = trt_plugins.PluginCreator("BandSplit", "2", "specdet")
    assert trt_plugins.strip_plugin_fallbacks(model, [op, trt_plugins.PluginCreator("Other", "1", "")]) == ["BandSplit"]
    assert list(model.functions) == []
    (node,) = trt_plugins.plugin_nodes(model)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_version"] == b"2" and attrs["plugin_namespace"] == b"specdet"
    trt_plugins.check_plugin_ops(model, ["BandSplit"], "m.onnx")
    with pytest.raises(SpecdetError, match="specdet.BandSplit without a fallback body.*--plugins"):
        trt_plugins.check_plugin_ops(model, [], "m.onnx")


def test_manifest_names_plugin_libraries_by_file_name_and_hash(tmp_path, monkeypatch):
    """Each library as {name, sha256, ops}: no path of the build machine, which the runtime could not use."""
    library = tmp_path / "build" / "lib" / "libspecdet_trt_plugins.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"a stand-in for the plugin library: only its bytes matter here")
    creators = [trt_plugins.PluginCreator("BandSplit", "1", "specdet"),
                trt_plugins.PluginCreator("SpectrumMagnitudeMean", "1", "specdet")]
    monkeypatch.setattr(trt_plugins, "load_plugin_libraries", lambda trt, paths: {str(p): creators for p in paths})
    out = tmp_path / "p.engine"
    result = engine.build_engine(tiny_exports.exported("rine_ssca_tiny", "matmul"), out, plugins=[library])
    expected = [{"name": "libspecdet_trt_plugins.so", "sha256": hashlib.sha256(library.read_bytes()).hexdigest(),
                 "ops": ["BandSplit", "SpectrumMagnitudeMean"]}]
    assert Manifest.read(out).to_dict()["engine"]["plugins"] == expected and result.plugins == expected
    assert str(library.parent) not in engine_sidecar(out).read_text()


def test_plugin_op_without_its_library(tmp_path):
    source = tiny_exports.exported("dual_branch_tiny", "plugin")
    model = onnx.load(str(source))
    trt_plugins.strip_plugin_fallbacks(model, ["BandSplit"])
    stripped = _save(model, tmp_path / "stripped.onnx")
    with pytest.raises(SpecdetError, match="BandSplit.*no loaded plugin library provides"):
        engine.build_engine(stripped, tmp_path / "s.engine")


def test_plugin_library_that_is_not_one(tmp_path):
    bogus = tmp_path / "libnot_a_plugin.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(SpecdetError, match="cannot load plugin library"):
        engine.build_engine(tiny_exports.exported("dual_branch_tiny", "plugin"), tmp_path / "p.engine",
                            plugins=[bogus])


def test_unsupported_onnx_op_is_named(tmp_path):
    source = tiny_exports.exported("rine_ssca_tiny", "matmul")
    model = onnx.load(str(source))
    # Route the logit through an op of an unknown domain, which no importer or plugin handles.
    producer = next(n for n in model.graph.node if "logit" in n.output)
    producer.output[0] = "logit_raw"
    model.graph.node.append(helper.make_node("Frobnicate", ["logit_raw"], ["logit"], name="mystery", domain="acme"))
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == "logit" and node.name != "mystery":
                node.input[i] = "logit_raw"
    model.opset_import.append(helper.make_opsetid("acme", 1))
    odd = _save(model, tmp_path / "odd.onnx")
    with pytest.raises(SpecdetError, match="ONNX op Frobnicate \\(node mystery\\) is not supported by TensorRT-RTX"):
        engine.build_engine(odd, tmp_path / "odd.engine")


def test_workspace_errors_are_recognised():
    class Logger:
        errors = ["[memory] Requested amount of GPU memory exceeds the workspace limit"]

    error = engine_stages._build_error(Logger(), trt, 1)
    assert "not enough workspace" in str(error) and "--workspace 1 MB" in str(error)


def test_cli_builds_and_reports(tmp_path, capsys):
    out = tmp_path / "cli.engine"
    code = build_cli.main([str(tiny_exports.exported("rine_ssca_tiny", "matmul", "fp16")), "-o", str(out),
                           "--batch", "1:2:4", "--workspace", "512"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert f"wrote {out}" in stdout and "fp16" in stdout and "batch 1:2:4" in stdout
    assert json.loads(engine_sidecar(out).read_text())["engine"]["workspace_mb"] == 512


@pytest.mark.parametrize("argv, message", [
    (["/nonexistent.onnx"], "not found"),
    (["{onnx}", "-o", "x.trt"], "must end in .engine"),
    (["{onnx}", "--batch", "1:9"], "outside the ONNX file's batch range"),
])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    source = str(tiny_exports.exported("rine_ssca_tiny", "matmul"))
    code = build_cli.main([a.format(onnx=source) for a in argv])
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_onnx_without_manifest(tmp_path, capsys):
    model = onnx.load(str(tiny_exports.exported("rine_ssca_tiny", "matmul")))
    del model.metadata_props[:]
    lone = _save(model, tmp_path / "lone.onnx")
    assert build_cli.main([str(lone)]) == 2
    assert "carries no specdet manifest" in capsys.readouterr().err


# --- the tensorrt runtime backend ---


@pytest.mark.skipif(_has_gpu(), reason="checks the error on machines without a GPU")
def test_runner_without_a_gpu_says_so():
    from specdet.runtime import Detector

    with pytest.raises(SpecdetError, match="needs an NVIDIA GPU"):
        Detector(built("rine_ssca_tiny", "matmul", "fp32"))


def test_runner_refuses_an_engine_of_another_library_version(tmp_path):
    from specdet.runtime import create_runner

    path = tmp_path / "old.engine"
    shutil.copy(built("rine_ssca_tiny", "matmul", "fp32"), path)
    manifest = Manifest.read(built("rine_ssca_tiny", "matmul", "fp32"))
    dataclasses.replace(manifest, engine=dataclasses.replace(manifest.engine, library_version="1.0.0.1")).write(path)
    with pytest.raises(SpecdetError, match="built with tensorrt_rtx 1.0.0.1; this is .*rebuild"):
        create_runner(path)


def test_engine_suffix_selects_the_tensorrt_backend():
    from specdet.runtime.base import default_backend

    assert default_backend("m.engine") == "tensorrt" and default_backend("m.plan") == "tensorrt"


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="running an engine needs an NVIDIA GPU")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 1e-2)])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_engine_scores_like_onnxruntime(precision, tolerance, cuda_graphs):
    import threading

    from specdet.images import sample_photos
    from specdet.runtime import RunnerOptions, create_runner
    from specdet.runtime.preprocess import preprocess
    from specdet.runtime.tensorrt_runner import TensorRTRunner

    onnx_file = tiny_exports.exported("dual_branch_tiny", "matmul", precision)
    reference = create_runner(onnx_file)
    runner = TensorRTRunner(built("dual_branch_tiny", "matmul", precision), RunnerOptions(cuda_graphs=cuda_graphs))
    batch = preprocess([a for _, a in sample_photos()][: tiny_exports.MAX_BATCH], reference.info.preprocessing)
    expected = reference.infer(batch)["probability"]
    for size in (1, tiny_exports.MAX_BATCH, 2):
        got = runner.infer(batch[:size])["probability"]
        np.testing.assert_allclose(got, expected[:size], atol=tolerance)
    results = {}

    def worker(i):
        results[i] = runner.infer(batch)["probability"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for value in results.values():
        np.testing.assert_allclose(value, expected, atol=tolerance)
    runner.close()  # every thread's context and buffers, then the engine
    runner.close()
    with pytest.raises(SpecdetError, match="is closed"):
        runner.infer(batch)
    reference.close()


@pytest.mark.skipif(not __import__("os").environ.get("SPECDET_TRT_PLUGINS_LIB"),
                    reason="SPECDET_TRT_PLUGINS_LIB not set: the C++ plugin library is built where TensorRT headers are")
def test_cli_uses_the_plugin_library(tmp_path, capsys):
    """With our library loaded, the fallback is stripped and the plugin takes the node (no DFT matrices left)."""
    import os

    library = os.environ["SPECDET_TRT_PLUGINS_LIB"]
    out = tmp_path / "plugin.engine"
    # The CLI runs the build in a child with TensorRT-RTX's library link (see build_cli._rtx_plugin_env).
    assert build_cli.main([str(tiny_exports.exported("dual_branch_tiny", "plugin")), "-o", str(out),
                           "--plugins", library]) == 0
    info = Manifest.read(out).to_dict()["engine"]
    assert info["plugin_ops_stripped"] == ["BandSplit"] and info["plugin_ops_inlined"] == []
    (plugin,) = info["plugins"]
    assert set(plugin) == {"name", "sha256", "ops"} and "BandSplit" in plugin["ops"]
    assert plugin["name"] == os.path.basename(library) and plugin["sha256"] == file_sha256(library)
    assert out.stat().st_size < built("dual_branch_tiny", "plugin", "fp32").stat().st_size


def test_int8_qdq_file_builds_with_explicit_quantisation():
    # Biases stay FP32 in the QDQ file: TensorRT-RTX rejects DequantizeLinear of ORT's INT32 biases.
    path = built("dual_branch_tiny", "matmul", "int8")
    info = Manifest.read(path).to_dict()
    assert info["precision"] == "int8" and info["engine"]["strongly_typed"]
    assert path.stat().st_size > 0

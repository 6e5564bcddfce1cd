"""detect-triton: the repositories it writes, parsed with Triton's own protobuf definitions, and served for real.

The onnxruntime and tensorrt backends are not in pytriton's server, so those
configs are checked as files; the Python-backend detector variant runs on
pytriton's ``tritonserver`` and must score as ``Detector.predict_files`` does.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import tiny_exports
from specdet.errors import SpecdetError
from specdet.files import file_sha256
from specdet.manifest import Manifest
from specdet.runtime import Detector
from specdet.runtime.preprocess import image_pixels
from specdet.serve import triton_cli
from specdet.serve.repository import Options, write_repository
from specdet.serve.server import Endpoints, TritonServer, free_ports
from triton_support import in_group, photos

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
ARCHS = ("dual_branch_tiny", "rine_ssca_tiny")
STRING, FP32 = model_config_pb2.TYPE_STRING, model_config_pb2.TYPE_FP32


def _onnx(arch: str) -> Path:
    return tiny_exports.exported(arch, "matmul")


def _fake_engine(arch: str, folder: Path, library: str = "tensorrt") -> Path:
    """An 'engine' file (bytes, not an engine) with a real engine manifest beside it: enough for its config."""
    engine = folder / f"{arch}.engine"
    engine.write_bytes(b"not an engine, only its manifest is read")
    data = Manifest.read(_onnx(arch)).to_dict()
    data["engine"] = {"library": library, "library_version": "10.9.0.34", "compute_capabilities": None,
                      "build_device": "9.0", "sha256": file_sha256(engine), "size_bytes": engine.stat().st_size,
                      "plugins": [{"name": "libspecdet_trt_plugins.so", "sha256": "a" * 64, "ops": ["rfft2"]}]}
    Manifest.from_dict(data).write(engine)
    return engine


def _configs(repository: Path) -> dict[str, model_config_pb2.ModelConfig]:
    """Every config.pbtxt of ``repository``, parsed by Triton's definitions (an unknown field is an error)."""
    found = {}
    for path in repository.glob("*/config.pbtxt"):
        found[path.parent.name] = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return found


def _parameters(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def test_the_preprocess_model_takes_its_own_instance_count(tmp_path):
    """--preprocess-instances: the decoding model's processes, apart from the detector's and postprocess's."""
    artifact = _onnx(ARCHS[0])
    repository = write_repository([artifact], tmp_path / "repo", Options(instances=2, preprocess_instances=12))
    counts = {name: [g.count for g in config.instance_group] for name, config in _configs(repository).items()}
    assert counts == {"specdet": [], "specdet_preprocess": [12], "specdet_detector": [2], "specdet_postprocess": [2]}


@pytest.mark.parametrize("detector", ["onnxruntime", "tensorrt", "python"])
@pytest.mark.parametrize("arch", ARCHS)
def test_configs_follow_the_manifest(arch, detector, tmp_path):
    artifact = _fake_engine(arch, tmp_path) if detector == "tensorrt" else _onnx(arch)
    manifest = Manifest.read(artifact)
    repository = write_repository([artifact], tmp_path / "repo", Options(detector=detector, instances=2,
                                                                           queue_delay_us=250))
    configs = _configs(repository)
    assert set(configs) == {"specdet", "specdet_preprocess", "specdet_detector", "specdet_postprocess"}
    batch, crop, spec = manifest.batch, manifest.preprocessing["crop"], manifest.input
    for name, config in configs.items():
        assert config.name == name and config.max_batch_size == batch.max
        assert (repository / name / "1").is_dir()
        if name != "specdet":  # ensembles have no batcher or instances of their own
            assert list(config.dynamic_batching.preferred_batch_size) == [batch.max]
            assert config.dynamic_batching.max_queue_delay_microseconds == 250
            assert [(g.kind, g.count) for g in config.instance_group] == [
                (model_config_pb2.ModelInstanceGroup.KIND_GPU if name.endswith("detector") and detector == "tensorrt"
                 else model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)]

    ensemble = configs["specdet"]
    assert ensemble.platform == "ensemble"
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [("image", STRING, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [
        ("probability", FP32, [1]), ("logit", FP32, [1]), ("label", STRING, [1])]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["specdet_preprocess", "specdet_detector", "specdet_postprocess"]
    assert dict(steps[1].input_map) == {spec.name: "pixels"}

    preprocess = configs["specdet_preprocess"]
    assert preprocess.backend == "python"
    assert [(t.name, t.data_type, list(t.dims)) for t in preprocess.input] == [("image", STRING, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in preprocess.output] == [("pixels", FP32, [3, crop, crop])]
    parameters = _parameters(preprocess)
    assert parameters["specdet_role"] == "preprocess"
    assert Manifest.from_dict(json.loads(parameters["specdet_manifest"])) == manifest
    assert all(Path(p).is_dir() for p in json.loads(parameters["specdet_site_dirs"]))

    model = configs["specdet_detector"]
    assert [(t.name, t.data_type, list(t.dims)) for t in model.input] == [(spec.name, FP32, list(spec.shape[1:]))]
    assert [(t.name, t.data_type, list(t.dims)) for t in model.output] == [("logit", FP32, [1]), ("probability", FP32, [1])]
    assert [(w.batch_size, dict(w.inputs)[spec.name].zero_data) for w in model.model_warmup] == [(batch.min, True)]
    folder = repository / "specdet_detector" / "1"
    if detector == "python":
        assert model.backend == "python" and _parameters(model)["specdet_role"] == "detector"
        assert (folder / "model.py").is_file()
    else:
        assert model.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[detector]
        assert all(list(t.reshape.shape) == [] and t.HasField("reshape") for t in model.output)
    copied = folder / ("model.plan" if detector == "tensorrt" else "model.onnx")
    assert copied.read_bytes() == artifact.read_bytes()
    assert Manifest.read(copied) == manifest  # an engine's sidecar comes along

    postprocess = configs["specdet_postprocess"]
    assert [t.name for t in postprocess.input] == ["logit", "probability"]
    assert [(t.name, t.data_type) for t in postprocess.output] == [("logit", FP32), ("probability", FP32),
                                                                   ("label", STRING)]
    assert float(_parameters(postprocess)["specdet_threshold"]) == manifest.threshold


def test_tensorrt_fp16_accelerator_and_gpu(tmp_path):
    repository = write_repository([_onnx("dual_branch_tiny")], tmp_path / "repo",
                                  Options(gpu=True, tensorrt_fp16=True))
    model = _configs(repository)["specdet_detector"]
    assert model.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (accelerator,) = model.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}
    with pytest.raises(SpecdetError, match="--gpu"):
        write_repository([_onnx("dual_branch_tiny")], tmp_path / "cpu", Options(tensorrt_fp16=True))


def test_engine_readme_names_container_and_plugin(tmp_path):
    repository = write_repository([_fake_engine("dual_branch_tiny", tmp_path)], tmp_path / "repo")
    readme = (repository / "README.md").read_text()
    assert "nvcr.io/nvidia/tritonserver:25.03-py3" in readme  # TensorRT 10.9
    assert "--backend-config=tensorrt,plugins=/path/to/libspecdet_trt_plugins.so" in readme
    assert "LD_PRELOAD=/path/to/libspecdet_trt_plugins.so" in readme


def test_several_artifacts_get_their_own_names(tmp_path):
    artifacts = [_onnx(arch) for arch in ARCHS]
    repository = write_repository(artifacts, tmp_path / "repo", Options(name="det"))
    stems = [a.name.split(".")[0] for a in artifacts]
    assert set(_configs(repository)) == {f"det_{s}{step}" for s in stems
                                         for step in ("", "_preprocess", "_detector", "_postprocess")}


def test_refusals(tmp_path, capsys):
    onnx = _onnx("dual_branch_tiny")
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert triton_cli.main([str(onnx), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").is_file()
    assert triton_cli.main([str(onnx), "-o", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "specdet" / "config.pbtxt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left

    rtx = _fake_engine("dual_branch_tiny", tmp_path, library="tensorrt_rtx")
    for args, message in [([str(rtx)], "does not run: use --detector python"),
                          ([str(onnx), "--detector", "tensorrt"], "build an engine"),
                          ([str(onnx), "--max-batch", "64"], "outside"),
                          ([str(onnx), str(onnx)], "both be served"),
                          ([str(tmp_path / "model.pth")], "export a checkpoint first")]:
        assert triton_cli.main([*args, "-o", str(tmp_path / "new")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()


def test_encoded_bytes_preprocess_as_the_file():
    spec = Manifest.read(_onnx("dual_branch_tiny")).preprocessing
    for path in photos(3):
        assert np.array_equal(image_pixels(path.read_bytes(), spec)[0], image_pixels(path, spec)[0])


# --- served for real: the Python-backend detector on pytriton's tritonserver ---


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Both tiny detectors in one repository (python detectors), on a running server; stopped after the module."""
    artifacts = [_onnx(arch) for arch in ARCHS]
    # A long queue delay, so that concurrent requests share one dynamic batch (the bad-image test).
    repository = write_repository(artifacts, tmp_path_factory.mktemp("triton") / "repo",
                                  Options(detector="python", queue_delay_us=300_000))
    server = TritonServer(repository, Endpoints("127.0.0.1", *free_ports(3)))
    server.start()
    try:
        yield server, {arch: (f"specdet_{a.name.split('.')[0]}", a) for arch, a in zip(ARCHS, artifacts)}
    finally:
        pid = server.process.pid
        server.stop()
        assert not in_group(pid)


def scores(protocol: str, url: str, model: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """One request of ``files`` (a batch) over ``protocol`` ("http" or "grpc"): probabilities and labels."""
    client = importlib.import_module(f"tritonclient.{protocol}")
    data = np.array([[f.read_bytes()] for f in files], dtype=np.object_)
    tensor = client.InferInput("image", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    with client.InferenceServerClient(url) as connection:
        result = connection.infer(model, [tensor])
    return result.as_numpy("probability").reshape(-1), result.as_numpy("label").reshape(-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_served_scores_match_the_detector(served, arch):
    server, models = served
    model, artifact = models[arch]
    files = photos(4)
    with Detector(artifact) as detector:
        expected = detector.predict_files(files)
    for probabilities, labels in (scores("http", server.endpoints.http_url, model, files),
                                  scores("grpc", server.endpoints.grpc_url, model, files)):
        assert np.abs(probabilities - [r.probability for r in expected]).max() <= 1e-4
        assert [label.decode() for label in labels] == [r.label for r in expected]


def test_a_bad_image_fails_only_its_own_request(served, tmp_path):
    from tritonclient.utils import InferenceServerException

    server, models = served
    model, artifact = models["dual_branch_tiny"]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a JPEG")
    requests = [[p] for p in photos(3)] + [[bad]]

    def one(files):
        try:
            return scores("http", server.endpoints.http_url, model, files)[0][0]
        except InferenceServerException as err:
            return str(err)

    # Sent together, the four wait in one dynamic batch (queue delay 0.3 s): only the bad one fails.
    executions = _executions(server, f"{model}_preprocess")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, requests))
    assert _executions(server, f"{model}_preprocess") - executions < len(requests)  # some shared an execution
    with Detector(artifact) as detector:
        expected = [r.probability for r in detector.predict_files(photos(3))]
    assert np.abs(np.array(answers[:3], dtype=np.float64) - expected).max() <= 1e-4
    assert "not an image" in answers[3]



def _executions(server: TritonServer, model: str) -> int:
    """How many times ``model`` has run (a dynamic batch of several requests is one run)."""
    import tritonclient.http as client

    with client.InferenceServerClient(server.endpoints.http_url) as http:
        return http.get_inference_statistics(model)["model_stats"][0]["execution_count"]


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "", "x" * 201])
def test_a_name_that_is_not_one_folder_is_refused(name, tmp_path, capsys):
    assert triton_cli.main([str(_onnx("dual_branch_tiny")), "-o", str(tmp_path / "repo"), "--name", name]) == 2
    err = capsys.readouterr().err
    assert "start with a letter or digit" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written, beside the repository or above it


@pytest.mark.parametrize("where", ["the output", "a folder below the output", "an engine's sidecar in the output"])
def test_force_never_deletes_an_input(where, tmp_path, capsys):
    out = tmp_path / "repo"
    folder = out / "models" if where == "a folder below the output" else out
    folder.mkdir(parents=True)
    if where == "an engine's sidecar in the output":  # the engine elsewhere, its manifest inside the output
        engine = _fake_engine("dual_branch_tiny", tmp_path)
        engine.with_name(engine.name + ".json").rename(folder / "sidecar.json")
        (tmp_path / f"{engine.name}.json").symlink_to(folder / "sidecar.json")
        artifact, kept = engine, folder / "sidecar.json"
    else:
        artifact = kept = folder / "tiny.onnx"
        shutil.copyfile(_onnx("dual_branch_tiny"), artifact)
    before = kept.read_bytes()
    assert triton_cli.main([str(artifact), "-o", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "writing the repository there would delete it" in err and err.count("\n") == 1, err
    assert kept.read_bytes() == before


def _external(tmp_path: Path, location: str) -> Path:
    import onnx

    folder = tmp_path / "model"
    (folder / location).parent.mkdir(parents=True)
    path = folder / "tiny.onnx"
    onnx.save(onnx.load(str(_onnx("dual_branch_tiny"))), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location=location, size_threshold=256)
    return path


@pytest.mark.parametrize("detector", ["onnxruntime", "python"])
def test_external_data_is_copied_beside_the_model(detector, tmp_path):
    artifact = _external(tmp_path, "weights/tiny.data")
    repository = write_repository([artifact], tmp_path / "repo", Options(detector=detector))
    version = repository / "specdet_detector" / "1"
    copied = version / "weights" / "tiny.data"
    assert copied.read_bytes() == (artifact.parent / "weights" / "tiny.data").read_bytes()
    with Detector(version / "model.onnx", backend="onnxruntime") as served, \
            Detector(_onnx("dual_branch_tiny"), backend="onnxruntime") as reference:
        files = photos(2)
        np.testing.assert_array_equal(served.predict(files), reference.predict(files))


def test_external_data_named_like_a_repository_file_is_refused(tmp_path, capsys):
    artifact = _external(tmp_path, "model.py")
    assert triton_cli.main([str(artifact), "-o", str(tmp_path / "repo"), "--detector", "python"]) == 2
    err = capsys.readouterr().err
    assert "a name the repository uses for its own files" in err and err.count("\n") == 1, err


def test_hostile_external_data_is_refused(tmp_path, capsys):
    artifact = _external(tmp_path, "tiny.data")
    elsewhere = tmp_path / "elsewhere.data"
    os.replace(artifact.parent / "tiny.data", elsewhere)
    (artifact.parent / "tiny.data").symlink_to(elsewhere)
    assert triton_cli.main([str(artifact), "-o", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "outside the model's folder" in err and err.count("\n") == 1, err
    assert not (tmp_path / "repo").exists()

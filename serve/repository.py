"""``detect-triton``'s writer: a Triton model repository serving specdet artifacts, one ensemble per artifact.

The contract a client sees (one definition: ``detect-serve`` serves a
repository written here): the ensemble takes ``image`` (TYPE_STRING, dims
[1], batched: each element one encoded image file) and returns
``probability`` and ``logit`` (TYPE_FP32, dims [1]) and ``label``
(TYPE_STRING, dims [1]: "fake" at or above the manifest's threshold, else
"real"). Its three steps are models of their own:

    PREFIX_preprocess   Python backend: bytes -> the artifact's input tensor (specdet.runtime.preprocess)
    PREFIX_detector     onnxruntime_onnx | tensorrt_plan | Python backend (specdet's runtime on the artifact)
    PREFIX_postprocess  Python backend: logit, probability -> float32, and the label by the threshold

The label is computed in its own small step so that the three detector
variants have the same inputs and outputs (the manifest's) and the ensemble
is the same for all of them. PREFIX is the ensemble's name: ``--name``
(default ``specdet``) for one artifact, ``NAME_<stem>`` for each of several.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specdet import cli
from specdet.errors import SpecdetError
from specdet.files import check_output, temporary_folder
from specdet.manifest import ENGINE_SUFFIXES, ONNX_SUFFIX, Manifest, engine_sidecar
from specdet.onnx_external import external_data_files
from specdet.serve import contract as names
from specdet.serve.pbtxt import Enum, dumps
from specdet.serve.readme import repository_readme

# --detector choice -> the detector model's Triton platform or backend.
DETECTORS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "python": "python"}
DEFAULT_NAME = "specdet"
TEMPLATE = Path(__file__).resolve().parent / "templates" / "model.py"
# What a detector's version folder holds besides an ONNX file's external data.
_VERSION_FILES = ("model.onnx", "model.plan", "model.plan.json", "model.py")

# A model's name: a folder of the repository, so never "." or ".." or hidden; Triton's URLs take it too.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")

# numpy dtype names (the manifest's) -> Triton's.
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclasses.dataclass(frozen=True)
class Options:
    """How to serve: the same for every artifact of one repository."""

    detector: str | None = None  # a DETECTORS key; None: onnxruntime for .onnx, tensorrt for engines
    name: str = DEFAULT_NAME  # the ensemble (one artifact), or the prefix of each (several)
    instances: int = 1  # instances of each model
    # Instances of the preprocess model, which decodes the images (None: ``instances``). Triton runs each
    # Python-backend instance in its own process: this is the Triton side's input pipeline, one per CPU core
    # when decoding is what limits a GPU model.
    preprocess_instances: int | None = None
    gpu: bool = False  # KIND_GPU for the onnxruntime and python detectors (tensorrt is always on the GPU)
    max_batch: int | None = None  # max_batch_size; None: the manifest's batch max
    queue_delay_us: int = 100  # dynamic batching: how long a request waits for others to batch with
    tensorrt_fp16: bool = False  # onnxruntime detector: the TensorRT execution accelerator in FP16


def add_batching_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-batch``, ``--queue-delay-us`` and ``--instances``: :class:`Options`' fields as detect-triton and
    detect-serve take them."""
    parser.add_argument("--max-batch", type=cli.BATCH, help="largest dynamic batch, max_batch_size (default: the "
                        "artifact's batch max)")
    parser.add_argument("--queue-delay-us", type=cli.int_range(0), default=Options.queue_delay_us, metavar="US",
                        help=f"dynamic batching: the longest a request waits for others (default: "
                        f"{Options.queue_delay_us})")
    parser.add_argument("--instances", type=cli.int_range(1, 64), default=Options.instances, metavar="N",
                        help=f"instances of each model (default: {Options.instances})")
    parser.add_argument("--preprocess-instances", type=cli.int_range(1, 256), metavar="N",
                        help="instances of the preprocess model, each a process decoding images in parallel "
                        "(default: --instances); about one per CPU core when decoding limits a GPU model")


@dataclasses.dataclass(frozen=True)
class _Model:
    """One artifact's place in the repository."""

    artifact: Path
    manifest: Manifest
    prefix: str  # the ensemble's name; its steps are PREFIX_preprocess, ...
    detector: str  # a DETECTORS key
    max_batch: int
    external_data: tuple[str, ...] = ()  # the ONNX file's data files, relative to its folder: copied beside it


def write_repository(artifacts: Sequence[str | os.PathLike], output: str | os.PathLike, options: Options = Options(),
                     *, force: bool = False) -> Path:
    """Write the repository for ``artifacts`` (``.onnx`` files, ``.engine``/``.plan`` with their ``.json``) at
    ``output``, atomically: built beside it, then renamed. An existing non-empty ``output`` is replaced only
    with ``force``. Returns ``output``."""
    output = check_output(output, "model repository", folder=True, inputs=tuple(artifacts))
    models = plan(artifacts, options)
    _check_inputs_outside(models, output)
    if output.is_dir() and any(output.iterdir()) and not force:
        raise SpecdetError(f"{output} exists and is not empty: give a new folder, or --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    work = temporary_folder(output)
    try:
        for model in models:
            _write_model(work, model, options)
        (work / "README.md").write_text(repository_readme([(m.prefix, m.detector, m.manifest) for m in models]))
        _replace(work, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output


def plan(artifacts: Sequence[str | os.PathLike], options: Options) -> list[_Model]:
    """Read and check every artifact before anything is written; one line for the first problem."""
    if not artifacts:
        raise SpecdetError("no artifacts: give one .onnx file or engine or more")
    if options.detector is not None and options.detector not in DETECTORS:
        raise SpecdetError(f"unknown detector {options.detector!r}: choose one of {', '.join(DETECTORS)}")
    check_model_name(options.name)
    paths = [Path(a) for a in artifacts]
    prefixes = [options.name] if len(paths) == 1 else [f"{options.name}_{_stem(p)}" for p in paths]
    for prefix in prefixes:
        check_model_name(prefix)
        if prefixes.count(prefix) > 1:
            raise SpecdetError(f"two artifacts would both be served as {prefix}: give them different file names")
    return [_plan_one(path, prefix, options) for path, prefix in zip(paths, prefixes)]


def check_model_name(name: str) -> str:
    """``name`` if it can name a model (a folder of the repository); otherwise a one-line error."""
    if not MODEL_NAME.fullmatch(name):
        raise SpecdetError(f"model name {name!r}: start with a letter or digit, then letters, digits, '_', '-' and '.' "
                           "only (at most 200)")
    return name


def _check_inputs_outside(models: Sequence[_Model], output: Path) -> None:
    """Refuse an output folder that holds an input: writing the repository replaces the folder, input and all."""
    target = output.resolve()
    for model in models:
        folder = model.artifact.parent
        inputs = [model.artifact, *(folder / location for location in model.external_data)]
        if model.artifact.suffix.lower() != ONNX_SUFFIX:
            inputs.append(engine_sidecar(model.artifact))
        for source in inputs:
            if source.resolve().is_relative_to(target):
                raise SpecdetError(f"{source} is inside {output}: writing the repository there would delete it; "
                                   "give another -o folder")


def _stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.name.split(".")[0])


def _plan_one(artifact: Path, prefix: str, options: Options) -> _Model:
    suffix = artifact.suffix.lower()
    if suffix not in (ONNX_SUFFIX, *ENGINE_SUFFIXES):
        raise SpecdetError(f"{artifact.name}: Triton serves exported .onnx files and built .engine/.plan files; "
                           "export a checkpoint first (detect-export)")
    manifest = Manifest.read(artifact)
    detector = options.detector or ("onnxruntime" if suffix == ONNX_SUFFIX else "tensorrt")
    if detector == "onnxruntime" and suffix != ONNX_SUFFIX:
        raise SpecdetError(f"{artifact.name} is an engine: serve it with --detector tensorrt or python")
    if detector == "tensorrt" and suffix == ONNX_SUFFIX:
        raise SpecdetError(f"{artifact.name} is an ONNX file: build an engine (detect-build) for --detector tensorrt, "
                           "or use --detector onnxruntime or python")
    if detector == "tensorrt" and manifest.engine is not None and manifest.engine.library != "tensorrt":
        raise SpecdetError(f"{artifact.name} was built with {manifest.engine.library}, which Triton's tensorrt backend "
                           "does not run: use --detector python")
    if options.tensorrt_fp16 and not (detector == "onnxruntime" and options.gpu):
        raise SpecdetError("--tensorrt-fp16 is ONNX Runtime's TensorRT accelerator: it needs --detector onnxruntime "
                           "and --gpu")
    if detector != "python":
        for output in manifest.outputs:
            if output.dtype != "float32":
                raise SpecdetError(f"{artifact.name}'s output {output.name} is {output.dtype}: the Triton contract "
                                   "returns float32; re-export it (FP16 exports keep float32 outputs)")
    batch = manifest.batch
    max_batch = options.max_batch or batch.max
    if not batch.min <= max_batch <= batch.max:
        raise SpecdetError(f"--max-batch {max_batch} is outside {artifact.name}'s batch range {batch.min} to "
                           f"{batch.max}: give a number in it, or {_remake(artifact)}")
    data = tuple(external_data_files(artifact)) if suffix == ONNX_SUFFIX else ()
    for location in data:
        if Path(location).parts[0] in _VERSION_FILES:
            raise SpecdetError(f"{artifact.name}'s external data is named {location}, a name the repository uses "
                               "for its own files: save the model with another location (onnx.save(..., location=))")
    return _Model(artifact, manifest, prefix, detector, max_batch, data)


def _remake(artifact: Path) -> str:
    return "rebuild it with a wider detect-build --batch" if artifact.suffix.lower() != ONNX_SUFFIX else \
        "re-export it with a larger detect-export --max-batch"


def _replace(work: Path, output: Path) -> None:
    """Rename ``work`` to ``output``; an old ``output`` goes aside first and is removed once the new one is in place."""
    old = None
    if output.exists():
        old = temporary_folder(output)
        os.replace(output, old / "old")
    try:
        os.replace(work, output)
    except BaseException:
        if old is not None:
            os.replace(old / "old", output)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def site_dirs() -> list[str]:
    """The folders this interpreter imports packages from (its site-packages, editable sources), not the stdlib.

    Triton's Python-backend stub ignores PYTHONPATH: the models put these on
    ``sys.path`` themselves (templates/model.py).
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    found = []
    for entry in sys.path[1:]:  # sys.path[0] is the running script's folder (or the working one): no install
        path = Path(entry).resolve() if entry else None
        if path is None or not path.is_dir() or str(path) in found:
            continue
        in_stdlib = path == stdlib or (stdlib in path.parents and "site-packages" not in path.parts)
        if not in_stdlib:
            found.append(str(path))
    return found


# --- the models ---


def _write_model(root: Path, model: _Model, options: Options) -> None:
    manifest = model.manifest
    common = {"max_batch_size": model.max_batch}
    batching = {"dynamic_batching": {"preferred_batch_size": [model.max_batch],
                                     "max_queue_delay_microseconds": options.queue_delay_us}}
    cpu = [{"kind": Enum("KIND_CPU"), "count": options.instances}]
    sites = json.dumps(site_dirs())
    spec = manifest.input
    pixels_type = Enum(TRITON_DTYPES[spec.dtype])
    pixels_dims = [d if isinstance(d, int) else -1 for d in spec.shape[1:]]
    raw_type = Enum("TYPE_FP32") if model.detector == "python" else Enum(TRITON_DTYPES[manifest.outputs[0].dtype])

    _python_model(root, f"{model.prefix}_preprocess", {
        **common,
        "input": [{"name": names.IMAGE, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [{"name": names.PIXELS, "data_type": pixels_type, "dims": pixels_dims}],
        **batching, "instance_group": [{"kind": Enum("KIND_CPU"),
                                         "count": options.preprocess_instances or options.instances}],
        "parameters": _parameters(specdet_role="preprocess", specdet_manifest=json.dumps(manifest.to_dict()),
                                  specdet_site_dirs=sites),
    })

    _detector_model(root, model, options, common, batching, pixels_type, pixels_dims, sites)

    scores = [{"name": n, "data_type": raw_type, "dims": [1]} for n in (names.LOGIT, names.PROBABILITY)]
    _python_model(root, f"{model.prefix}_postprocess", {
        **common,
        "input": scores,
        "output": [{"name": names.LOGIT, "data_type": Enum("TYPE_FP32"), "dims": [1]},
                   {"name": names.PROBABILITY, "data_type": Enum("TYPE_FP32"), "dims": [1]},
                   {"name": names.LABEL, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        **batching, "instance_group": cpu,
        "parameters": _parameters(specdet_role="postprocess", specdet_threshold=repr(manifest.threshold),
                                  specdet_site_dirs=sites),
    })

    _ensemble(root, model, common)


def _detector_model(root: Path, model: _Model, options: Options, common: dict, batching: dict, pixels_type: Enum,
                    pixels_dims: list[int], sites: str) -> None:
    name = f"{model.prefix}_detector"
    folder = root / name / "1"
    folder.mkdir(parents=True)
    engine = model.artifact.suffix.lower() != ONNX_SUFFIX
    file = folder / ("model.plan" if engine else "model.onnx")
    shutil.copyfile(model.artifact, file)
    for location in model.external_data:  # relative to the ONNX file: the same names beside its copy
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.artifact.parent / location, folder / location)
    if engine:  # the manifest of an engine is its sidecar; the python detector reads it, a reader may too
        shutil.copyfile(engine_sidecar(model.artifact), engine_sidecar(file))
    spec = model.manifest.input
    on_gpu = model.detector == "tensorrt" or options.gpu
    config: dict[str, Any] = {"name": name}
    if model.detector == "python":
        config["backend"] = "python"
        outputs = [{"name": n, "data_type": Enum("TYPE_FP32"), "dims": [1]} for n in (names.LOGIT, names.PROBABILITY)]
        shutil.copyfile(TEMPLATE, folder / "model.py")
    else:
        config["platform"] = DETECTORS[model.detector]
        # The artifact's outputs are [batch]: Triton wants dims [1] per item, reshaped to none.
        outputs = [{"name": o.name, "data_type": Enum(TRITON_DTYPES[o.dtype]), "dims": [1], "reshape": {"shape": []}}
                   for o in model.manifest.outputs]
    config.update({
        **common,
        "input": [{"name": spec.name, "data_type": pixels_type, "dims": pixels_dims}],
        "output": outputs,
        **batching,
        "instance_group": [{"kind": Enum("KIND_GPU" if on_gpu else "KIND_CPU"), "count": options.instances}],
        # Warm-up: the first request should not pay for the session's or engine's first run.
        "model_warmup": [{"name": "zeros", "batch_size": model.manifest.batch.min,
                          "inputs": [{"key": spec.name, "value": {"data_type": pixels_type, "dims": pixels_dims,
                                                                  "zero_data": True}}]}],
    })
    if options.tensorrt_fp16:
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": [{"key": "precision_mode", "value": "FP16"}]}]}}
    if model.detector == "python":
        config["parameters"] = _parameters(specdet_role="detector", specdet_artifact=file.name, specdet_site_dirs=sites)
    _write_config(root / name, config)


def _python_model(root: Path, name: str, config: dict[str, Any]) -> None:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    shutil.copyfile(TEMPLATE, folder / "model.py")
    _write_config(root / name, {"name": name, "backend": "python", **config})


def _ensemble(root: Path, model: _Model, common: dict) -> None:
    (root / model.prefix / "1").mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
    step = {"model_version": -1}
    _write_config(root / model.prefix, {
        "name": model.prefix, "platform": "ensemble", **common,
        "input": [{"name": names.IMAGE, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [{"name": names.PROBABILITY, "data_type": Enum("TYPE_FP32"), "dims": [1]},
                   {"name": names.LOGIT, "data_type": Enum("TYPE_FP32"), "dims": [1]},
                   {"name": names.LABEL, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "ensemble_scheduling": {"step": [
            {"model_name": f"{model.prefix}_preprocess", **step,
             "input_map": _map(**{names.IMAGE: names.IMAGE}), "output_map": _map(**{names.PIXELS: names.PIXELS})},
            {"model_name": f"{model.prefix}_detector", **step,
             "input_map": _map(**{model.manifest.input.name: names.PIXELS}),
             "output_map": _map(logit="raw_logit", probability="raw_probability")},
            {"model_name": f"{model.prefix}_postprocess", **step,
             "input_map": _map(logit="raw_logit", probability="raw_probability"),
             "output_map": _map(logit=names.LOGIT, probability=names.PROBABILITY, label=names.LABEL)},
        ]},
    })


def _map(**pairs: str) -> list[dict[str, str]]:
    """A protobuf map<string, string>: model tensor name -> ensemble tensor name."""
    return [{"key": key, "value": value} for key, value in pairs.items()]


def _parameters(**values: str) -> list[dict[str, Any]]:
    return [{"key": key, "value": {"string_value": value}} for key, value in values.items()]


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / "config.pbtxt").write_text(dumps(config))

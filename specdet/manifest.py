"""The artifact contract: the manifest that says how to run an exported detector, and where it is kept.

Every stage reads and writes it through :class:`Manifest`: ``detect-export``
writes it, ``detect-build`` copies it into the engine's, the runtimes and the
benchmarks read it instead of importing training code, and the C++ runtime
and the Triton model repository read the same JSON. Where it lives, by the
artifact's suffix (:meth:`Manifest.read` looks there, and the C++ runtime's
``find_manifest`` in the same order: README "Checkpoints and manifests"):

- ``model.onnx``: inside the file, in ``metadata_props`` under the key
  ``specdet.manifest`` (the JSON text), so the one file is the whole
  artifact. ONNX Runtime shows it as custom metadata
  (``session.get_modelmeta().custom_metadata_map``; C API
  ``ModelMetadataLookupCustomMetadataMap``). Older exports kept it beside the
  file as ``model.json``; that sidecar is still read when the file carries
  none (never opened when it carries one), and never written.
- ``model.engine`` / ``model.plan``: TensorRT engines cannot carry metadata,
  so beside it as ``model.engine.json``.

The JSON keys are the fields below (``format``: ``"specdet-manifest"``,
``version``: 1 come first); any other key (``versions``, ``validation``,
``metadata``, ``fp32_islands``, ``fp16``, ``onnx_validation``, ...) is
provenance, kept as read in :attr:`Manifest.provenance` and written back, so
manifests from older or newer exporters still read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from specdet import onnx_metadata
from specdet.errors import SpecdetError
from specdet.files import atomic_write, file_sha256
from specdet.limits import MAX_INPUT_SIZE, MAX_JSON_DEPTH, MAX_JSON_VALUES, is_probability

FORMAT = "specdet-manifest"
VERSION = 1

# The detector's I/O: one image batch in, a logit and a probability (fake = 1) per image out.
INPUT_NAME = "image"
OUTPUT_NAMES = ("logit", "probability")
BATCH_AXIS = "batch"  # the name of the dynamic first axis in a shape
# How an artifact stores its numbers (detect-export --precision); the manifest key "precision".
PRECISIONS = ("fp32", "fp16", "int8")
# Tensor dtypes, as numpy names.
DTYPES = ("float32", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool")
INTERPOLATIONS = ("bicubic", "bilinear")

ENGINE_SUFFIXES = (".engine", ".plan")
# The Python modules an engine may name as the library that built it. The
# runtime imports the one named, so a manifest must not name any other
# module: importing ``os`` or ``this`` runs that module's code.
ENGINE_MODULES = ("tensorrt", "tensorrt_rtx")
ONNX_SUFFIX = ".onnx"
ONNX_METADATA_KEY = "specdet.manifest"

# The ONNX Runtime graph optimisation level each precision runs at, by its
# GraphOptimizationLevel name: ONNX Runtime 1.32's layout optimizer (the
# level above EXTENDED) crashes on FP16 graphs, so FP16 files stop below it.
# INT8 (QDQ) files need the full level: it fuses Q/DQ pairs into INT8 kernels.
ORT_OPTIMIZATION = {"fp32": "ORT_ENABLE_ALL", "fp16": "ORT_ENABLE_EXTENDED", "int8": "ORT_ENABLE_ALL"}

_SHA256 = re.compile(r"[0-9a-f]{64}")
# The JSON keys Manifest types; every other key is provenance.
_TYPED_KEYS = ("format", "version", "artifact", "architecture", "config", "preprocessing", "threshold", "inputs",
               "outputs", "batch", "precision", "fft_mode", "opset", "parent", "engine")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of the artifact."""

    name: str
    shape: tuple[int | str, ...]  # a string names a dynamic axis, e.g. "batch"
    dtype: str  # numpy dtype name, one of DTYPES

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclasses.dataclass(frozen=True)
class BatchRange:
    """The batch sizes the artifact accepts."""

    min: int
    max: int


@dataclasses.dataclass(frozen=True)
class PluginLibrary:
    """A TensorRT plugin library an engine was built with, found at run time by name and checked by hash."""

    name: str  # file name, e.g. libspecdet_trt_plugins.so (never a path: the engine moves between machines)
    sha256: str  # of the library file
    ops: tuple[Any, ...] = ()  # the specdet ops it provides (names; older builds: {name, version, namespace})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "ops": list(self.ops)}


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    """The ``engine`` section of an engine's manifest (written by ``detect-build``)."""

    library: str  # Python module that built it: "tensorrt" or "tensorrt_rtx"
    library_version: str | None  # engines run only with the version that built them
    compute_capabilities: tuple[str, ...] | None  # TensorRT-RTX targets; None: the build GPU's only
    build_device: str | None  # compute capability of the GPU it was built on; None: built without one
    plugins: tuple[PluginLibrary, ...] = ()
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # profile, workspace, timings...: as written
    # The engine file this manifest describes: its SHA-256 (builds before it was recorded: None) and size.
    sha256: str | None = None
    size_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        identity = {key: value for key, value in (("sha256", self.sha256), ("size_bytes", self.size_bytes))
                    if value is not None}
        return {
            "library": self.library,
            "library_version": self.library_version,
            "compute_capabilities": None if self.compute_capabilities is None else list(self.compute_capabilities),
            "build_device": self.build_device,
            "plugins": [p.to_dict() for p in self.plugins],
            **identity,
            **self.details,
        }


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What an exported artifact is and how to run it. Build one with :meth:`from_dict` or :meth:`read`."""

    artifact: str  # file name of the artifact when it was written
    architecture: str  # specdet.models name
    preprocessing: dict[str, Any]  # resize, crop, mean, std, interpolation (specdet.runtime.preprocess)
    threshold: float  # probability at or above which an image is called fake, in [0, 1]
    inputs: tuple[TensorSpec, ...]  # exactly one: the image batch
    outputs: tuple[TensorSpec, ...]  # logit and probability, [batch] each
    batch: BatchRange
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # create_model(architecture, **config)
    precision: str = "fp32"  # one of PRECISIONS
    fft_mode: str | None = None  # how FFTs are written in the file: dft, matmul, plugin
    opset: int | None = None
    parent: dict[str, Any] | None = None  # {"path", "sha256", "parent"?}: what it was made from
    engine: EngineInfo | None = None  # engines only
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)  # every other key, as read

    def __post_init__(self):
        clash = sorted(set(self.provenance) & set(_TYPED_KEYS))
        if clash:  # a programming error: these keys have fields of their own
            raise ValueError(f"provenance must not hold the typed keys {clash}")

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def ort_optimization(self) -> str:
        """The ``onnxruntime.GraphOptimizationLevel`` name to run this file at."""
        return ORT_OPTIMIZATION[self.precision]

    # --- JSON ---

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "artifact": self.artifact,
            "architecture": self.architecture,
            "config": self.config,
            "preprocessing": self.preprocessing,
            "threshold": self.threshold,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "batch": {"min": self.batch.min, "max": self.batch.max},
            "precision": self.precision,
            "fft_mode": self.fft_mode,
            "opset": self.opset,
            "parent": self.parent,
            **self.provenance,
        }
        if self.engine is not None:
            data["engine"] = self.engine.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest", remedy: str = "re-export it with detect-export") -> Manifest:
        """Check ``data`` (parsed JSON) and type it; a problem is a one-line :class:`SpecdetError` that starts
        with ``source`` and ends with ``remedy``."""
        return _Parser(source, remedy).manifest(data)

    # --- files ---

    @classmethod
    def read(cls, artifact: str | os.PathLike) -> Manifest:
        """The manifest of ``artifact``: embedded in an ONNX file, or its sidecar (engines, older ONNX exports)."""
        artifact = Path(artifact)
        if is_engine(artifact):
            return _read_sidecar(artifact, engine_sidecar(artifact), "rebuild it with detect-build")
        if not artifact.is_file():
            raise SpecdetError(f"artifact {artifact} not found: check the path")
        text = onnx_metadata.read_metadata(artifact).get(ONNX_METADATA_KEY)
        if text is not None:
            return _parse_json(text, f"{artifact.name} (its {ONNX_METADATA_KEY} metadata)", _EXPORT_REMEDY)
        legacy = legacy_onnx_sidecar(artifact)
        if legacy.is_file():
            return _read_sidecar(artifact, legacy, _EXPORT_REMEDY)
        raise SpecdetError(
            f"{artifact.name} carries no specdet manifest (ONNX metadata {ONNX_METADATA_KEY}) and has no "
            f"{legacy.name} beside it: re-export it with detect-export"
        )

    def write(self, artifact: str | os.PathLike) -> Path:
        """Write this manifest for ``artifact`` atomically; returns the file written.

        An ONNX file (which must exist) is rewritten with the manifest in its
        metadata, everything else copied unchanged; an engine gets its sidecar.
        Every field is checked first: nothing is written for an invalid manifest.
        """
        artifact = Path(artifact)
        text = self._checked_json(artifact.name)
        if is_engine(artifact):
            path = engine_sidecar(artifact)
            atomic_write(path, lambda file: file.write(text.encode("utf-8")))
            return path
        if not artifact.is_file():
            raise SpecdetError(f"cannot embed a manifest in {artifact}: the file does not exist")
        atomic_write(artifact, lambda file: onnx_metadata.write_metadata(artifact, file, {ONNX_METADATA_KEY: text}))
        return artifact

    def embed(self, model: Any) -> None:
        """Set this manifest in the metadata of an in-memory ``onnx.ModelProto`` (for a writer that holds the
        model anyway: no second pass over the file). Checked first, as by :meth:`write`."""
        text = self._checked_json(self.artifact)
        kept = [(p.key, p.value) for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
        del model.metadata_props[:]
        for key, value in [*kept, (ONNX_METADATA_KEY, text)]:
            model.metadata_props.add(key=key, value=value)

    def _checked_json(self, name: str) -> str:
        data = self.to_dict()
        Manifest.from_dict(data, f"the manifest for {name}", "nothing was written; fix the value where it came "
                           "from (the checkpoint or the call)")
        return json.dumps(data, indent=2) + "\n"


_EXPORT_REMEDY = "re-export it with detect-export"


def is_engine(artifact: str | os.PathLike) -> bool:
    return Path(artifact).suffix.lower() in ENGINE_SUFFIXES


def engine_sidecar(artifact: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``: engines cannot carry their manifest."""
    path = Path(artifact)
    return path.with_name(path.name + ".json")


def legacy_onnx_sidecar(artifact: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.json``, where exports before the embedded manifest kept it (read, never written)."""
    return Path(artifact).with_suffix(".json")


def check_engine_file(artifact: str | os.PathLike, engine: EngineInfo) -> None:
    """Refuse an engine file that is not the one its sidecar describes (another build's, half-replaced).

    The sidecar and the engine are two files, so a build killed between the
    two writes, or a copy of only one, pairs an engine with another engine's
    manifest: its threshold and preprocessing would then score silently
    wrong. The size is checked first (free), then the SHA-256 recorded at build.
    """
    artifact = Path(artifact)
    size = artifact.stat().st_size
    if (engine.size_bytes is not None and size != engine.size_bytes) or (
            engine.sha256 is not None and file_sha256(artifact) != engine.sha256):
        raise SpecdetError(f"the manifest beside {artifact.name} ({engine_sidecar(artifact).name}) describes another "
                           "engine: rebuild it with detect-build")


def remove_engine_sidecar(artifact: str | os.PathLike) -> None:
    """Remove an engine's sidecar, if any (a failed build leaves no manifest describing a missing engine)."""
    if is_engine(artifact):
        engine_sidecar(artifact).unlink(missing_ok=True)


def preprocessing_problems(spec: Any) -> list[str]:
    """What is wrong with a preprocessing dict (checkpoints carry the same one), or nothing."""
    if not isinstance(spec, dict):
        return ["it is not a dict"]
    problems = []
    if not _positive_int(spec.get("crop")) or spec["crop"] > MAX_INPUT_SIZE:
        problems.append(f"crop must be a whole number from 1 to {MAX_INPUT_SIZE}")
    if spec.get("resize") is not None and not _positive_int(spec.get("resize")):
        problems.append("resize must be a positive integer or null")
    numbers = True
    for key in ("mean", "std"):
        value = spec.get(key)
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_finite(v) for v in value)):
            problems.append(f"{key} must list 3 numbers")
            numbers = False
    if numbers and any(v == 0 for v in spec["std"]):
        problems.append("std must not be 0")
    elif numbers and not finite_normalisation(spec["mean"], spec["std"]):
        problems.append("mean and std must give finite float32 pixels: (x - mean) / std for x from 0 to 1")
    if not isinstance(spec.get("pad_small", False), bool):  # the published detectors' CenterCrop padding
        problems.append("pad_small must be true or false")
    if spec.get("interpolation") not in INTERPOLATIONS:
        problems.append(f"interpolation must be one of {', '.join(INTERPOLATIONS)}")
    return problems


def finite_normalisation(mean: Any, std: Any) -> bool:
    """Whether every pixel normalises to a finite float32: the rule every runtime applies (C/C++ mirrors it).

    Per channel, in float32 as :func:`specdet.runtime.preprocess.normalise` computes it: ``mean`` and ``std``
    are finite float32 values, ``std`` is not 0, and ``(0 - mean) / std`` and ``(1 - mean) / std`` are
    finite (pixels run from 0 to 1, and the map is monotone, so the ends bound it). A std of 1e-40 (0 in
    float32, or a denormal whose reciprocal overflows) or a mean of 1e38 would otherwise score NaN.
    """
    with np.errstate(all="ignore"):
        m, s = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        ends = np.stack([(np.float32(0) - m) / s, (np.float32(1) - m) / s])
    return bool(np.isfinite(m).all() and np.isfinite(s).all() and (s != 0).all() and np.isfinite(ends).all())


def json_problem(data: Any) -> str | None:
    """What keeps ``data`` (parsed JSON, or a checkpoint's metadata) from being written as JSON anywhere, or None.

    It must nest at most :data:`~specdet.limits.MAX_JSON_DEPTH` deep and hold at most
    :data:`~specdet.limits.MAX_JSON_VALUES` values counted as written out (a pickle can refer to one list
    many times: a few bytes that expand to gigabytes, caught here after that many steps, not expanded),
    with text keys and finite numbers only (``NaN`` is not JSON). Iterative: no depth overflows the stack.
    """
    stack, seen = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_JSON_VALUES:
            return f"it holds more than {MAX_JSON_VALUES:,} values"
        if depth > MAX_JSON_DEPTH:
            return f"it nests more than {MAX_JSON_DEPTH} levels deep"
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                return "an object has a key that is not text"
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, float) and not math.isfinite(value):
            return f"it holds the number {value}, which JSON cannot write"
        elif not (value is None or isinstance(value, (str, int, float))):
            return f"it holds a {type(value).__name__}, which JSON cannot write"
    return None


def _read_sidecar(artifact: Path, path: Path, remedy: str) -> Manifest:
    if not path.is_file():
        raise SpecdetError(f"no manifest {path.name} beside {artifact.name}: {remedy}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecdetError(f"{path} is not a specdet manifest (not UTF-8 text): {remedy}") from err
    return _parse_json(text, str(path), remedy)


def _parse_json(text: str, source: str, remedy: str) -> Manifest:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecdetError(f"{source} is not valid JSON ({err}): {remedy}") from err
    except RecursionError as err:  # the parser recurses once per level
        raise SpecdetError(f"{source}: it nests more than {MAX_JSON_DEPTH} levels deep: {remedy}") from err
    return Manifest.from_dict(data, source, remedy)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Parser:
    """Turns parsed JSON into a :class:`Manifest`, raising one-line errors that name the field."""

    def __init__(self, source: str, remedy: str):
        self.source, self.remedy = source, remedy

    def error(self, problem: str) -> SpecdetError:
        return SpecdetError(f"{self.source}: {problem}: {self.remedy}")

    def manifest(self, data: Any) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SpecdetError(f"{self.source} is not a specdet manifest: {self.remedy}")
        if data.get("version") != VERSION:
            raise SpecdetError(
                f"{self.source} is manifest version {data.get('version')!r}; this specdet reads version {VERSION}: "
                f"upgrade specdet or {self.remedy}"
            )
        required = ("artifact", "architecture", "preprocessing", "threshold", "inputs", "outputs", "batch")
        missing = [key for key in required if key not in data]
        if missing:
            raise self.error(f"lacks {', '.join(missing)}")
        manifest = Manifest(
            artifact=self.text(data, "artifact"),
            architecture=self.text(data, "architecture"),
            preprocessing=self.preprocessing(data["preprocessing"]),
            threshold=self.threshold(data["threshold"]),
            inputs=self.inputs(data["inputs"]),
            outputs=self.outputs(data["outputs"]),
            batch=self.batch(data["batch"]),
            config=self.mapping(data, "config", default={}),
            precision=self.choice(data, "precision", PRECISIONS, default="fp32"),
            fft_mode=self.optional_text(data, "fft_mode"),
            opset=self.optional_positive(data, "opset"),
            parent=self.mapping(data, "parent", default=None),
            engine=None if data.get("engine") is None else self.engine(data["engine"]),
            provenance={k: v for k, v in data.items() if k not in _TYPED_KEYS},
        )
        self.check_input_shape(manifest)
        # After the typed fields (their messages name them): the rest (config, provenance) must be JSON that
        # every reader can take and every writer can write back.
        problem = json_problem(data)
        if problem is not None:
            raise self.error(problem)
        return manifest

    def check_input_shape(self, manifest: Manifest) -> None:
        """The image batch is ``[batch, 3, H, W]``, its first axis named or fixed at the one batch size allowed."""
        shape, batch = manifest.input.shape, manifest.batch
        first = shape[0] if shape else None
        fixed = batch.min == batch.max and first == batch.min
        if len(shape) != 4 or shape[1] != 3 or not (isinstance(first, str) or fixed):
            raise self.error(f"inputs shape {list(shape)} is not [batch, 3, height, width] with the batch axis named "
                             f"(or fixed at the one batch size of batch {batch.min}..{batch.max})")

    # --- fields ---

    def text(self, data: dict, key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(f"{key} must be a non-empty string, not {value!r}")
        return value

    def optional_text(self, data: dict, key: str) -> str | None:
        return None if data.get(key) is None else self.text(data, key)

    def optional_positive(self, data: dict, key: str) -> int | None:
        value = data.get(key)
        if value is not None and not _positive_int(value):
            raise self.error(f"{key} must be a positive integer, not {value!r}")
        return value

    def mapping(self, data: dict, key: str, default: Any) -> Any:
        value = data.get(key, default)
        if value is not default and not isinstance(value, dict):
            raise self.error(f"{key} must be an object, not {type(value).__name__}")
        return value

    def choice(self, data: dict, key: str, choices: tuple[str, ...], default: str) -> str:
        value = data.get(key, default)
        if value not in choices:
            raise self.error(f"{key} must be one of {', '.join(choices)}, not {value!r}")
        return value

    def preprocessing(self, value: Any) -> dict[str, Any]:
        problems = preprocessing_problems(value)
        if problems:
            raise self.error(f"invalid preprocessing ({'; '.join(problems)})")
        return value

    def threshold(self, value: Any) -> float:
        if not is_probability(value):
            raise self.error(f"threshold must be a number from 0 to 1, not {value!r}")
        return float(value)

    def batch(self, value: Any) -> BatchRange:
        if not (isinstance(value, dict) and _positive_int(value.get("min")) and _positive_int(value.get("max"))
                and value["min"] <= value["max"]):
            raise self.error(f"batch must be {{min, max}} with positive integers, min <= max, not {value!r}")
        return BatchRange(value["min"], value["max"])

    def tensors(self, value: Any, key: str) -> tuple[TensorSpec, ...]:
        if not isinstance(value, list):
            raise self.error(f"{key} must be a list of {{name, shape, dtype}}")
        specs = []
        for item in value:
            ok = (
                isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]
                and isinstance(item.get("shape"), list)
                and all(_positive_int(d) or (isinstance(d, str) and d) for d in item["shape"])
                and item.get("dtype") in DTYPES
            )
            if not ok:
                raise self.error(
                    f"{key} entry {item!r} is not {{name, shape (positive integers or axis names), dtype "
                    f"({', '.join(DTYPES)})}}"
                )
            specs.append(TensorSpec(item["name"], tuple(item["shape"]), item["dtype"]))
        return tuple(specs)

    def inputs(self, value: Any) -> tuple[TensorSpec, ...]:
        specs = self.tensors(value, "inputs")
        if len(specs) != 1:
            raise self.error(f"inputs must list one tensor (the image batch), not {len(specs)}")
        return specs

    def outputs(self, value: Any) -> tuple[TensorSpec, ...]:
        specs = self.tensors(value, "outputs")
        missing = [name for name in OUTPUT_NAMES if name not in {s.name for s in specs}]
        if missing:
            raise self.error(f"outputs lack {', '.join(missing)}")
        return specs

    def engine(self, value: Any) -> EngineInfo:
        if not isinstance(value, dict):
            raise self.error(f"engine must be an object, not {type(value).__name__}")
        capabilities = value.get("compute_capabilities")
        if capabilities is not None and not (
            isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities)
        ):
            raise self.error(f"engine.compute_capabilities must be a list of strings, not {capabilities!r}")
        plugins = value.get("plugins") or []
        if not isinstance(plugins, list):
            raise self.error("engine.plugins must be a list of {name, sha256, ops}")
        library = self.text(value, "library") if "library" in value else "tensorrt"
        if library not in ENGINE_MODULES:
            raise self.error(f"engine.library must be one of {', '.join(ENGINE_MODULES)}, not {library!r}")
        sha256, size = value.get("sha256"), value.get("size_bytes")
        if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
            raise self.error(f"engine.sha256 must be 64 hex digits, not {sha256!r}")
        if size is not None and not _positive_int(size):
            raise self.error(f"engine.size_bytes must be a positive integer, not {size!r}")
        typed = ("library", "library_version", "compute_capabilities", "build_device", "plugins", "sha256", "size_bytes")
        return EngineInfo(
            sha256=sha256,
            size_bytes=size,
            library=library,
            library_version=self.optional_text(value, "library_version"),
            compute_capabilities=None if capabilities is None else tuple(capabilities),
            build_device=self.optional_text(value, "build_device"),
            plugins=tuple(self.plugin(p) for p in plugins),
            details={k: v for k, v in value.items() if k not in typed},
        )

    def plugin(self, value: Any) -> PluginLibrary:
        entry = value if isinstance(value, dict) else {}
        name = entry.get("name")
        if name is None and isinstance(entry.get("path"), str):
            # Engines built before plugins were recorded by name carry an absolute path: its file name is the name.
            name = Path(entry["path"]).name
        sha256, ops = entry.get("sha256"), entry.get("ops", [])
        if not (isinstance(name, str) and name and isinstance(sha256, str) and _SHA256.fullmatch(sha256)
                and isinstance(ops, list)):
            raise self.error(f"engine.plugins entry {value!r} is not {{name, sha256 (64 hex digits), ops}}")
        return PluginLibrary(name, sha256, tuple(ops))

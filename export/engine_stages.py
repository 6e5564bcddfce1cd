"""The stages of an engine build, chained the way Polygraphy chains its loaders.

Each stage is a callable that holds the stage before it and calls it when it
is called itself, so a build is written inside out and runs in order::

    WriteManifest(Serialise(Configure(Parse(LoadAndStrip(source, manifest, library, plugins)), ...), output), start)()

1. :class:`LoadAndStrip`: load the plugin libraries; strip the fallback
   bodies of the ``specdet`` ops they provide (:mod:`specdet.tensorrt`).
2. :class:`Parse`: a strongly typed network from the ONNX file, its inputs
   and outputs checked against the manifest.
3. :class:`Configure`: one optimisation profile over the batch range,
   workspace, compute-capability targets, timing cache.
4. :class:`Serialise`: build the engine and write it, and the timing cache.
5. :class:`WriteManifest`: the engine's manifest beside it.

Each returns a small record of what it made, carrying its input's record, so
the last stage sees everything the build did.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from specdet import tensorrt as trt_plugins
from specdet.errors import SpecdetError
from specdet.export.engine_library import (
    Library,
    capability_names,
    compute_capability_targets,
    current_compute_capability,
    library_name,
)
from specdet.files import atomic_write, file_sha256
from specdet.manifest import Manifest, remove_engine_sidecar

_MEMORY_WORDS = re.compile(r"workspace|out of memory|insufficient memory|memory pool|cudaErrorMemoryAllocation", re.I)


# --- 1. load the ONNX file and strip the fallbacks of the ops the plugin libraries provide ---


@dataclasses.dataclass
class OnnxInput:
    source: Path
    manifest: dict
    library: Library
    model_bytes: bytes | None  # the stripped model; None: the parser reads the file itself
    plugin_libraries: dict[str, list[trt_plugins.PluginCreator]]  # path given -> creators it registered
    plugin_ops: set[str]  # every specdet op the file uses
    stripped: list[str]  # the ops whose fallback bodies were removed


class LoadAndStrip:
    def __init__(self, source: Path, manifest: dict, library: Library, plugins: Sequence[str | Path]):
        self.source, self.manifest, self.library, self.plugins = source, manifest, library, plugins

    def __call__(self) -> OnnxInput:
        loaded = trt_plugins.load_plugin_libraries(self.library.trt, self.plugins)
        provided = [op for ops in loaded.values() for op in ops]
        model_bytes, stripped, plugin_ops = None, [], set()
        if self.manifest.get("fft_mode") == "plugin" or provided:
            import onnx

            model = onnx.load(str(self.source))
            plugin_ops = {n.op_type for n in trt_plugins.plugin_nodes(model)}
            stripped = trt_plugins.strip_plugin_fallbacks(model, provided)
            trt_plugins.check_plugin_ops(model, {op.name for op in provided}, self.source.name)
            if stripped:
                model_bytes = model.SerializeToString()
            del model
        return OnnxInput(self.source, self.manifest, self.library, model_bytes, loaded, plugin_ops, stripped)


# --- 2. parse ---


@dataclasses.dataclass
class Network:
    onnx: OnnxInput
    builder: object
    network: object
    parser: object  # kept alive with the network it filled
    inputs: list[dict]  # [{"name", "shape", "dtype"}], as the manifest writes them
    outputs: list[dict]


class Parse:
    def __init__(self, onnx: Callable[[], OnnxInput]):
        self.onnx = onnx

    def __call__(self) -> Network:
        onnx = self.onnx()
        trt, source = onnx.library.trt, onnx.source
        builder = trt.Builder(onnx.library.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, onnx.library.logger)
        if onnx.model_bytes is not None:
            ok = parser.parse(onnx.model_bytes, str(source))
        else:
            ok = parser.parse_from_file(str(source))
        if not ok:
            raise _parse_errors(parser, trt, source.name, onnx.plugin_ops)
        inputs = _io([network.get_input(i) for i in range(network.num_inputs)])
        outputs = _io([network.get_output(i) for i in range(network.num_outputs)])
        _check_io(inputs, onnx.manifest["inputs"], "inputs", source.name)
        _check_io(outputs, onnx.manifest["outputs"], "outputs", source.name)
        return Network(onnx, builder, network, parser, inputs, outputs)


def _io(tensors) -> list[dict]:
    return [
        {"name": t.name, "shape": ["batch" if i == 0 and d < 0 else int(d) for i, d in enumerate(t.shape)],
         "dtype": trt_plugins.numpy_dtype(t.dtype)}
        for t in tensors
    ]


def _check_io(network_io: list[dict], declared: list[dict], what: str, source: str) -> None:
    got = [(t["name"], t["dtype"], t["shape"]) for t in network_io]
    want = [(t["name"], t["dtype"], list(t["shape"])) for t in declared]
    if got != want:
        raise SpecdetError(
            f"{source} parses to a network with {what} {got}, but its manifest says {want}: re-export the ONNX file"
        )


def _parse_errors(parser, trt: ModuleType, source: str, plugin_ops: set[str]) -> SpecdetError:
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        op, node, desc = error.node_operator(), error.node_name(), error.desc()
        if op in plugin_ops:
            return SpecdetError(
                f"{library_name(trt)} cannot import the plugin op specdet.{op} (node {node}) of {source}: no plugin "
                "library provides it and it has no fallback body; pass --plugins LIB or re-export with --fft plugin"
            )
        if op:
            lines.append(f"ONNX op {op} (node {node}) is not supported by {library_name(trt)} {trt.__version__}: {desc}")
        else:
            lines.append(desc)
    return SpecdetError(f"cannot parse {source}: " + ("; ".join(lines[:3]) or "the parser gave no reason"))


# --- 3. configure ---


@dataclasses.dataclass
class BuildConfig:
    network: Network
    config: object
    profile: tuple[int, int, int]  # batch MIN, OPT, MAX
    shapes: dict[str, dict[str, list[int]]]  # input name -> {"min", "opt", "max"} shapes
    compute_capabilities: list[str] | None  # the targets as the manifest writes them; None: the library has none
    workspace_mb: int | None
    timing_cache: Path | None  # as given
    cache: object | None  # the timing cache in the config; None when not used


class Configure:
    def __init__(self, network: Callable[[], Network], *, profile: tuple[int, int, int], workspace_mb: int | None,
                 compute_capabilities: Sequence[str] | None, timing_cache: Path | None):
        self.network, self.profile, self.workspace_mb = network, profile, workspace_mb
        self.compute_capabilities, self.timing_cache = compute_capabilities, timing_cache

    def __call__(self) -> BuildConfig:
        network = self.network()
        library = network.onnx.library
        trt = library.trt
        config = network.builder.create_builder_config()
        shapes = {}
        optimization = network.builder.create_optimization_profile()
        for tensor in network.inputs:
            rest = [int(d) for d in tensor["shape"][1:]]
            shapes[tensor["name"]] = {key: [b, *rest] for key, b in zip(("min", "opt", "max"), self.profile)}
            optimization.set_shape(tensor["name"], *[tuple(s) for s in shapes[tensor["name"]].values()])
        config.add_optimization_profile(optimization)
        if self.workspace_mb is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace_mb) << 20)
        targets = compute_capability_targets(trt, self.compute_capabilities)
        if targets is not None:
            config.num_compute_capabilities = len(targets)
            for i, target in enumerate(targets):
                if not config.set_compute_capability(target, i):
                    raise SpecdetError(f"{library.name} refused the compute capability target {target}")
        cache = None
        # TensorRT-RTX chooses kernels when the engine first runs (its runtime
        # cache), not at build time: its timing-cache calls are no-ops since 1.2.
        if self.timing_cache is not None and trt.__name__ != "tensorrt_rtx":
            data = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
            cache = config.create_timing_cache(data)
            if not config.set_timing_cache(cache, ignore_mismatch=False):
                raise SpecdetError(f"timing cache {self.timing_cache} does not match {library.name} "
                                   f"{trt.__version__} or this device: delete it or pass another --timing-cache")
        return BuildConfig(network, config, self.profile, shapes,
                           None if targets is None else capability_names(trt, targets),
                           self.workspace_mb, self.timing_cache, cache)


# --- 4. build and write the engine ---


@dataclasses.dataclass
class SerialisedEngine:
    config: BuildConfig
    path: Path


class Serialise:
    def __init__(self, config: Callable[[], BuildConfig], output: Path):
        self.config, self.output = config, output

    def __call__(self) -> SerialisedEngine:
        built = self.config()
        library = built.network.onnx.library
        engine = built.network.builder.build_serialized_network(built.network.network, built.config)
        if engine is None:
            raise _build_error(library.logger, library.trt, built.workspace_mb)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.output, lambda file, data=engine: file.write(memoryview(data)))
        del engine  # a full-size engine is hundreds of MB
        if built.cache is not None:
            serialized = built.config.get_timing_cache().serialize()
            atomic_write(built.timing_cache, lambda file: file.write(memoryview(serialized)))
        return SerialisedEngine(built, self.output)


def _build_error(logger, trt: ModuleType, workspace_mb: int | None) -> SpecdetError:
    text = " | ".join(logger.errors[-3:])
    if _MEMORY_WORDS.search(text):
        limit = f"--workspace {workspace_mb} MB" if workspace_mb else "the default workspace"
        return SpecdetError(f"not enough workspace to build the engine with {limit}: raise --workspace "
                            f"({library_name(trt)}: {text or 'no detail'})")
    return SpecdetError(f"{library_name(trt)} could not build the engine: {text or 'no error was logged'}")


# --- 5. the engine's manifest ---


@dataclasses.dataclass
class EngineBuild:
    path: Path
    backend: str
    library_version: str
    precision: str
    profile: dict
    compute_capabilities: list[str] | None
    plugins: list[dict]
    inputs: list[dict]
    outputs: list[dict]
    seconds: float

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


class WriteManifest:
    def __init__(self, engine: Callable[[], SerialisedEngine], start: float):
        self.engine, self.start = engine, start  # start: when the build began, for its time

    def __call__(self) -> EngineBuild:
        engine = self.engine()
        built = engine.config
        network, onnx = built.network, built.network.onnx
        library, manifest, output = onnx.library, onnx.manifest, engine.path
        plugins = plugin_records(onnx.plugin_libraries)
        seconds = time.perf_counter() - self.start
        precision = manifest.get("precision", "fp32")
        timing_cache = None
        if built.cache is not None:
            timing_cache = str(built.timing_cache.resolve())
        elif built.timing_cache is not None:
            timing_cache = "ignored: TensorRT-RTX has no build-time timing cache"
        section = {
            "backend": library.backend,
            "library": library.trt.__name__,
            "library_version": library.trt.__version__,
            "strongly_typed": True,
            "compute_capabilities": built.compute_capabilities,
            "build_device": current_compute_capability(),
            "profile": {"batch": dict(zip(("min", "opt", "max"), built.profile)), "shapes": built.shapes},
            "plugins": plugins,
            "plugin_ops_stripped": onnx.stripped,
            "plugin_ops_inlined": sorted(onnx.plugin_ops - set(onnx.stripped)),
            "workspace_mb": built.workspace_mb,
            "timing_cache": timing_cache,
            "build_seconds": round(seconds, 3),
            "size_bytes": output.stat().st_size,
            "sha256": file_sha256(output),  # the runtime checks the engine beside it is this one
        }
        carried = {k: v for k, v in manifest.items() if k not in ("artifact", "parent", "validation")}
        try:
            Manifest.from_dict({
                **carried,
                "inputs": network.inputs,
                "outputs": network.outputs,
                "batch": {"min": built.profile[0], "max": built.profile[2]},
                "precision": precision,
                "engine": section,
                "parent": {"path": str(onnx.source.resolve()), "sha256": file_sha256(onnx.source),
                           "parent": manifest.get("parent")},
                "onnx_validation": manifest.get("validation"),
                "artifact": output.name,
            }).write(output)
        except BaseException:
            output.unlink(missing_ok=True)
            remove_engine_sidecar(output)
            raise
        return EngineBuild(
            path=output, backend=library.backend, library_version=library.trt.__version__, precision=precision,
            profile=section["profile"], compute_capabilities=built.compute_capabilities, plugins=plugins,
            inputs=network.inputs, outputs=network.outputs, seconds=seconds,
        )


def plugin_records(libraries: dict[str, list[trt_plugins.PluginCreator]]) -> list[dict]:
    """The manifest's ``engine.plugins``: each library by file name and SHA-256, with the ops it provides.

    No path: the engine is deployed elsewhere, and the runtime finds the
    library there by name and checks it by hash.
    """
    return [
        {"name": Path(path).name, "sha256": file_sha256(Path(path)), "ops": [op.name for op in ops]}
        for path, ops in libraries.items()
    ]

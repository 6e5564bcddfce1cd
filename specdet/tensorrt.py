"""TensorRT plugin libraries for the builder, the runtime and the kernels: load them, see which ``specdet`` ops
they provide, strip those ops' ONNX fallbacks before parsing.

A ``--fft plugin`` ONNX file carries each ``specdet`` op twice: as a node that
our TensorRT plugin implements, and as an ONNX local function (the ``matmul``
lowering) that any runtime can inline. TensorRT's ONNX parser inlines a local
function unless a plugin of that name is registered, and the TensorRT-RTX 1.7
parser was seen inlining even then; so before parsing, the function bodies of
the ops the loaded libraries provide are removed, which leaves the parser one
way to import those nodes: as plugins (looked up by op type,
``plugin_version`` and ``plugin_namespace``). Ops no library provides keep
their bodies and are inlined, so the engine still builds without the plugin.

An engine's manifest records each plugin library by file name and SHA-256
(never by path: engines move between machines). :func:`resolve_plugin_libraries`
finds them again at run time, in order: the paths the caller passes
(``--plugins``), the ``SPECDET_TRT_PLUGINS`` environment variable, the
installed kernel builds; the first place holding a file of that name is used,
and its hash must match.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

import onnx
from onnx import helper

from specdet.errors import SpecdetError
from specdet.files import file_sha256
from specdet.manifest import PluginLibrary

# The ONNX domain of our custom ops and the namespace of their TensorRT plugins: one name for both.
PLUGIN_DOMAIN = "specdet"
# Plugin library files or folders searched after the caller's, separated by os.pathsep.
PLUGINS_ENV = "SPECDET_TRT_PLUGINS"
# TensorRT DataType names -> numpy dtype names (the manifest's dtypes).
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
              "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}


def numpy_dtype(trt_dtype: object) -> str:
    """The numpy name of a ``tensorrt.DataType`` (``DataType.HALF`` -> ``"float16"``)."""
    name = str(trt_dtype).split(".")[-1]
    return TRT_DTYPES.get(name, name.lower())


@dataclasses.dataclass(frozen=True)
class PluginCreator:
    name: str
    version: str
    namespace: str


def load_plugin_libraries(trt: ModuleType, paths: Iterable[str | os.PathLike]) -> dict[str, list[PluginCreator]]:
    """Load each shared library; returns, per path, the plugin creators it registered.

    Libraries register their creators when loaded (static registration) or
    through ``getCreators``, which the registry's ``load_library`` calls; both
    are tried.
    """
    registry = trt.get_plugin_registry()
    loaded: dict[str, list[PluginCreator]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise SpecdetError(f"plugin library {path} not found")
        before = _creators(registry)
        try:
            ctypes.CDLL(str(path.resolve()), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise SpecdetError(f"cannot load plugin library {path}: {err}") from err
        added = _creators(registry) - before
        if not added:
            try:
                registry.load_library(str(path.resolve()))
            except Exception:  # the library may have nothing for load_library: judged by the registry below
                pass
            added = _creators(registry) - before
        if not added:
            raise SpecdetError(
                f"{path} loaded but registered no TensorRT plugin with {trt.__name__} {trt.__version__}: "
                "is it built against this library?"
            )
        loaded[str(path)] = sorted(added, key=lambda op: op.name)
    return loaded


def _creators(registry) -> set[PluginCreator]:
    return {PluginCreator(c.name, str(c.plugin_version), c.plugin_namespace) for c in registry.all_creators}


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain == PLUGIN_DOMAIN]


def strip_plugin_fallbacks(model: onnx.ModelProto, provided_ops: Iterable[PluginCreator | str]) -> list[str]:
    """Remove the local-function bodies of the ``specdet`` ops in ``provided_ops``; returns the ops stripped.

    Nodes of a stripped op get ``plugin_version``/``plugin_namespace``
    attributes when the provider's differ from the parser's defaults ("1", "").
    ``model`` is modified in place.
    """
    provided = {}
    for op in provided_ops:
        op = op if isinstance(op, PluginCreator) else PluginCreator(op, "1", "")
        provided.setdefault(op.name, op)
    used = {node.op_type for node in plugin_nodes(model)}
    stripped = sorted(used & set(provided))
    for function in [f for f in model.functions if f.domain == PLUGIN_DOMAIN and f.name in stripped]:
        model.functions.remove(function)
    for node in plugin_nodes(model):
        op = provided.get(node.op_type)
        if op is None:
            continue
        present = {a.name for a in node.attribute}
        if op.version != "1" and "plugin_version" not in present:
            node.attribute.append(helper.make_attribute("plugin_version", op.version))
        if op.namespace and "plugin_namespace" not in present:
            node.attribute.append(helper.make_attribute("plugin_namespace", op.namespace))
    return stripped


def check_plugin_ops(model: onnx.ModelProto, provided: Iterable[str], source: str) -> None:
    """Raise if a ``specdet`` node has neither a function body nor a loaded plugin."""
    bodies = {f.name for f in model.functions if f.domain == PLUGIN_DOMAIN}
    provided = set(provided)
    missing = sorted({n.op_type for n in plugin_nodes(model)} - bodies - provided)
    if missing:
        raise SpecdetError(
            f"{source} uses the plugin op(s) {', '.join(PLUGIN_DOMAIN + '.' + m for m in missing)} without a fallback body, "
            "and no loaded plugin library provides them: pass --plugins LIB (our kernels' plugin library), or "
            "re-export with --fft plugin (which carries fallback bodies) or --fft matmul"
        )


def resolve_plugin_libraries(
    libraries: Sequence[PluginLibrary],
    *,
    explicit: Sequence[str | os.PathLike] | None = None,
    installed: Sequence[Path] = (),
    environ: dict[str, str] | None = None,
    engine: str = "the engine",
) -> list[Path]:
    """The file of each library in ``libraries``, found by name and checked by SHA-256.

    Places, in order: ``explicit`` (files or folders), ``$SPECDET_TRT_PLUGINS``
    (in ``environ``, default ``os.environ``; files or folders separated by
    ``os.pathsep``), ``installed`` (folders: the kernel builds). The first
    place holding a file of the library's name decides: one of its files
    with the recorded hash is used, else the hash mismatch is an error.
    ``engine`` names the engine in error messages.
    """
    explicit = [Path(p) for p in explicit or ()]
    for path in explicit:
        if not path.exists():
            raise SpecdetError(f"--plugins {path} does not exist: pass a plugin library file or the folder holding it")
        if path.is_file() and path.name not in {lib.name for lib in libraries}:
            recorded = ", ".join(lib.name for lib in libraries) or "none"
            raise SpecdetError(
                f"--plugins {path}: {engine} was built with no plugin library of that name (it records {recorded}): "
                "drop it, or rebuild the engine with it (detect-build --plugins)"
            )
    variable = (os.environ if environ is None else environ).get(PLUGINS_ENV, "")
    places = [
        ("--plugins", explicit),
        (f"${PLUGINS_ENV}", [Path(p) for p in variable.split(os.pathsep) if p]),
        ("the installed kernel builds", list(installed)),
    ]
    return [_resolve(library, places, engine) for library in libraries]


def _resolve(library: PluginLibrary, places: list[tuple[str, list[Path]]], engine: str) -> Path:
    for where, entries in places:
        found = [p for p in (e if e.is_file() else e / library.name for e in entries)
                 if p.name == library.name and p.is_file()]
        if not found:
            continue
        for path in found:
            if file_sha256(path) == library.sha256:
                return path
        got = file_sha256(found[0])
        raise SpecdetError(
            f"{found[0]} (from {where}) is not the {library.name} {engine} was built with (SHA-256 {got[:12]}..., "
            f"recorded {library.sha256[:12]}...): pass the library it was built with (--plugins or ${PLUGINS_ENV}), "
            "or rebuild the engine with detect-build against this one"
        )
    ops = ", ".join(str(op.get("name", op)) if isinstance(op, dict) else str(op) for op in library.ops)
    raise SpecdetError(
        f"{engine} needs the TensorRT plugin library {library.name}{f' (ops {ops})' if ops else ''}, found in "
        f"neither --plugins, ${PLUGINS_ENV} nor the installed kernel builds: pass --plugins PATH or set "
        f"{PLUGINS_ENV} to the library or its folder, or build it with python -m specdet.kernels.build"
    )

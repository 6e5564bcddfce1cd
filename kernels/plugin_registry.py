"""Our TensorRT plugins without a GPU: stand-in creators in Python, TensorRT-RTX's parser fix, and a parse/build report.

The build-time flow (load a plugin library, strip the local-function
fallbacks of the specdet ops it provides, check that every specdet node has
a body or a plugin) is :mod:`specdet.tensorrt`, which
``detect-build --plugins LIB`` uses. This module adds what shows that flow on
a machine without a GPU or without the C++ plugin library:

- :func:`register_python_creators`: creators of both ops written in Python,
  with the C++ plugins' names (namespace ``specdet``, version ``1``), fields,
  output shapes and type rules; their plugins answer every build-time
  question (no GPU needed) and refuse to ``enqueue``;
- :func:`rtx_library_env`: TensorRT-RTX 1.7's parser ``dlopen``s
  ``libtensorrt_rtx.so`` when it imports a plugin node, a name its pip wheel
  does not ship (only ``.so.1``), and aborts the process without it; this
  gives a child process an ``LD_LIBRARY_PATH`` with that link;
- :func:`inspect_network` / ``python -m specdet.kernels.plugin_registry
  MODEL.onnx [--plugins LIB | --python-creators] [--keep-fallbacks]``: what
  the parser made of a file (plugin layers: name, namespace, shapes, types)
  and whether the engine builds, as JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from specdet import cli
from specdet import tensorrt as trt_plugins
from specdet.errors import SpecdetError
from specdet.tensorrt import PLUGIN_DOMAIN

PLUGIN_VERSION = "1"  # = the ONNX domain version
OPS = ("BandSplit", "SpectrumMagnitudeMean")


def registered_specdet_ops(registry) -> list[trt_plugins.PluginCreator]:
    """The creators of specdet ops (namespace ``specdet``, version ``1``) in a TensorRT plugin registry."""
    return sorted(
        (trt_plugins.PluginCreator(c.name, str(c.plugin_version), c.plugin_namespace) for c in registry.all_creators
         if c.plugin_namespace == PLUGIN_DOMAIN and str(c.plugin_version) == PLUGIN_VERSION and c.name in OPS),
        key=lambda op: op.name,
    )


# ---- stand-in creators in Python ----


def _fields(fc) -> dict:
    return {f.name: f.data for f in fc} if fc is not None else {}


def _text(data) -> str:
    raw = bytes(np.asarray(data).astype(np.uint8))
    return raw.split(b"\0", 1)[0].decode()


def python_creators(trt) -> list:
    """Creators of both ops written in Python for the module ``trt`` (``tensorrt`` or ``tensorrt_rtx``).

    Their plugins answer every build-time question (output types and shapes,
    formats, fields to serialise, workspace 0) without a GPU; ``enqueue``
    refuses to run: a stand-in for the parser and the builder, not a kernel.
    """

    class _Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, name: str):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name = name
            self.plugin_namespace = PLUGIN_DOMAIN
            self.plugin_version = PLUGIN_VERSION
            self.num_outputs = 1

        def get_capability_interface(self, type):
            return self

        def get_output_data_types(self, input_types):
            return [input_types[0]]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos == 0:
                return desc.type in (trt.DataType.FLOAT, trt.DataType.HALF)
            return desc.type == in_out[0].desc.type

        def configure_plugin(self, inputs, outputs):
            pass

        def get_workspace_size(self, inputs, outputs):
            return 0

        def on_shape_change(self, inputs, outputs):
            pass

        def set_tactic(self, tactic):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            raise RuntimeError(
                f"the Python stand-in of specdet.{self.plugin_name} does not run: load libspecdet_trt_plugins.so"
            )

    class BandSplitPlugin(_Plugin):
        def __init__(self, edges, centre: str):
            super().__init__("BandSplit")
            self.edges = np.asarray(edges, dtype=np.float32).reshape(-1)
            self.centre = centre

        def get_output_shapes(self, inputs, shape_inputs, builder):
            x = inputs[0]
            out = trt.DimsExprs(5)
            out[0], out[1], out[2], out[3], out[4] = x[0], builder.constant(len(self.edges) + 1), x[1], x[2], x[3]
            return [out]

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([
                trt.PluginField("edges", self.edges, trt.PluginFieldType.FLOAT32),
                trt.PluginField("centre", np.frombuffer(self.centre.encode() + b"\0", np.int8), trt.PluginFieldType.CHAR),
            ])

        def clone(self):
            return BandSplitPlugin(self.edges.copy(), self.centre)

    class SpectrumMagnitudeMeanPlugin(_Plugin):
        def __init__(self):
            super().__init__("SpectrumMagnitudeMean")

        def get_output_shapes(self, inputs, shape_inputs, builder):
            out = trt.DimsExprs(2)
            out[0], out[1] = inputs[0][0], inputs[0][1]
            return [out]

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([])

        def clone(self):
            return SpectrumMagnitudeMeanPlugin()

    class _Creator(trt.IPluginCreatorV3One):
        def __init__(self, name: str, fields: list):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = name
            self.plugin_namespace = PLUGIN_DOMAIN
            self.plugin_version = PLUGIN_VERSION
            self.field_names = trt.PluginFieldCollection(fields)
            self.created: list = []  # what the parser asked for, for inspection

    class BandSplitCreator(_Creator):
        def __init__(self):
            super().__init__("BandSplit", [
                trt.PluginField("edges", np.array([], np.float32), trt.PluginFieldType.FLOAT32),
                trt.PluginField("centre", np.array([], np.int8), trt.PluginFieldType.CHAR),
            ])

        def create_plugin(self, name, fc, phase):
            fields = _fields(fc)
            edges = np.asarray(fields.get("edges", []), dtype=np.float32).reshape(-1)
            centre = _text(fields["centre"]) if "centre" in fields else "zero"
            if centre not in ("zero", "seed") or len(edges) > 15 or np.any(np.diff(edges) <= 0):
                raise ValueError(f"BandSplit {name}: bad fields edges={edges.tolist()} centre={centre!r}")
            self.created.append({"name": name, "edges": edges.tolist(), "centre": centre})
            return BandSplitPlugin(edges, centre)

    class SpectrumMagnitudeMeanCreator(_Creator):
        def __init__(self):
            super().__init__("SpectrumMagnitudeMean", [])

        def create_plugin(self, name, fc, phase):
            self.created.append({"name": name})
            return SpectrumMagnitudeMeanPlugin()

    return [BandSplitCreator(), SpectrumMagnitudeMeanCreator()]


_REGISTERED: list = []  # the registry does not own Python creators: keep them alive


def register_python_creators(trt) -> list:
    """Registers the Python stand-in creators in ``trt``'s registry (once per process); returns them."""
    registry = trt.get_plugin_registry()
    creators = [c for c in _REGISTERED if c.__class__.__module__ == __name__ and getattr(c, "_trt", None) is trt]
    if creators:
        return creators
    for creator in python_creators(trt):
        creator._trt = trt
        if not registry.register_creator(creator, PLUGIN_DOMAIN):
            raise SpecdetError(f"could not register the Python creator of {creator.name}: one is registered already")
        _REGISTERED.append(creator)
        creators.append(creator)
    return creators


# ---- TensorRT-RTX's parser and its missing unversioned library name ----


def rtx_library_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with ``LD_LIBRARY_PATH`` holding a ``libtensorrt_rtx.so`` link.

    TensorRT-RTX 1.7's ONNX parser opens ``libtensorrt_rtx.so`` to import a
    plugin node and aborts the process when it cannot; the pip wheel ships
    only ``libtensorrt_rtx.so.1``. The link lives in a cache directory, never
    in site-packages. Only a process started with this environment benefits.
    """
    libs = importlib.import_module("tensorrt_rtx_libs")
    target = next(Path(libs.__file__).parent.glob("libtensorrt_rtx.so.*"), None)
    if target is None:
        raise SpecdetError("tensorrt_rtx_libs has no libtensorrt_rtx.so.*")
    links = Path(os.environ.get("SPECDET_KERNELS_CACHE", Path.home() / ".cache" / "specdet" / "kernels")) / "trt-links"
    links.mkdir(parents=True, exist_ok=True)
    link = links / "libtensorrt_rtx.so"
    if not link.exists() or link.resolve() != target.resolve():
        tmp = links / f".libtensorrt_rtx.so.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    env = dict(os.environ if env is None else env)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(links), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


# ---- what the parser and the builder make of a file ----


def inspect_network(
    onnx_path: str | os.PathLike,
    *,
    trt_module: str = "tensorrt_rtx",
    plugins: str | os.PathLike | None = None,
    python_creators: bool = False,
    strip: bool = True,
    build: bool = True,
    batch: tuple[int, int, int] = (1, 2, 2),
) -> dict:
    """Parses ``onnx_path`` (the fallbacks of the registered specdet ops stripped) and builds an engine.

    Returns the specdet ops registered, the plugin layers (name, plugin
    name/namespace, input and output shapes and types), the number of layers,
    whether the parse and the build succeeded, and the parser's errors.
    """
    trt = importlib.import_module(trt_module)
    logger = trt.Logger(trt.Logger.ERROR)
    registry = trt.get_plugin_registry()
    if plugins is not None:
        trt_plugins.load_plugin_libraries(trt, [plugins])
    creators = register_python_creators(trt) if python_creators else []
    provided = registered_specdet_ops(registry)
    model = onnx.load(str(onnx_path))
    used = {n.op_type for n in trt_plugins.plugin_nodes(model)}
    stripped = trt_plugins.strip_plugin_fallbacks(model, provided) if strip else []
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    parsed = bool(parser.parse(model.SerializeToString()))
    report = {
        "trt": f"{trt_module} {trt.__version__}",
        "registered_specdet_ops": [op.name for op in provided],
        "specdet_ops_in_model": sorted(used),
        "stripped": stripped,
        "local_functions": [f.name for f in model.functions],
        "parsed": parsed,
        "errors": [parser.get_error(i).desc() for i in range(parser.num_errors)],
        "num_layers": network.num_layers,
        "plugin_layers": [],
    }
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in (trt.LayerType.PLUGIN_V3, trt.LayerType.PLUGIN_V2, trt.LayerType.PLUGIN):
            continue
        entry = {
            "name": layer.name, "type": str(layer.type),
            "inputs": [[list(layer.get_input(j).shape), str(layer.get_input(j).dtype)] for j in range(layer.num_inputs)],
            "outputs": [[list(layer.get_output(j).shape), str(layer.get_output(j).dtype)] for j in range(layer.num_outputs)],
        }
        if layer.type == trt.LayerType.PLUGIN_V3:
            layer.__class__ = trt.IPluginV3Layer
            core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
            entry["plugin"] = [core.plugin_name, core.plugin_namespace, core.plugin_version]
        report["plugin_layers"].append(entry)
    report["created"] = [dict(c, op=creator.name) for creator in creators for c in creator.created]
    if parsed and build:
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for j in range(network.num_inputs):
            tensor = network.get_input(j)
            shape = list(tensor.shape)
            low, opt, high = ([b if d < 0 else d for d in shape] for b in batch)
            profile.set_shape(tensor.name, low, opt, high)
        config.add_optimization_profile(profile)
        start = time.perf_counter()
        engine = builder.build_serialized_network(network, config)
        report["built"] = engine is not None
        report["build_seconds"] = round(time.perf_counter() - start, 2)
        report["engine_bytes"] = engine.nbytes if engine is not None else 0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m specdet.kernels.plugin_registry", description=inspect_network.__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("--trt", default="tensorrt_rtx", help="tensorrt or tensorrt_rtx (default)")
    parser.add_argument("--plugins", help="plugin library to load (libspecdet_trt_plugins.so)")
    parser.add_argument("--python-creators", action="store_true", help="register the Python stand-in creators")
    parser.add_argument("--keep-fallbacks", action="store_true", help="do not strip the local functions")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args(argv)
    report = inspect_network(
        args.onnx, trt_module=args.trt, plugins=args.plugins, python_creators=args.python_creators,
        strip=not args.keep_fallbacks, build=not args.no_build,
    )
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0 if report["parsed"] and report.get("built", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())

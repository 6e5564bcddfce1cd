"""``detect-build``: an exported ONNX file to a TensorRT or TensorRT-RTX engine and its manifest."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

from specdet import cli
from specdet.export.engine import ENGINE_LIBRARIES, build_engine, parse_batch


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="detect-build",
        description="Build a TensorRT (or TensorRT-RTX) engine from an ONNX file written by detect-export: strongly "
        "typed (an FP16 engine comes from an FP16 ONNX file), one optimisation profile over the batch range, "
        "manifest (model.engine.json) beside it. TensorRT-RTX builds on a machine without a GPU.",
    )
    parser.add_argument("onnx", help="an .onnx file from detect-export (its manifest inside)")
    parser.add_argument("-o", "--output", help="engine to write (default: the ONNX file's name with .engine)")
    parser.add_argument("--backend", choices=list(ENGINE_LIBRARIES),
                        help="library to build with (default: the first installed of tensorrt, tensorrt-rtx)")
    parser.add_argument("--batch", metavar="MIN:OPT:MAX",
                        help="optimisation profile of the batch axis (default: the manifest's range, OPT 8)")
    parser.add_argument("--timing-cache", metavar="FILE",
                        help="read and update this timing cache (TensorRT; TensorRT-RTX has none and ignores it)")
    parser.add_argument("--plugins", nargs="+", default=[], metavar="LIB",
                        help="TensorRT plugin libraries to load; the fallback bodies of the specdet ops they "
                        "provide are stripped so that the plugins are used")
    parser.add_argument("--workspace", type=cli.int_range(1, 1 << 22), metavar="MB", help="workspace memory limit in MB (default: "
                        "the library's)")
    parser.add_argument("--compute-capability", nargs="+", metavar="CC",
                        help="TensorRT-RTX targets, e.g. 8.6 12.0 (default: the GPU present; without one, every "
                        "Ampere-or-newer target the library knows)")
    parser.add_argument("--verbose", action="store_true", help="print the library's warnings")
    cli.add_debug_flag(parser)
    return parser


def _build(args: argparse.Namespace) -> int:
    result = build_engine(
        args.onnx, args.output, backend=args.backend, batch=parse_batch(args.batch) if args.batch else None,
        timing_cache=args.timing_cache, plugins=args.plugins, workspace_mb=args.workspace,
        compute_capabilities=args.compute_capability, verbose=args.verbose,
    )
    batch = result.profile["batch"]
    targets = f", compute capability {', '.join(result.compute_capabilities)}" if result.compute_capabilities else ""
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.precision}, {result.backend} "
          f"{result.library_version}, batch {batch['min']}:{batch['opt']}:{batch['max']}{targets}) "
          f"in {result.seconds:.1f} s")
    for plugin in result.plugins:
        print(f"  plugin {plugin['name']} (sha256 {plugin['sha256'][:12]}...): {', '.join(plugin['ops'])}")
    return 0


# Set in the child that main() starts with TensorRT-RTX's library link (see _rtx_plugin_env).
_WITH_RTX_LINK = "SPECDET_BUILD_WITH_RTX_LINK"


def _rtx_plugin_env(args: argparse.Namespace) -> dict | None:
    """The environment a TensorRT-RTX build with plugins must run in, or ``None`` if this one will do.

    TensorRT-RTX 1.7's ONNX parser opens ``libtensorrt_rtx.so`` when it
    imports a plugin node and aborts the process without it; its wheel ships
    only ``libtensorrt_rtx.so.1``. The dynamic linker reads
    ``LD_LIBRARY_PATH`` once, at start-up, so the build runs in a child
    process with a path that has the link (made by the kernels package).
    """
    if not args.plugins or os.environ.get(_WITH_RTX_LINK):
        return None
    rtx = args.backend == "tensorrt-rtx" or (
        args.backend is None and importlib.util.find_spec("tensorrt") is None
        and importlib.util.find_spec("tensorrt_rtx") is not None
    )
    if not rtx:
        return None
    try:
        from specdet.kernels.plugin_registry import rtx_library_env
    except ImportError:
        return None
    env = rtx_library_env()
    env[_WITH_RTX_LINK] = "1"
    return env


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = _rtx_plugin_env(args)
    if env is not None:
        argv = sys.argv[1:] if argv is None else argv
        return subprocess.call([sys.executable, "-m", "specdet.export.build_cli", *argv], env=env)
    return cli.run(_build, args)


if __name__ == "__main__":
    sys.exit(main())

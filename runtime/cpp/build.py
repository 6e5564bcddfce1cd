"""Build libspecdet_runtime and its programs with CMake (``runtime/cpp/CMakeLists.txt``).

    python -m specdet.runtime.cpp.build [--build-dir DIR] [--sanitize] [--tensorrt-root DIR]

Finds what the build needs: ONNX Runtime's C headers (:mod:`specdet.runtime.cpp.headers` fetches
Debian's when none are installed) and the ``libonnxruntime.so.1.*`` inside the installed onnxruntime
wheel, which becomes the library's default (see "onnxruntime_library" in specdet.h). Prints one
``name: path`` line per output. Without ``--build-dir``, builds go to a cache folder named by a hash of
the sources and options (``$SPECDET_CPP_CACHE``, default ``~/.cache/specdet/cpp``), so an unchanged
build is not redone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from specdet.errors import SpecdetError
from specdet.runtime.cpp.headers import fetch_headers

SOURCE_DIR = Path(__file__).resolve().parent
SOURCE_SUFFIXES = {".h", ".hpp", ".c", ".cpp", ".txt"}
OUTPUTS = {
    "libspecdet_runtime": "libspecdet_runtime.so",
    "specdet-score": "specdet-score",
    "specdet-example-c": "specdet-example-c",
    "specdet-abi-test": "specdet-abi-test",
    "specdet-hpp-test": "specdet-hpp-test",
}


class CppBuildError(SpecdetError):
    """CMake or the compiler failed; the message ends with the tail of their output."""


@dataclasses.dataclass
class CppBuild:
    build_dir: Path
    outputs: dict[str, Path]  # name -> path, as printed
    onnxruntime_library: Path | None  # the default the library dlopens

    @property
    def library(self) -> Path:
        return self.outputs["libspecdet_runtime"]


def find_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def find_onnxruntime_library() -> Path | None:
    """``$SPECDET_ONNXRUNTIME_LIBRARY``, else the library in the installed onnxruntime wheel."""
    named = os.environ.get("SPECDET_ONNXRUNTIME_LIBRARY")
    if named:
        return Path(named)
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted((Path(folder) / "capi").glob("libonnxruntime.so.1*"))
        if found:
            return found[-1]
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("SPECDET_CPP_CACHE", Path.home() / ".cache" / "specdet" / "cpp"))


def source_hash(options: dict) -> str:
    # The source folder too: CMake refuses a build folder made from another checkout of the same sources.
    digest = hashlib.sha256(repr((str(SOURCE_DIR), sorted(options.items()))).encode())
    for path in sorted(SOURCE_DIR.rglob("*")):
        if path.suffix in SOURCE_SUFFIXES and path.is_file():
            digest.update(str(path.relative_to(SOURCE_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _run(command: list[str], log: Path, verbose: bool) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        result = subprocess.run(command, stdout=None if verbose else out, stderr=None if verbose else subprocess.STDOUT,
                                check=False)
    if result.returncode != 0:
        tail = "" if verbose else "\n".join(log.read_text().splitlines()[-30:])
        raise CppBuildError(f"{' '.join(command[:3])} ... failed (exit {result.returncode}); log: {log}\n{tail}")


def build(build_dir: str | os.PathLike | None = None, *, sanitize: bool = False,
          tensorrt_root: str | os.PathLike | None = None, jobs: int = 2, verbose: bool = False) -> CppBuild:
    """Configure and build; returns what was built. Raises :class:`CppBuildError` (or SpecdetError for headers)."""
    if shutil.which("cmake") is None:
        raise CppBuildError("cmake not found on PATH: apt-get install cmake")
    if find_compiler() is None:
        raise CppBuildError("no C++ compiler found: apt-get install g++")
    library = find_onnxruntime_library()
    options = {
        "ort_include": str(fetch_headers()),
        "ort_library": str(library or ""),
        "sanitize": sanitize,
        "tensorrt_root": str(tensorrt_root or os.environ.get("TensorRT_ROOT", "")),
    }
    build_dir = Path(build_dir) if build_dir else cache_dir() / ("build-" + source_hash(options))
    build_dir.mkdir(parents=True, exist_ok=True)
    log = build_dir / "build.log"
    configure = [
        "cmake", "-S", str(SOURCE_DIR), "-B", str(build_dir),
        f"-DCMAKE_BUILD_TYPE={'RelWithDebInfo' if sanitize else 'Release'}",
        f"-DONNXRUNTIME_INCLUDE_DIR={options['ort_include']}",
        f"-DSPECDET_ONNXRUNTIME_LIBRARY={options['ort_library']}",
        f"-DSPECDET_SANITIZE={'ON' if sanitize else 'OFF'}",
    ]
    if options["tensorrt_root"]:
        configure += ["-DSPECDET_WITH_TENSORRT=ON", f"-DTensorRT_ROOT={options['tensorrt_root']}"]
    _run(configure, log, verbose)
    _run(["cmake", "--build", str(build_dir), "-j", str(jobs)], log, verbose)
    outputs = {name: build_dir / file for name, file in OUTPUTS.items() if (build_dir / file).is_file()}
    missing = sorted(set(OUTPUTS) - set(outputs))
    if missing:
        raise CppBuildError(f"the build finished without {', '.join(missing)}; log: {log}")
    return CppBuild(build_dir, outputs, library)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdet.runtime.cpp.build", description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", help="default: a cache folder named by the sources' hash")
    parser.add_argument("--sanitize", action="store_true", help="AddressSanitizer + UndefinedBehaviorSanitizer build")
    parser.add_argument("--tensorrt-root", help="TensorRT install with include/NvInfer.h: builds the TensorRT backend")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = build(args.build_dir, sanitize=args.sanitize, tensorrt_root=args.tensorrt_root, jobs=args.jobs,
                       verbose=args.verbose)
    except SpecdetError as err:
        print(f"python -m specdet.runtime.cpp.build: error: {err}", file=sys.stderr)
        return 2
    for name, path in result.outputs.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

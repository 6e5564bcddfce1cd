"""Build the kernel libraries with CMake (``kernels/CMakeLists.txt``), the one build entry.

    python -m specdet.kernels.build                      # CUDA library (+ plugins when TensorRT headers are found)
    python -m specdet.kernels.build --emulation          # the CPU emulation only (no nvcc needed)
    python -m specdet.kernels.build --arch "80;90" --tensorrt-root /opt/tensorrt --build-dir build/kernels

Finds what a machine with a pip-installed CUDA stack lacks: cuFFT's header and
library in the ``nvidia`` pip packages (torch's CUDA wheels bring them) when
the toolkit has none, and the CUDA runtime headers for the emulation build.
Without ``--build-dir``, builds go to a cache directory named by a hash of the
sources and options (``$SPECDET_KERNELS_CACHE``, default
``~/.cache/specdet/kernels``), so an unchanged library is never rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from specdet import cli
from specdet.errors import SpecdetError

KERNELS_DIR = Path(__file__).resolve().parent
SOURCE_SUFFIXES = {".cu", ".cuh", ".h", ".cpp", ".txt"}
LIBRARIES = {"kernels": "libspecdet_kernels.so", "plugins": "libspecdet_trt_plugins.so", "emulation": "libspecdet_kernels_emu.so"}


class KernelBuildError(SpecdetError):
    """CMake or the compiler failed; the message ends with the tail of their output."""


@dataclasses.dataclass
class KernelBuild:
    build_dir: Path
    kernels: Path | None  # libspecdet_kernels.so (CUDA)
    plugins: Path | None  # libspecdet_trt_plugins.so (only with TensorRT headers)
    emulation: Path | None  # libspecdet_kernels_emu.so
    host_check: Path | None  # the C++ host program against the headers


def find_nvcc() -> Path | None:
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root) / "bin" / "nvcc"
    return None


def _site_dirs() -> list[Path]:
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return [Path(d) for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def find_cufft_root() -> Path | None:
    """A pip package directory with ``include/cufft.h`` and ``lib/libcufft.so*`` (``nvidia/cu13``, ``nvidia/cufft``)."""
    for site_dir in _site_dirs():
        for header in sorted((site_dir / "nvidia").glob("*/include/cufft.h")):
            root = header.parent.parent
            if any((root / "lib").glob("libcufft.so*")):
                return root
    return None


def find_cuda_root() -> Path | None:
    """The CUDA toolkit: ``nvcc``'s (``/usr/local/bin/nvcc`` may be a wrapper script), ``$CUDA_HOME``, ``/usr/local/cuda``."""
    nvcc = find_nvcc()
    candidates = [nvcc.resolve().parent.parent] if nvcc else []
    candidates += [Path(p) for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if p]
    for root in candidates:
        if _complete_cuda_include(root / "include"):
            return root
    return None


def _complete_cuda_include(include: Path) -> bool:
    return all((include / name).is_file() for name in ("cuda_runtime_api.h", "cuda_fp16.h", "crt/host_defines.h"))


def find_cuda_include() -> Path | None:
    """CUDA runtime headers (``cuda_runtime_api.h``, ``cuda_fp16.h``): the toolkit's, else a complete pip package's."""
    root = find_cuda_root()
    if root is not None:
        return root / "include"
    for site_dir in _site_dirs():
        for include in sorted((site_dir / "nvidia").glob("*/include")):
            if _complete_cuda_include(include):
                return include
    return None


def source_hash(options: dict) -> str:
    # The source folder too: CMake refuses a build folder made from another checkout of the same sources.
    digest = hashlib.sha256(repr((str(KERNELS_DIR), sorted(options.items()))).encode())
    for path in sorted(KERNELS_DIR.rglob("*")):
        if path.suffix in SOURCE_SUFFIXES and "golden" not in path.parts:
            digest.update(str(path.relative_to(KERNELS_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("SPECDET_KERNELS_CACHE", Path.home() / ".cache" / "specdet" / "kernels"))


def _run(command: list[str], log: Path, verbose: bool) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        result = subprocess.run(command, stdout=None if verbose else out, stderr=None if verbose else subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "" if verbose else "\n".join(log.read_text().splitlines()[-30:])
        raise KernelBuildError(f"{' '.join(command[:3])} ... failed (exit {result.returncode}); log: {log}\n{tail}")


def build(
    build_dir: str | os.PathLike | None = None,
    *,
    cuda: bool = True,
    emulation: bool = False,
    archs: str | None = None,
    tensorrt_root: str | os.PathLike | None = None,
    jobs: int = 2,
    verbose: bool = False,
) -> KernelBuild:
    """Configure and build; returns the paths of what was built. Raises :class:`KernelBuildError`."""
    if shutil.which("cmake") is None:
        raise KernelBuildError("cmake not found on PATH: install CMake 3.24 or newer")
    options: dict = {"cuda": cuda, "emulation": emulation}
    if cuda:
        nvcc = find_nvcc()
        if nvcc is None:
            raise KernelBuildError("nvcc not found: install the CUDA toolkit (or build only the emulation: --emulation)")
        options["nvcc"] = str(nvcc)
        options["archs"] = archs or "75;80;86;89;90"
        toolkit = find_cuda_root()
        cufft_header = (toolkit or nvcc.resolve().parent.parent) / "include" / "cufft.h"
        cufft_root = None if cufft_header.is_file() else find_cufft_root()
        if cufft_root is None and not cufft_header.is_file():
            raise KernelBuildError("cuFFT not found in the CUDA toolkit nor in the pip packages: pip install nvidia-cufft")
        options["cufft_root"] = str(cufft_root or "")
        options["tensorrt_root"] = str(tensorrt_root or os.environ.get("TensorRT_ROOT", ""))
    if emulation:
        include = find_cuda_include()
        if include is None:
            raise KernelBuildError("CUDA runtime headers not found: install the CUDA toolkit or pip install nvidia-cuda-runtime")
        options["cuda_include"] = str(include)
    if build_dir is None:
        build_dir = cache_dir() / source_hash(options)
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    log = build_dir / "build.log"
    configure = [
        "cmake", "-S", str(KERNELS_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
        f"-DSPECDET_BUILD_CUDA={'ON' if cuda else 'OFF'}", f"-DSPECDET_BUILD_EMULATION={'ON' if emulation else 'OFF'}",
    ]
    if cuda:
        configure += [
            f"-DCMAKE_CUDA_COMPILER={options['nvcc']}", f"-DCMAKE_CUDA_ARCHITECTURES={options['archs']}",
            f"-DSPECDET_CUFFT_ROOT={options['cufft_root']}", f"-DTensorRT_ROOT={options['tensorrt_root']}",
        ]
    if emulation:
        configure.append(f"-DSPECDET_CUDA_INCLUDE={options['cuda_include']}")
    _run(configure, log, verbose)
    _run(["cmake", "--build", str(build_dir), "-j", str(jobs)], log, verbose)

    def built(name: str) -> Path | None:
        path = build_dir / name
        return path if path.is_file() else None

    return KernelBuild(
        build_dir=build_dir,
        kernels=built(LIBRARIES["kernels"]) if cuda else None,
        plugins=built(LIBRARIES["plugins"]) if cuda else None,
        emulation=built(LIBRARIES["emulation"]) if emulation else None,
        host_check=built("specdet_host_check") if cuda else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m specdet.kernels.build", description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", help="default: a cache directory named by the sources' hash")
    parser.add_argument("--arch", help='CUDA architectures, CMake syntax (default "75;80;86;89;90"; "native" on a GPU machine)')
    parser.add_argument("--tensorrt-root", help="TensorRT install with include/NvInfer.h (default: $TensorRT_ROOT)")
    parser.add_argument("--emulation", action="store_true", help="build only the CPU emulation library")
    parser.add_argument("--with-emulation", action="store_true", help="build the CPU emulation library too")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = build(
            args.build_dir, cuda=not args.emulation, emulation=args.emulation or args.with_emulation,
            archs=args.arch, tensorrt_root=args.tensorrt_root, jobs=args.jobs, verbose=args.verbose,
        )
    except SpecdetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for field in dataclasses.fields(result):
        print(f"{field.name}: {getattr(result, field.name) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

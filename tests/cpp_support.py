"""Shared by the C/C++ runtime tests: the builds (normal and sanitized), the artifacts and helpers.

The builds go through ``python -m specdet.runtime.cpp.build``'s function, cached by source hash, so
a second test session reuses them. Tests skip only when no C++ compiler exists: a missing CMake,
JSON library, decoder or ONNX Runtime header is a failure, since CI installs them (.ci/run).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from specdet.runtime.cpp import build as cpp_build

THUMBS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cnndetection-thumbs"

# The sanitized programs: errors fail the run (exit code) and leaks are reported; ONNX Runtime's own
# allocations at exit (its thread pools and environment, alive for the process by design) are not ours.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
}


def _require_compiler() -> None:
    if cpp_build.find_compiler() is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++): the C/C++ runtime cannot be built here")


@pytest.fixture(scope="session")
def cpp() -> cpp_build.CppBuild:
    _require_compiler()
    return cpp_build.build()


@pytest.fixture(scope="session")
def cpp_sanitized() -> cpp_build.CppBuild:
    _require_compiler()
    return cpp_build.build(sanitize=True)


def assert_sanitizer_clean(result: subprocess.CompletedProcess) -> None:
    """No sanitizer report in a sanitized program's stderr."""
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in result.stderr, result.stderr[-3000:]


def run(program: Path, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **(env or {}))
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=environment, check=False)


def png_bytes(pixels, color_type: int, bit_depth: int, *, palette: bytes = b"", trns: bytes = b"",
              exif: bytes = b"") -> bytes:
    """A PNG written by hand, for the kinds Pillow cannot save (16-bit RGB/RGBA/LA, 2-bit gray, ...).

    ``pixels`` is a list of rows, each a bytes object of packed samples (big-endian for 16 bits).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width = len(pixels), None
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    width = len(pixels[0]) * 8 // (channels * bit_depth)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in pixels)
    body = chunk(b"IHDR", header)
    if palette:
        body += chunk(b"PLTE", palette)
    if trns:
        body += chunk(b"tRNS", trns)
    if exif:
        body += chunk(b"eXIf", exif)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def exif_orientation_block(orientation: int) -> bytes:
    """A little-endian TIFF block with one IFD entry: Orientation (0x0112) = ``orientation``."""
    return b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)


MANIFEST_KEY = "specdet.manifest"  # where an exported ONNX file carries its manifest (specdet.manifest)


def embedded_manifest(path) -> dict:
    """The manifest inside an ONNX file, as JSON data."""
    from specdet import onnx_metadata

    return json.loads(onnx_metadata.read_metadata(path)[MANIFEST_KEY])


def copy_with_manifest(source, target, text: str | None):
    """A copy of the ONNX file ``source`` whose embedded manifest is ``text`` (None: no manifest inside)."""
    import onnx

    model = onnx.load(source)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != MANIFEST_KEY]
    del model.metadata_props[:]
    for key, value in kept + ([(MANIFEST_KEY, text)] if text is not None else []):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, target)
    return target

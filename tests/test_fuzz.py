"""Fuzz-style: a few hundred generated hostile images and manifests through ``detect-predict`` and ``Detector``.

Seeded, so a failure reproduces. Images: valid PNG, JPEG, GIF, WebP, BMP and
TIFF files, then truncations at random offsets, random header bytes, extreme
sizes written into the headers, empty files and random bytes named like
images, and PostScript (EPS) named like images, which Pillow would hand to
Ghostscript. Manifests: the stand-in's with random fields mutated (wrong
types, NaN, huge numbers, preprocessing constants that cannot normalise to
finite pixels, missing keys, truncated JSON, nesting thousands deep),
embedded in copies of the tiny ONNX file. Models: copies of the tiny ONNX
file with NaN or infinite weights (every image a non-finite-score error),
and checkpoints of a registered detector whose config or metadata asks for a
giant model or refers to itself many times. Everything runs in a child process with a capped address
space and a time limit per case (tests/fuzz_driver.py); the asserts: no
traceback and no internal error, every good image scored once, every bad
one reported once, and the command line and the API agree file by file.
"""

from __future__ import annotations

import copy
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import tiny_manifest
from specdet import onnx_metadata
from specdet.manifest import ONNX_METADATA_KEY

SEED = 20261130
MEMORY_GB = 6  # torch and onnxruntime need about 3 GB of address space; a 7 GB blow-up does not fit
SECONDS_PER_CASE = 5.0
FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}
EXTREME_SIZES = [(0, 0), (1, 0), (0, 1), (3, 100_000), (100_000, 3), (65_535, 65_535), (2**31 - 1, 1), (2**32 - 1, 2**32 - 1)]


def _valid(fmt: str, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, FORMATS[fmt])
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_size(fmt: str, data: bytes, width: int, height: int) -> bytes | None:
    """``data`` with its header claiming ``width x height`` (checksums kept valid), or None for formats not patched."""
    data = bytearray(data)
    if fmt == "png":  # IHDR starts at 8: length, type, width, height, ...
        ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
        return bytes(data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:])
    if fmt == "gif":  # logical screen (6) and the first image descriptor
        data[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        at = data.find(b"\x2c", 13)
        data[at + 5 : at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        return bytes(data)
    if fmt == "bmp":  # BITMAPINFOHEADER: signed 32-bit width and height (negative height: top-down)
        data[18:26] = struct.pack("<ii", width - 2**32 if width >= 2**31 else width, -height if height < 2**31 else -1)
        return bytes(data)
    if fmt == "jpg":  # SOF0: height, then width, 16 bits each
        at = data.find(b"\xff\xc0")
        data[at + 5 : at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
        return bytes(data)
    return None


def _hostile_images(folder: Path, rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """``(good, hostile)`` files written into ``folder``."""
    good, hostile = [], []

    def write(name: str, data: bytes, into: list) -> None:
        path = folder / name
        path.write_bytes(data)
        into.append(path)

    for fmt in FORMATS:
        valid = _valid(fmt, rng)
        write(f"good-{fmt}.{fmt}", valid, good)
        for i, offset in enumerate(sorted(rng.integers(0, len(valid), 12))):
            write(f"trunc-{fmt}-{i:02d}.{fmt}", valid[:offset], hostile)
        for i in range(10):
            mutated = bytearray(valid)
            for at in rng.integers(0, min(100, len(valid)), rng.integers(1, 5)):
                mutated[at] = int(rng.integers(0, 256))
            write(f"header-{fmt}-{i:02d}.{fmt}", bytes(mutated), hostile)
        for i, (width, height) in enumerate(EXTREME_SIZES):
            sized = _with_size(fmt, valid, width, height)
            if sized is not None:
                write(f"size-{fmt}-{i:02d}.{fmt}", sized, hostile)
    for suffix in ("png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "ico", "tga", "ppm"):
        write(f"empty.{suffix}", b"", hostile)
    magics = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00"]
    suffixes = ["png", "jpg", "gif", "webp", "bmp", "tiff", "ico", "jfif"]
    for i, suffix in enumerate(suffixes):  # PostScript: never opened (decoding EPS runs Ghostscript)
        body = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 40\n0 0 moveto 40 40 lineto stroke\nshowpage\n"
        dos = b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIII", 30, len(body), 0, 0, 0, 0) + b"\xff\xff" + body
        write(f"eps-{i:02d}.{suffix}", dos if i % 2 else body, hostile)
    for i in range(40):
        data = magics[i % len(magics)] + rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
        write(f"random-{i:02d}.{suffixes[i % len(suffixes)]}", data, hostile)
    return good, hostile


# Values a mutated field takes: wrong types, out of range, non-finite, huge, empty.
POOL = [None, -1, 0, 1, 2, 33, 2**63, 1e308, float("nan"), float("inf"), "x", "", "batch", [], {}, [1, 2, 3],
        ["batch", 3, 32], True, 0.5, {"library": "os"}, [{"name": "image"}], "float16", "bilinear", 16,
        1e-40, 3e38, 1e30, [1e-40, 1e-40, 1e-40], [3e38, 0.0, 0.0]]
# Where: every field the runtime reads, and the nested ones.
FIELDS = ["format", "version", "artifact", "architecture", "config", "preprocessing", "threshold", "inputs", "outputs",
          "batch", "precision", "fft_mode", "opset", "parent", "engine", "preprocessing.crop", "preprocessing.resize",
          "preprocessing.mean", "preprocessing.std", "preprocessing.interpolation", "preprocessing.mean.1",
          "preprocessing.std.0", "batch.min", "batch.max", "inputs.0", "inputs.0.name", "inputs.0.shape",
          "inputs.0.shape.0", "inputs.0.shape.2", "inputs.0.dtype", "outputs.0.name", "outputs.1", "outputs.1.shape"]


def _mutate(manifest: dict, rng: np.random.Generator) -> dict:
    data = copy.deepcopy(manifest)
    for _ in range(int(rng.integers(1, 4))):
        *parents, last = FIELDS[int(rng.integers(len(FIELDS)))].split(".")
        holder = _container(data, parents)
        value = copy.deepcopy(POOL[int(rng.integers(len(POOL)))])
        if isinstance(holder, dict) and not last.isdigit():
            if rng.random() < 0.15:
                holder.pop(last, None)
            else:
                holder[last] = value
        elif isinstance(holder, list) and last.isdigit() and int(last) < len(holder):
            holder[int(last)] = value
    return data


def _container(data, keys: list[str]):
    """``data[k0][k1]...``, or None where an earlier mutation replaced a container with something else."""
    for key in keys:
        if isinstance(data, dict) and not key.isdigit():
            data = data.get(key)
        elif isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        else:
            return None
    return data


def _hostile_manifests(folder: Path, tiny_onnx: Path, rng: np.random.Generator, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        text = json.dumps(_mutate(tiny_manifest(), rng))
        if i % 10 == 9:  # not JSON any more
            text = text[: int(rng.integers(0, len(text)))]
        elif i % 10 == 8:  # nested deeper than any parser's stack
            depth = int(rng.integers(50, 200_000))
            text = text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        path = folder / f"m{i:03d}.onnx"
        with open(path, "wb") as file:
            onnx_metadata.write_metadata(tiny_onnx, file, {ONNX_METADATA_KEY: text})
        paths.append(path)
    return paths


def _non_finite_models(folder: Path, tiny_onnx: Path, rng: np.random.Generator) -> list[Path]:
    """Copies of the tiny ONNX file with one weight tensor set to NaN, +inf or -inf (its manifest kept)."""
    import onnx
    from onnx import numpy_helper

    paths = []
    for i, value in enumerate([float("nan"), float("inf"), float("-inf"), float("nan")]):
        model = onnx.load(str(tiny_onnx))
        weights = [init for init in model.graph.initializer
                   if numpy_helper.to_array(init).dtype == np.float32 and numpy_helper.to_array(init).size > 1]
        init = weights[int(rng.integers(len(weights)))]
        array = numpy_helper.to_array(init).copy()
        array.flat[int(rng.integers(array.size))] = value
        init.CopyFrom(numpy_helper.from_array(array, init.name))
        paths.append(folder / f"nonfinite{i}.onnx")
        onnx.save(model, str(paths[-1]))
    return paths


def _self_referential(levels: int) -> list:
    bomb: list = [1]
    for _ in range(levels):
        bomb = [bomb, bomb]
    return bomb


def _hostile_checkpoints(folder: Path, rng: np.random.Generator) -> list[Path]:
    """A registered tiny detector's checkpoint with its config or metadata made hostile, or NaN weights."""
    import torch

    from specdet.models import checkpoint, create_model

    torch.manual_seed(0)
    base = checkpoint.save(create_model("dual_branch_tiny"), folder / "base.pth")
    changes = [
        ("config", "freq_channels", _self_referential(int(rng.integers(30, 64)))),
        ("config", "vit_embed_dim", _self_referential(40)),
        ("metadata", "history", _self_referential(int(rng.integers(30, 64)))),
        ("config", "input_size", 10**9),
        ("config", "vit_embed_dim", 65536),
        ("config", "vit_depth", 10**6),
        ("config", "num_bands", 2**40),
        ("config", "fusion_dim", float("nan")),
        ("config", "vit_name", {"a": _self_referential(50)}),
        ("preprocessing", "std", [1e-40] * 3),
        ("state_dict", None, float("nan")),
    ]
    paths = []
    for i, (section, key, value) in enumerate(changes):
        content = torch.load(base, weights_only=True)
        if section == "state_dict":
            name = sorted(content["state_dict"])[int(rng.integers(len(content["state_dict"])))]
            while not content["state_dict"][name].is_floating_point():
                name = sorted(content["state_dict"])[int(rng.integers(len(content["state_dict"])))]
            content["state_dict"][name].view(-1)[0] = value
        else:
            content[section][key] = value
        paths.append(folder / f"hostile{i:02d}.pth")
        torch.save(content, paths[-1])
    return paths


def _strict_json(text: str):
    """``json.loads`` refusing the bare NaN / Infinity that Python's encoder writes by default."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_hostile_files_and_manifests_never_crash_hang_or_go_missing(tiny_onnx, tmp_path):
    rng = np.random.default_rng(SEED)
    images = tmp_path / "images"
    images.mkdir()
    good, hostile = _hostile_images(images, rng)
    manifests = _hostile_manifests(tmp_path, tiny_onnx, rng, 120)
    non_finite = _non_finite_models(tmp_path, tiny_onnx, rng)
    checkpoints = _hostile_checkpoints(tmp_path, rng)
    assert len(good) + len(hostile) + len(manifests) >= 300
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({
        "artifact": str(tiny_onnx), "folder": str(images), "images": [str(p) for p in good + hostile],
        "manifests": [{"artifact": str(p), "image": str(good[0])} for p in manifests + non_finite],
        "checkpoints": [str(p) for p in checkpoints],
    }))
    driver = Path(__file__).with_name("fuzz_driver.py")
    done = subprocess.run([sys.executable, str(driver), str(cases), str(MEMORY_GB), str(SECONDS_PER_CASE)],
                          capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["slowest"] < SECONDS_PER_CASE, summary["slowest_case"]

    # The API: every good image scored; each file one outcome.
    outcomes = summary["images"]
    assert all(outcomes[str(p)] is None for p in good), {str(p): outcomes[str(p)] for p in good}
    skipped_by_api = {path for path, error in outcomes.items() if error is not None}
    assert len(skipped_by_api) > len(hostile) / 2  # the generator makes hostile files, mostly unreadable ones

    # The CLI on the folder: no traceback; each file scored once or reported once, as the API decided.
    cli = summary["cli"]
    assert cli["code"] == (1 if skipped_by_api else 0), cli["stderr"][-2000:]
    scored = [row["path"] for row in _strict_json(cli["stdout"])]
    lines = cli["stderr"].splitlines()
    reported = [line[len("skipped "):].split(": ", 1)[0] for line in lines if line.startswith("skipped ")]
    assert all(line.startswith(("skipped ", "note: ")) for line in lines), lines
    assert len(scored) == len(set(scored)) and len(reported) == len(set(reported))
    assert set(scored) == set(outcomes) - skipped_by_api and set(reported) == skipped_by_api

    assert all(outcomes[str(p)] is not None for p in hostile if p.name.startswith("eps-"))

    # Manifests: a one-line user error (2), a score (0) or, where the constants are finite but the model's
    # output is not, a non-finite-score skip (1); never an internal error, never a NaN; the API agrees.
    # The models with non-finite weights: every image a non-finite-score skip.
    for path, outcome in zip(manifests + non_finite, summary["manifests"]):
        assert outcome["code"] in ((1,) if path in non_finite else (0, 1, 2)), (path.name, outcome)
        if outcome["code"] == 2:
            assert outcome["stdout"] == "" and len(outcome["stderr"].splitlines()) == 1, (path.name, outcome)
            assert outcome["api"] is not None, (path.name, outcome)
        elif outcome["code"] == 1:
            assert _strict_json(outcome["stdout"]) == [] and outcome["api"] is None, (path.name, outcome)
            assert outcome["stderr"].splitlines()[0].endswith(": the model produced a non-finite score"), outcome
        else:
            assert len(_strict_json(outcome["stdout"])) == 1 and outcome["api"] is None, (path.name, outcome)
    assert sum(o["code"] == 2 for o in summary["manifests"]) > len(manifests) / 2

    # Checkpoints asking for giant or self-referential configs, or holding NaN: refused in one line, within
    # the capped memory, by the CLI and the API.
    for path, outcome in zip(checkpoints, summary["checkpoints"]):
        assert outcome["code"] == 2 and outcome["stdout"] == "", (path.name, outcome)
        assert len(outcome["stderr"].splitlines()) == 1 and outcome["api"] is not None, (path.name, outcome)

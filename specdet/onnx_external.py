"""The external data files an ONNX file refers to, checked before anything loads it.

A tensor whose weights live outside the ``.onnx`` file (``data_location:
EXTERNAL``) names its file by a ``location`` relative to the model's folder.
ONNX Runtime, OpenVINO, TensorRT's parser and ``onnx.load`` all follow that
name wherever it leads: an absolute path, ``../``, a symlink to another
folder, a FIFO (a read that never ends). An engine built from such a file
carries the bytes of whatever file it pointed at. So every command that reads
an ONNX artifact calls :func:`external_data_files` first: each location must
be relative, resolve (links followed) to a regular file inside the model's
folder without ``..``, and hold the byte ranges its tensors read; anything else is one line
saying what to do. The same list is what a copy of the model needs beside it
(``detect-triton`` copies it).

The file is walked in the protobuf wire format, as :mod:`specdet.onnx_metadata`
does, over a memory map: only the tensors' small fields are touched, never
their weights, so a 1 GB file costs milliseconds.
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path

from specdet.errors import SpecdetError
from specdet.onnx_metadata import not_onnx

# Field numbers (onnx.proto) of the messages on the way to every TensorProto:
# message name -> {field number: the message that field holds}.
_PATHS = {
    "Model": {7: "Graph", 20: "TrainingInfo", 25: "Function"},
    "TrainingInfo": {1: "Graph", 2: "Graph"},
    "Function": {7: "Node", 11: "Attribute"},
    "Graph": {1: "Node", 5: "Tensor", 15: "SparseTensor"},
    "Node": {5: "Attribute"},
    "Attribute": {5: "Tensor", 6: "Graph", 10: "Tensor", 11: "Graph", 22: "SparseTensor", 23: "SparseTensor"},
    "SparseTensor": {1: "Tensor", 2: "Tensor"},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_KEY, _VALUE = 1, 2
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Subgraphs nest (If, Loop, Scan); a file nested deeper than this is not an export.
_MAX_DEPTH = 64


def external_data_files(path: str | os.PathLike) -> list[str]:
    """The external data locations of the ONNX file at ``path`` (relative to its folder), each checked.

    Empty for a file that keeps its weights inside. Raises a one-line
    :class:`SpecdetError` for a location that is absolute, leaves the folder
    (by ``..`` or a link), is missing or not a regular file, or is shorter
    than a tensor's ``offset + length``.
    """
    path = Path(path)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            return []
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            needs: dict[str, int] = {}  # location -> bytes its tensors read
            _walk(data, 0, size, "Model", path, needs, 0)
    folder = Path(os.path.realpath(path.parent))
    for location, end in needs.items():
        _check_location(path, folder, location, end)
    return sorted(needs)


def _check_location(model: Path, folder: Path, location: str, end: int) -> None:
    where = f"{model.name}'s external data {location!r}"
    keep = f"keep the data file in {model.parent}/ beside the model (onnx.save(..., location=NAME)), not a link elsewhere"
    # ".." is refused even where it stays inside: a copy of the folder (detect-triton) must resolve the same.
    if not location or os.path.isabs(location) or "\0" in location or ".." in Path(location).parts:
        raise SpecdetError(f"{where} is not a file name relative to the model's folder: {keep}")
    target = Path(os.path.realpath(folder / location))
    if not target.is_relative_to(folder):
        raise SpecdetError(f"{where} resolves to {target}, outside the model's folder {folder}: {keep}")
    try:
        info = os.stat(target)
    except OSError:
        raise SpecdetError(f"{where} is missing: copy it into {model.parent}/ beside the model") from None
    if not stat.S_ISREG(info.st_mode):
        raise SpecdetError(f"{where} is not a regular file (a folder, FIFO or device): {keep}")
    if info.st_size < end:
        raise SpecdetError(f"{where} holds {info.st_size} bytes but the model reads up to byte {end}: it is truncated "
                           "or belongs to another model; copy the model and its data file again")


def _walk(data: mmap.mmap, start: int, end: int, kind: str, path: Path, needs: dict[str, int], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise not_onnx(path, "messages nested too deep")
    if kind == "Tensor":
        _tensor(data, start, end, path, needs)
        return
    children = _PATHS[kind]
    for number, payload_start, payload_end in _fields(data, start, end, path):
        child = children.get(number)
        if child is not None:
            _walk(data, payload_start, payload_end, child, path, needs, depth + 1)


def _tensor(data: mmap.mmap, start: int, end: int, path: Path, needs: dict[str, int]) -> None:
    entries, external = {}, False
    for number, payload_start, payload_end in _fields(data, start, end, path, varints=True):
        if number == _TENSOR_DATA_LOCATION:
            external = payload_start == _EXTERNAL  # for a varint, _fields yields its value
        elif number == _TENSOR_EXTERNAL_DATA:
            entry = {_KEY: b"", _VALUE: b""}
            for field, value_start, value_end in _fields(data, payload_start, payload_end, path):
                entry[field] = data[value_start:value_end]
            entries[entry[_KEY].decode(errors="replace")] = entry[_VALUE].decode(errors="replace")
    if not external and "location" not in entries:
        return
    location = entries.get("location", "")
    try:
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", 0))
    except ValueError:
        raise not_onnx(path, f"external data {location!r} with an offset or length that is not a number") from None
    if offset < 0 or length < 0:
        raise not_onnx(path, f"external data {location!r} with a negative offset or length")
    needs[location] = max(needs.get(location, 0), offset + length)


def _fields(data: mmap.mmap, start: int, end: int, path: Path, *, varints: bool = False):
    """``(number, payload start, payload end)`` of each length-delimited field in ``data[start:end]``.

    With ``varints``, varint fields come too, as ``(number, value, value)``.
    """
    position = start
    while position < end:
        tag, position = _varint(data, position, end, path)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise not_onnx(path, "field number 0")
        if wire_type == _VARINT:
            value, position = _varint(data, position, end, path)
            if varints:
                yield number, value, value
        elif wire_type in (_I64, _I32):
            position += 8 if wire_type == _I64 else 4
        elif wire_type == _LEN:
            length, position = _varint(data, position, end, path)
            if position + length > end:
                raise not_onnx(path, "a field runs past the end of its message")
            yield number, position, position + length
            position += length
        else:
            raise not_onnx(path, f"wire type {wire_type}")
    if position > end:
        raise not_onnx(path, "a field runs past the end of its message")


def _varint(data: mmap.mmap, position: int, end: int, path: Path) -> tuple[int, int]:
    value, shift = 0, 0
    while position < end:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            break
    raise not_onnx(path, "a field ends inside a number")

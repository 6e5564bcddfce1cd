"""Protocol-buffer text format, written from plain dicts: Triton's ``config.pbtxt`` without its protobuf classes.

Writing needs no tritonclient (which the ``serve`` extra brings); the tests
parse every file written with Triton's own ``model_config_pb2``. A dict is a
message; a list of dicts is a repeated message field (also a map: entries
``{"key": ..., "value": ...}``); a list of scalars is a repeated scalar;
:class:`Enum` values are written bare (``TYPE_FP32``), strings quoted.
"""

from __future__ import annotations

from typing import Any


class Enum(str):
    """An enum value: written without quotes."""


def dumps(message: dict[str, Any], indent: int = 0) -> str:
    """The text format of ``message`` (fields in the dict's order)."""
    pad = "  " * indent
    lines = []
    for name, value in message.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{name} {{\n{dumps(value, indent + 1)}{pad}}}\n")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.extend(f"{pad}{name} {{\n{dumps(v, indent + 1)}{pad}}}\n" for v in value)
        elif isinstance(value, list):
            lines.append(f"{pad}{name}: [{', '.join(_scalar(v) for v in value)}]\n")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}\n")
    return "".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_escape(byte) for byte in value.encode("utf-8")) + '"'
    raise TypeError(f"no text format for {type(value).__name__}")


def _escape(byte: int) -> str:
    """One UTF-8 byte inside a quoted string: C escapes, the same in every protobuf text parser."""
    char = chr(byte)
    if char in '"\\':
        return "\\" + char
    return char if 0x20 <= byte < 0x7F else f"\\{byte:03o}"

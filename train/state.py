"""The resume state: what ``detect-train --resume`` needs beyond the best checkpoint.

Written beside the output after every epoch (``model.pth`` -> ``model.state.pth``):
the resolved training config, the number of finished epochs, the model and
optimizer (and fp16 gradient scaler) state of the last epoch, and the best
epoch so far. The best model itself is the output checkpoint. Like
checkpoints, the file holds only plain containers and tensors and is read
with ``torch.load(weights_only=True)``. Random state is not saved: every
epoch reseeds from (seed, epoch, rank), so a resumed run repeats the
uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from specdet.errors import SpecdetError
from specdet.files import atomic_write
from specdet.models.checkpoint import FORMAT as CHECKPOINT_FORMAT
from specdet.models.checkpoint import load_tensors

FORMAT = "specdet-train-state"
VERSION = 1


def state_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".state.pth")


def log_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".log.jsonl")


def save_state(path: str | os.PathLike, **fields: Any) -> None:
    """``fields``: config (dict), epoch (finished epochs), model, optimizer, scaler (or None), best (dict)."""
    payload = {"format": FORMAT, "version": VERSION, **fields}
    atomic_write(path, lambda file: torch.save(payload, file))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecdetError(f"resume state {path} not found: pass the .state.pth written beside the output")
    try:
        content = load_tensors(path)
    except Exception as err:  # torch raises many types here: pickle, zip, runtime errors
        reason = type(err).__name__
        raise SpecdetError(f"{path} is not a readable training state ({reason}): pass a .state.pth") from err
    kind = content.get("format") if isinstance(content, dict) else None
    if kind == CHECKPOINT_FORMAT:
        raise SpecdetError(f"{path} is a model checkpoint: resume from the .state.pth written beside it")
    if kind != FORMAT:
        raise SpecdetError(f"{path} is not a training state: pass the .state.pth written beside the output")
    if content.get("version") != VERSION:
        raise SpecdetError(f"{path} is training state version {content.get('version')!r}; this specdet reads {VERSION}")
    return content

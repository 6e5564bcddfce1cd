"""Checkpoints: one ``.pth`` file holding a detector's weights and what it needs to run.

A checkpoint is ``torch.save`` of a plain dict::

    {"format": "specdet-checkpoint", "version": 1,
     "architecture": "rine_ssca", "config": {...}, "state_dict": {...},
     "preprocessing": {...}, "threshold": 0.5, "metadata": {...}}

Only plain containers and tensors go in, so :func:`load` can read it with
``torch.load(weights_only=True)``, which refuses pickled Python objects: loading
a checkpoint never runs code from the file. A bare state dict (what
``torch.save(model.state_dict())`` writes) is also accepted when the caller
names the architecture.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from specdet import models
from specdet.errors import SpecdetError
from specdet.files import atomic_write, file_sha256
from specdet.limits import is_probability
from specdet.manifest import json_problem, preprocessing_problems

FORMAT = "specdet-checkpoint"
VERSION = 1
DEFAULT_THRESHOLD = 0.5

# How many offending parameter names an incompatibility message lists.
_NAMES_SHOWN = 3


@dataclasses.dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # in eval mode
    architecture: str
    config: dict[str, Any]  # create_model(architecture, **config) rebuilds the model
    preprocessing: dict[str, Any]
    threshold: float  # probability at or above which an image is called fake
    metadata: dict[str, Any]
    path: Path
    sha256: str  # of the file, recorded by the exporter as the parent hash


def save(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    preprocessing: Mapping[str, Any] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    **metadata: Any,
) -> Path:
    """Write ``model`` (built by ``specdet.models.create_model``) to ``path``; returns the path."""
    architecture = getattr(model, "arch_name", None)
    config = getattr(model, "config", None)
    if architecture is None or not dataclasses.is_dataclass(config):
        raise SpecdetError(
            f"{type(model).__name__} has no arch_name/config: build it with specdet.models.create_model"
        )
    if preprocessing is None:
        preprocessing = models.default_preprocessing(architecture)
    state_dict = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    broken = non_finite(state_dict)
    if broken:
        raise SpecdetError(f"not saving {path}: {_names(broken)} hold NaN or infinite values (training diverged?); "
                           "lower the learning rate or load an earlier checkpoint")
    problem = json_problem(dict(metadata))
    if problem is not None:
        raise SpecdetError(f"not saving {path}: its metadata cannot be written as JSON ({problem}); fix the call")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture,
        # Every field, not just the overrides: the file then rebuilds the same
        # model even if a registry default changes later.
        "config": dataclasses.asdict(config),
        "state_dict": state_dict,
        "preprocessing": dict(preprocessing),
        "threshold": check_threshold(threshold, "the threshold to save"),
        "metadata": dict(metadata),
    }
    atomic_write(path, lambda file: torch.save(payload, file))
    return Path(path)


def non_finite(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors in ``state_dict`` that hold NaN or an infinity."""
    return [name for name, t in state_dict.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")
    return f"{len(names)} tensor(s) ({shown})"


def check_threshold(value: Any, where: str) -> float:
    """``value`` as a decision threshold: a finite probability in [0, 1], or a one-line error naming ``where``.

    A threshold of 5 or NaN would call every image "real" without a word.
    """
    if not is_probability(value):
        raise SpecdetError(f"{where} is {value!r}: a threshold is a probability from 0 to 1; fix or re-save the model")
    return float(value)


def load(path: str | os.PathLike, *, arch: str | None = None) -> LoadedCheckpoint:
    """Read a checkpoint (or a bare state dict, given ``arch``) and rebuild its model."""
    path = Path(path)
    if not path.is_file():
        raise SpecdetError(f"checkpoint {path} not found: check the path")
    content = _read(path)
    if isinstance(content, dict) and content.get("format") == FORMAT:
        fields = _checkpoint_fields(path, content, arch)
    elif _is_state_dict(content):
        fields = _state_dict_fields(path, content, arch)
    else:
        raise SpecdetError(f"{path} is not a specdet checkpoint or a state dict: pass a .pth written by detect-train")
    model = _build(path, fields["architecture"], fields["config"])
    _load_weights(path, model, fields.pop("state_dict"))
    return LoadedCheckpoint(model=model.eval(), path=path, sha256=file_sha256(path), **fields)


def load_tensors(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without the warnings of torch's safe unpickler.

    Its warnings (a pickle protocol it did not expect, say) come before the
    error that refuses the file and say nothing the error does not: the
    caller's one line is all the user should see.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
        return torch.load(path, map_location="cpu", weights_only=True)


def _read(path: Path) -> Any:
    try:
        return load_tensors(path)
    except Exception as err:  # torch raises many types here: pickle, zip, runtime errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only load failed" in reason.lower():
            raise SpecdetError(
                f"{path} holds pickled Python objects, which are refused for safety: "
                "save only tensors and plain containers (specdet.models.checkpoint.save does)"
            ) from err
        raise SpecdetError(
            f"{path} is not a readable checkpoint ({reason}): pass a .pth written by detect-train"
        ) from err


def _is_state_dict(content: Any) -> bool:
    return (
        isinstance(content, dict)
        and bool(content)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items())
    )


def _checkpoint_fields(path: Path, content: dict, arch: str | None) -> dict[str, Any]:
    if content.get("version") != VERSION:
        raise SpecdetError(
            f"{path} is checkpoint version {content.get('version')!r}; this specdet reads version {VERSION}: "
            "upgrade specdet or re-save the checkpoint"
        )
    missing = [k for k in ("architecture", "config", "state_dict", "preprocessing", "threshold") if k not in content]
    if missing:
        raise SpecdetError(f"{path} lacks {', '.join(missing)}: re-save it with specdet.models.checkpoint.save")
    if arch is not None and arch != content["architecture"]:
        raise SpecdetError(f"{path} holds a {content['architecture']} model, not {arch}: drop --arch")
    sections = {"config": content["config"], "preprocessing": content["preprocessing"],
                "metadata": content.get("metadata") or {}}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise SpecdetError(f"{path}: its {key} is not a dict: re-save it with specdet.models.checkpoint.save")
    if not _is_state_dict(content["state_dict"]):
        raise SpecdetError(f"{path}: its state_dict is not named tensors: re-save it with "
                           "specdet.models.checkpoint.save")
    problem = json_problem(sections["metadata"])
    if problem is not None:
        raise SpecdetError(f"{path}: its metadata cannot be written as JSON ({problem}): re-save it with "
                           "specdet.models.checkpoint.save")
    problems = preprocessing_problems(content["preprocessing"])
    if problems:
        raise SpecdetError(f"{path}: invalid preprocessing ({'; '.join(problems)}): re-save it with the right "
                           "constants")
    return {
        "architecture": content["architecture"],
        "config": dict(content["config"]),
        "state_dict": content["state_dict"],
        "preprocessing": dict(content["preprocessing"]),
        "threshold": check_threshold(content["threshold"], f"{path}'s threshold"),
        "metadata": dict(sections["metadata"]),
    }


def _state_dict_fields(path: Path, state_dict: dict, arch: str | None) -> dict[str, Any]:
    if arch is None:
        raise SpecdetError(
            f"{path} is a bare state dict that does not name its architecture: "
            f"pass --arch NAME; known: {', '.join(models.list_models())}"
        )
    _check_known(arch)
    return {
        "architecture": arch,
        "config": {},
        "state_dict": state_dict,
        "preprocessing": dict(models.default_preprocessing(arch)),
        "threshold": DEFAULT_THRESHOLD,
        "metadata": {},
    }


def _check_known(arch: str) -> None:
    known = models.list_models()
    if arch not in known:
        raise SpecdetError(f"unknown architecture {arch!r}: known: {', '.join(known)}")


def _build(path: Path, arch: str, config: dict[str, Any]) -> torch.nn.Module:
    _check_known(arch)
    try:
        return models.create_model(arch, **config)
    except SpecdetError:
        raise
    except Exception as err:  # noqa: BLE001
        # Each field was checked (specdet.models.registry); what the constructors (torch, timm, transformers)
        # still refuse, in types of their own, is a combination (a width the heads do not divide): the config's.
        raise SpecdetError(
            f"{path}: cannot build {arch} from its saved config ({err}): re-save it with this specdet"
        ) from err


def _load_weights(path: Path, model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    # Compared here rather than left to load_state_dict, whose message is many
    # lines long and stops at the first shape mismatch.
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    for names, what in ((missing, "missing"), (unexpected, "unexpected"), (mismatched, "of the wrong shape")):
        if names:
            shown = ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")
            problems.append(f"{len(names)} {what} ({shown})")
    if problems:
        raise SpecdetError(
            f"{path} does not fit {type(model).__name__}: {'; '.join(problems)} tensors: "
            "check --arch and the config it was trained with"
        )
    # After the shapes: a tensor is then no larger than the model's own (a stride-0 view claims any size).
    broken = non_finite(state_dict)
    if broken:
        raise SpecdetError(f"{path}: {_names(broken)} hold NaN or infinite values, so every score would be NaN "
                           "(a diverged training run?): use an earlier checkpoint or retrain with a lower --lr")
    model.load_state_dict(state_dict)

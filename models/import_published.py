"""Importing a published detector: its released head file and a local CLIP tower into one specdet checkpoint.

``detect-import`` (``import_cli.py``) calls :func:`import_published`. The
head file is read with ``torch.load(weights_only=True)`` only; the CLIP tower
comes from a local Hugging Face folder (the ``openai/clip-vit-large-patch14``
layout: ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``) or
from a state dict of OpenAI's CLIP (``visual.*`` names), converted here to
transformers' names. Every tensor of the model must come from one of the two
sources with the shape the model has, and every tensor of the head file and
of the vision tower must be used: anything else is a one-line error and
nothing is written. What is deliberately not used: the text tower of a full
CLIP, and CLIP's visual projection for RINE (which reads the blocks, not the
image embedding).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from specdet import models
from specdet.errors import SpecdetError
from specdet.files import check_output, file_sha256
from specdet.models import checkpoint


@dataclasses.dataclass(frozen=True)
class Publication:
    name: str
    archs: tuple[str, ...]  # registry variants it imports into; the first is the published size
    paper: str
    code: str
    licence: str
    head_files: str  # the released head files, in the repository at ``code``
    head_keys: str  # how its head file's keys look, for the wrong-file message
    dropped_tower_keys: tuple[str, ...] = ()  # tower tensors (transformers' names) this model does not use


PUBLISHED = {
    "rine": Publication(
        name="RINE",
        archs=("rine_clip_l14", "rine_tiny"),
        paper="C. Koutlis, S. Papadopoulos: Leveraging Representations from Intermediate Encoder-blocks for "
        "Synthetic Image Detection, ECCV 2024",
        code="https://github.com/mever-team/rine",
        licence="Apache-2.0",
        head_files="ckpt/model_1class_trainable.pth, model_2class_trainable.pth, model_4class_trainable.pth, "
        "model_ldm_trainable.pth",
        head_keys="alpha, proj1.*, proj2.*, head.*",
        dropped_tower_keys=("visual_projection.weight",),
    ),
    "univfd": Publication(
        name="UnivFD",
        archs=("univfd_clip_l14", "univfd_tiny"),
        paper="U. Ojha, Y. Li, Y. J. Lee: Towards Universal Fake Image Detectors that Generalize Across Generative "
        "Models, CVPR 2023",
        code="https://github.com/WisconsinAIVision/UniversalFakeDetect",
        licence="MIT",
        head_files="pretrained_weights/fc_weights.pth",
        head_keys="weight [1, 768], bias [1]",
    ),
}
CLIP_LICENCE = "MIT (OpenAI CLIP)"

# The tower's shape, as the config fields of models/published.py name it.
TOWER_FIELDS = ("input_size", "clip_hidden", "clip_layers", "clip_heads", "clip_intermediate", "patch_size")
# Saved by older transformers as a persistent buffer; rebuilt by the model, so it is not a weight.
_HF_IGNORED = re.compile(r"vision_model\.embeddings\.position_ids")
_NAMES_SHOWN = 3


def import_published(kind: str, head: str | os.PathLike, clip: str | os.PathLike, output: str | os.PathLike,
                     arch: str | None = None) -> tuple[Path, str, dict]:
    """Write the checkpoint of the published ``kind`` ("rine", "univfd"); returns its path, architecture, config."""
    publication = PUBLISHED[kind]
    arch = arch or publication.archs[0]
    if arch not in publication.archs:
        raise SpecdetError(f"--arch {arch} is not a {publication.name} variant: use {', '.join(publication.archs)}")
    head, clip = Path(head), Path(clip)
    check_output(output, "checkpoint", inputs=(head, clip))
    overrides, head_state = map_head(kind, read_tensors(head, f"{publication.name} head file"), head)
    tower, clip_files, clip_format = read_clip(clip)
    tower = {k: v for k, v in tower.items() if k not in publication.dropped_tower_keys}
    config = models.model_config(arch, **overrides)
    _check_tower_shape(clip, tower, config, arch)
    with torch.device("meta"):  # shapes only: the weights come from the files
        model = models.create_model(arch, **overrides)
    # FP32 throughout: OpenAI's released tower is FP16, and widening it is exact.
    state = {k: v.float() for k, v in {**head_state, **{_model_key(k): v for k, v in tower.items()}}.items()}
    _check_fit(model, state, head, clip, publication)
    model.load_state_dict(state, assign=True)
    metadata = {
        "model": publication.name, "paper": publication.paper, "code": publication.code,
        "licence": publication.licence, "clip_licence": CLIP_LICENCE,
        "head": {"file": head.name, "sha256": file_sha256(head)},
        "clip": {"format": clip_format, "files": [{"file": f.name, "sha256": file_sha256(f)} for f in clip_files]},
    }
    path = checkpoint.save(model, output, published=metadata)
    return path, arch, overrides


def _model_key(name: str) -> str:
    """A tower tensor's name in models/published.py from its name in transformers' CLIPVisionModelWithProjection."""
    return "projection.weight" if name == "visual_projection.weight" else "backbone." + name.removeprefix("vision_model.")


# ---- files ---------------------------------------------------------------------------------------


def read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A file of named tensors, read with ``torch.load(weights_only=True)``; anything else is a one-line error."""
    if not path.is_file():
        raise SpecdetError(f"{what} {path} not found: check the path")
    if _is_torchscript(path):
        raise SpecdetError(
            f"{path} is a TorchScript archive (as OpenAI's ViT-L-14.pt is), which is not loaded because loading it "
            "runs its code: save its state dict once with python -c \"import torch; torch.save(torch.jit.load("
            f"'{path.name}', map_location='cpu').state_dict(), 'ViT-L-14.state.pth')\" and pass that"
        )
    try:
        content = checkpoint.load_tensors(path)
    except Exception as err:  # torch raises many types here: pickle, zip, runtime errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # The safe unpickler names the class or function a pickle would import; any other failure
        # (a text file: "Unsupported operand") is a file that is not a tensor file at all.
        if "unsupported global" in str(err).lower():
            raise SpecdetError(f"{path} holds pickled Python objects, which are refused for safety: "
                               f"pass the {what} as released (tensors only)") from err
        if "weights only load failed" in reason.lower():
            reason = "not a torch.save file"
        raise SpecdetError(f"{path} is not a readable {what} ({reason}): it may be truncated; download it again") \
            from err
    if not (isinstance(content, dict) and content
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items())):
        raise SpecdetError(f"{path} is not a {what}: it does not hold named tensors")
    return dict(content)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False  # torch.load says what is wrong


def read_clip(source: Path) -> tuple[dict[str, torch.Tensor], list[Path], str]:
    """The vision tower of a CLIP under transformers' names (``vision_model.*``, ``visual_projection.weight``),
    the files it came from, and their format ("huggingface" or "openai")."""
    if source.is_dir():
        return _read_hf(source)
    state = read_tensors(source, "CLIP state dict")
    if not any(k.startswith("visual.") for k in state):
        raise SpecdetError(f"{source} is not OpenAI CLIP's state dict (no visual.* tensors): pass ViT-L-14.pt's "
                           "state dict or a Hugging Face folder of openai/clip-vit-large-patch14")
    return openai_to_hf(state, source), [source], "openai"


def _read_hf(folder: Path) -> tuple[dict[str, torch.Tensor], list[Path], str]:
    config = folder / "config.json"
    if not config.is_file():
        raise SpecdetError(f"{folder} has no config.json: pass a Hugging Face folder of openai/clip-vit-large-patch14 "
                           "(or OpenAI's ViT-L-14.pt state dict)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as err:
        raise SpecdetError(f"{config} is not a Hugging Face config (not a JSON object): download it again") from err
    if model_type not in ("clip", "clip_vision_model"):
        raise SpecdetError(f"{folder} holds a {model_type!r} model, not CLIP: pass openai/clip-vit-large-patch14")
    for name in ("model.safetensors", "pytorch_model.bin"):
        weights = folder / name
        if weights.is_file():
            break
    else:
        raise SpecdetError(f"{folder} has no model.safetensors or pytorch_model.bin (sharded folders are not read): "
                           "download the single-file weights")
    if weights.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(weights)
        except (SafetensorError, OSError) as err:
            raise SpecdetError(f"{weights} is not readable ({err}): it may be truncated; download it again") from err
    else:
        state = read_tensors(weights, "CLIP weights file")
    # The text tower and logit scale of a full CLIP are not part of the detectors.
    tower = {k: v for k, v in state.items()
             if k.startswith(("vision_model.", "visual_projection.")) and not _HF_IGNORED.fullmatch(k)}
    if not tower:
        raise SpecdetError(f"{weights} holds no vision_model.* tensors: pass a CLIP model folder")
    return tower, [config, weights], "huggingface"


# ---- OpenAI CLIP to transformers -----------------------------------------------------------------

# visual.* of OpenAI's CLIP (clip/model.py, VisionTransformer) to transformers' CLIPVisionModelWithProjection.
_OPENAI_RENAMES: tuple[tuple[str, str], ...] = (
    (r"visual\.class_embedding", "vision_model.embeddings.class_embedding"),
    (r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight"),
    (r"visual\.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    (r"visual\.ln_pre\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
    (r"visual\.ln_post\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)",
     r"vision_model.encoder.layers.\1.self_attn.out_proj.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.fc1.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)",
     r"vision_model.encoder.layers.\1.mlp.fc2.\2"),
)
_IN_PROJ = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")


def openai_to_hf(state: dict[str, torch.Tensor], source: Path | str = "CLIP") -> dict[str, torch.Tensor]:
    """OpenAI CLIP's ``visual.*`` tensors under transformers' names; a ``visual.*`` tensor left over is an error.

    The attention's packed ``in_proj`` (query, key, value rows, in that order:
    torch's MultiheadAttention) splits into ``q_proj``, ``k_proj``, ``v_proj``;
    ``visual.proj`` (``x @ proj``) is the transpose of ``visual_projection.weight``.
    """
    out: dict[str, torch.Tensor] = {}
    unused = []
    for key, tensor in state.items():
        if not key.startswith("visual."):
            continue  # the text tower
        if key == "visual.proj":
            out["visual_projection.weight"] = tensor.t().contiguous()
        elif match := _IN_PROJ.fullmatch(key):
            block, kind = match.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3)):
                out[f"vision_model.encoder.layers.{block}.self_attn.{name}.{kind}"] = part.contiguous()
        else:
            for pattern, replacement in _OPENAI_RENAMES:
                if re.fullmatch(pattern, key):
                    out[re.sub(pattern, replacement, key)] = tensor
                    break
            else:
                unused.append(key)
    if unused:
        raise SpecdetError(f"{source} has {len(unused)} visual tensor(s) CLIP ViT towers do not have "
                           f"({_names(unused)}): pass OpenAI CLIP's state dict as clip.load builds it")
    return out


# ---- heads ---------------------------------------------------------------------------------------


def map_head(kind: str, state: dict[str, torch.Tensor], path: Path | str) -> tuple[dict, dict]:
    """A released head file's tensors (``state``, read from ``path``) to the config overrides of its model and
    its tensors under the model's names; a file of another layout is a one-line error."""
    return _HEAD_READERS[kind](state, Path(path), PUBLISHED[kind])


def _rine_head(state: dict, path: Path, publication: Publication) -> tuple[dict, dict]:
    """The config (``nproj``, ``proj_dim``) and tensors of a released RINE head; its names are the model's."""
    alpha = state.get("alpha")
    if alpha is None or alpha.ndim != 3 or "proj1.1.weight" not in state:
        raise _wrong_head(state, path, publication)
    stages = sum(1 for k in state if re.fullmatch(r"proj1\.\d+\.weight", k))
    return {"nproj": stages, "proj_dim": int(alpha.shape[2])}, state


def _univfd_head(state: dict, path: Path, publication: Publication) -> tuple[dict, dict]:
    """UnivFD's ``fc`` (a Linear on the image embedding): ``weight`` and ``bias`` become ``fc.*``."""
    weight = state.get("weight")
    if weight is None or weight.ndim != 2 or weight.shape[0] != 1:
        raise _wrong_head(state, path, publication)
    return {}, {f"fc.{k}": v for k, v in state.items()}


_HEAD_READERS: dict[str, Callable[[dict, Path, Publication], tuple[dict, dict]]] = {
    "rine": _rine_head,
    "univfd": _univfd_head,
}


def _wrong_head(state: dict, path: Path, publication: Publication) -> SpecdetError:
    others = [kind for kind, reader in _HEAD_READERS.items() if PUBLISHED[kind] != publication
              and _reads(reader, state, path, PUBLISHED[kind])]
    hint = f"it looks like a {PUBLISHED[others[0]].name} head: run detect-import {others[0]}" if others else \
        f"pass one of {publication.head_files} from {publication.code}"
    return SpecdetError(f"{path} is not a {publication.name} head file (it holds {_names(list(state))}; "
                        f"{publication.name}'s has {publication.head_keys}): {hint}")


def _reads(reader: Callable, state: dict, path: Path, publication: Publication) -> bool:
    try:
        reader(state, path, publication)
    except SpecdetError:
        return False
    return True


# ---- checks --------------------------------------------------------------------------------------


def tower_shape(tower: dict[str, torch.Tensor], heads: int | None = None) -> dict[str, int]:
    """The tower's shape in config fields, from its tensors (heads: OpenAI's rule, width / 64)."""
    patch = tower.get("vision_model.embeddings.patch_embedding.weight")
    positions = tower.get("vision_model.embeddings.position_embedding.weight")
    fc1 = tower.get("vision_model.encoder.layers.0.mlp.fc1.weight")
    if patch is None or positions is None or fc1 is None or patch.ndim != 4:
        raise SpecdetError("the CLIP weights lack the patch embedding, positions or first block: not a CLIP ViT")
    grid = round((positions.shape[0] - 1) ** 0.5)
    return {
        "input_size": grid * patch.shape[-1],
        "clip_hidden": patch.shape[0],
        "clip_layers": len({k.split(".")[3] for k in tower if k.startswith("vision_model.encoder.layers.")}),
        "clip_heads": heads or patch.shape[0] // 64,
        "clip_intermediate": fc1.shape[0],
        "patch_size": patch.shape[-1],
    }


def _check_tower_shape(source: Path, tower: dict, config, arch: str) -> None:
    got = tower_shape(tower, _hf_heads(source))
    want = {f: getattr(config, f) for f in TOWER_FIELDS}
    if got != want:
        raise SpecdetError(f"the CLIP at {source} is {_describe(got)}; {arch} needs {_describe(want)}: "
                           f"pass CLIP ViT-L/14 (openai/clip-vit-large-patch14 or ViT-L-14.pt's state dict)")


def _hf_heads(source: Path) -> int | None:
    """The attention heads a Hugging Face folder's config declares (shapes do not tell); None for OpenAI's files."""
    if not source.is_dir():
        return None
    from transformers import CLIPConfig, CLIPVisionConfig

    data = json.loads((source / "config.json").read_text(encoding="utf-8"))
    vision = CLIPConfig.from_dict(data).vision_config if data.get("model_type") == "clip" else \
        CLIPVisionConfig.from_dict(data)
    if vision.hidden_act != "quick_gelu":
        raise SpecdetError(f"the CLIP at {source} uses {vision.hidden_act}, not OpenAI CLIP's quick_gelu: "
                           "pass openai/clip-vit-large-patch14")
    return vision.num_attention_heads


def _describe(shape: dict) -> str:
    return (f"a ViT of width {shape['clip_hidden']}, {shape['clip_layers']} blocks, {shape['clip_heads']} heads, "
            f"MLP {shape['clip_intermediate']}, patch {shape['patch_size']} at {shape['input_size']} pixels")


def _check_fit(model: torch.nn.Module, state: dict, head: Path, clip: Path, publication: Publication) -> None:
    """Every tensor of the model from the sources with its shape, and every source tensor used."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unused = [k for k in state if k not in expected]
    mismatched = [f"{k} {list(state[k].shape)} for {list(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{len(names)} {what} ({_names(names)})"
                for names, what in ((missing, "missing"), (unused, "unused"), (mismatched, "of the wrong shape"))
                if names]
    if problems:
        raise SpecdetError(f"{head} and the CLIP at {clip} do not make a {publication.name} model: "
                           f"{'; '.join(problems)} tensors: pass one of {publication.head_files} unchanged")


def _names(names: list[str]) -> str:
    return ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")

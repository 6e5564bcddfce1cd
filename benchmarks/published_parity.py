"""Parity of the imported published detectors with their reference code: same images, same weights, FP32 logits.

Runs the official code of RINE (github.com/mever-team/rine, ``src/models.py``)
and UnivFD (github.com/WisconsinAIVision/UniversalFakeDetect,
``models/clip_models.py`` with its own copy of OpenAI's CLIP) beside the
checkpoints ``detect-import`` writes from the same files. The third-party
code is not part of specdet: pass local checkouts, kept outside the
repository. CLIP's pretrained weights are not needed (nor available offline):
a random CLIP ViT-L/14 is built with OpenAI's code, saved as OpenAI's state
dict (FP16 linear and conv weights, as OpenAI's files and ``build_model``
keep them) and as a Hugging Face folder, and both are imported. The
reference runs on the CPU in FP32 (``clip.load(device="cpu")`` widens the
weights, as here), with ``clip.load`` replaced by a loader of that state dict.

Each image goes through the reference's evaluation transform (torchvision
``CenterCrop(224)``, ``ToTensor``, ``Normalize`` with CLIP's statistics, as
in RINE's ``get_transforms`` and UnivFD's ``validate.py``) and through
specdet's preprocessing from the checkpoint; the report gives the largest
difference of the inputs, of the logits on the same input (the models), and
end to end. Run::

    python -m specdet.benchmarks.published_parity --rine-code /tmp/rine --univfd-code /tmp/UniversalFakeDetect \\
        --clip-code /tmp/CLIP --out benchmarks/results/DATE-published-parity
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
from PIL import Image

from specdet import cli
from specdet.errors import SpecdetError
from specdet.files import file_sha256
from specdet.images import sample_photos
from specdet.models import checkpoint
from specdet.models.import_published import PUBLISHED, import_published, openai_to_hf
from specdet.runtime.preprocess import preprocess
from specdet.versions import library_versions

TOLERANCE = 1e-5  # FP32 logits
# CLIP ViT-L/14 as OpenAI's build_model makes it from ViT-L-14.pt.
VIT_L14 = dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024, vision_patch_size=14,
               context_length=77, vocab_size=49408, transformer_width=768, transformer_heads=12, transformer_layers=12)


def images() -> dict[str, Image.Image]:
    """scikit-image's photos, and small ones: CenterCrop pads those with black (even and odd margins)."""
    photos = {name: Image.fromarray(array).convert("RGB") for name, array in sample_photos()}
    photos["chelsea-small-201x150"] = photos["chelsea"].crop((100, 50, 301, 200))
    photos["coffee-narrow-180x300"] = photos["coffee"].crop((200, 50, 380, 350))
    return photos


def _stub_ftfy() -> None:
    """OpenAI's tokenizer imports ftfy at import time; nothing here tokenizes text."""
    if importlib.util.find_spec("ftfy") is None:
        sys.modules["ftfy"] = types.SimpleNamespace(fix_text=lambda text: text)


def _package(name: str, folder: Path) -> types.ModuleType:
    """``folder`` importable as the package ``name`` without running its ``__init__`` (UnivFD's imports every
    ImageNet model)."""
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package
    return package


def _module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def random_clip(clip_code: Path, folder: Path, seed: int) -> Path:
    """A random CLIP ViT-L/14 in OpenAI's state-dict form (``folder/ViT-L-14.state.pth``), built with OpenAI's code."""
    sys.path.insert(0, str(clip_code))
    import clip.model as openai

    torch.manual_seed(seed)
    model = openai.CLIP(**VIT_L14)
    state = model.state_dict()
    # CLIP's init leaves LayerNorms at 1 and 0 and attention biases at 0: a mapping that dropped or swapped one of
    # them would still agree. Perturb every LayerNorm and bias.
    for key, tensor in state.items():
        if "ln_" in key or key.endswith("bias"):
            tensor += 0.1 * torch.randn_like(tensor)
    # OpenAI's build_model keeps the linear and conv weights in FP16, as its released files hold them.
    state = openai.build_model(dict(state)).state_dict()
    path = folder / "ViT-L-14.state.pth"
    torch.save(state, path)
    return path


def hf_folder(openai_file: Path, folder: Path) -> Path:
    """The same CLIP vision tower as a Hugging Face folder (CLIPVisionModelWithProjection, safetensors)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                              patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu")
    model = CLIPVisionModelWithProjection(config)
    tower = {k: v.float() for k, v in openai_to_hf(torch.load(openai_file, weights_only=True)).items()}
    model.load_state_dict(tower, strict=True)
    model.save_pretrained(folder / "clip-vit-large-patch14")
    return folder / "clip-vit-large-patch14"


def _loader(build_model, openai_file: Path):
    """``clip.load`` as the reference calls it, from the local state dict: build_model, then FP32 on the CPU."""
    def load(name, device="cpu", **_):
        return build_model(torch.load(openai_file, weights_only=True)).to(device).float().eval(), None
    return load


def rine_reference(rine_code: Path, clip_code: Path, openai_file: Path, head: Path):
    """RINE's Model (src/models.py) with the released head set as get_our_trained_model sets it."""
    sys.path.insert(0, str(clip_code))
    import clip

    clip.load = _loader(clip.model.build_model, openai_file)
    reference = _module("rine_reference_models", rine_code / "src" / "models.py")
    state = torch.load(head, map_location="cpu", weights_only=True)
    stages = sum(1 for k in state if k.startswith("proj1.") and k.endswith(".weight"))
    model = reference.Model(backbone=("ViT-L/14", 1024), nproj=stages, proj_dim=state["alpha"].shape[2], device="cpu")
    # get_our_trained_model's exec-based assignment, without exec: model.proj1[1].weight = Parameter(...).
    for name, tensor in state.items():
        if "." not in name:
            setattr(model, name, torch.nn.Parameter(tensor))
        else:
            first, index, attribute = name.split(".")
            setattr(getattr(model, first)[int(index)], attribute, torch.nn.Parameter(tensor))
    return model.eval(), lambda x: model(x)[0][:, 0]


def univfd_reference(univfd_code: Path, openai_file: Path, head: Path):
    """UnivFD's CLIPModel (models/clip_models.py, its own CLIP copy) with fc loaded as validate.py loads it."""
    _package("univfd_reference", univfd_code / "models")
    clip = importlib.import_module("univfd_reference.clip.clip")
    clip.load = _loader(importlib.import_module("univfd_reference.clip.model").build_model, openai_file)
    model = importlib.import_module("univfd_reference.clip_models").CLIPModel("ViT-L/14")
    model.fc.load_state_dict(torch.load(head, map_location="cpu", weights_only=True))
    return model.eval(), lambda x: model(x)[:, 0]


def reference_transform():
    """The evaluation transform of both references (RINE's transforms_test_1, UnivFD's RealFakeDataset)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)),
    ])


def compare(kind: str, reference, ours_paths: dict[str, Path], photos: dict[str, Image.Image]) -> dict:
    model, logits = reference
    transform = reference_transform()
    names = list(photos)
    ref_inputs = torch.stack([transform(photos[n]) for n in names])
    result = {"images": {n: {"size": list(photos[n].size)} for n in names}, "sources": {}}
    with torch.no_grad():
        ref_logits = torch.cat([logits(ref_inputs[i:i + 4]) for i in range(0, len(names), 4)])
        for source, path in ours_paths.items():
            loaded = checkpoint.load(path)
            our_inputs = torch.from_numpy(preprocess([photos[n] for n in names], loaded.preprocessing))
            same_input = torch.cat([loaded.model(ref_inputs[i:i + 4])["logit"] for i in range(0, len(names), 4)])
            end_to_end = torch.cat([loaded.model(our_inputs[i:i + 4])["logit"] for i in range(0, len(names), 4)])
            result["sources"][source] = {
                "architecture": loaded.architecture,
                "config": {k: loaded.config[k] for k in ("nproj", "proj_dim", "projection_dim") if k in loaded.config},
                "max_abs_input_diff": float((our_inputs - ref_inputs).abs().max()),
                "max_abs_logit_diff_same_input": float((same_input - ref_logits).abs().max()),
                "max_abs_logit_diff_end_to_end": float((end_to_end - ref_logits).abs().max()),
                "logits_end_to_end": [float(v) for v in end_to_end],
            }
            del loaded
    for i, name in enumerate(names):
        result["images"][name]["reference_logit"] = float(ref_logits[i])
    worst = max(max(s["max_abs_logit_diff_same_input"], s["max_abs_logit_diff_end_to_end"])
                for s in result["sources"].values())
    result["max_abs_logit_diff"] = worst
    result["passed"] = worst <= TOLERANCE
    result["reference_logit_range"] = [float(ref_logits.min()), float(ref_logits.max())]
    return result


def run(args: argparse.Namespace) -> int:
    heads = {"rine": Path(args.rine_head or args.rine_code / "ckpt" / "model_2class_trainable.pth"),
             "univfd": Path(args.univfd_head or args.univfd_code / "pretrained_weights" / "fc_weights.pth")}
    for path in heads.values():
        if not path.is_file():
            raise SpecdetError(f"no head file {path}: pass --rine-head / --univfd-head")
    _stub_ftfy()
    torch.set_num_threads(args.threads)
    photos = images()
    report = {"tolerance": TOLERANCE, "seed": args.seed,
              "versions": library_versions(also=("torchvision", "numpy", "Pillow")),
              # The reference code that ran, by file hash (the checkouts are not part of specdet).
              "reference_files": {f"{code.name}/{path}": file_sha256(code / path) for code, path in (
                  (args.rine_code, "src/models.py"), (args.univfd_code, "models/clip_models.py"),
                  (args.univfd_code, "models/clip/model.py"), (args.clip_code, "clip/model.py"))},
              "models": {}}
    with tempfile.TemporaryDirectory(prefix="published-parity-") as scratch:
        scratch = Path(scratch)
        openai_file = random_clip(args.clip_code, scratch, args.seed)
        hf = hf_folder(openai_file, scratch)
        for kind in ("rine", "univfd"):
            ours = {}
            for source, clip in (("openai_state_dict", openai_file), ("huggingface_folder", hf)):
                ours[source] = scratch / f"{kind}-{source}.pth"
                import_published(kind, heads[kind], clip, ours[source])
            reference = rine_reference(args.rine_code, args.clip_code, openai_file, heads[kind]) if kind == "rine" \
                else univfd_reference(args.univfd_code, openai_file, heads[kind])
            report["models"][kind] = {"name": PUBLISHED[kind].name, "code": PUBLISHED[kind].code,
                                      "head": {"file": heads[kind].name, "sha256": file_sha256(heads[kind])},
                                      **compare(kind, reference, ours, photos)}
            del reference
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(m["passed"] for m in report["models"].values()) else 1


def markdown(report: dict) -> str:
    lines = ["# Published detectors: parity with the reference code", "",
             f"Random CLIP ViT-L/14 (seed {report['seed']}, OpenAI's code), released head files, CPU, FP32; "
             f"tolerance {report['tolerance']:g} on logits.", "",
             "| model | head (SHA-256) | CLIP source | images | max input diff | max logit diff (same input) | "
             "max logit diff (end to end) | passed |", "|---|---|---|---|---|---|---|---|"]
    for model in report["models"].values():
        for source, s in model["sources"].items():
            lines.append(f"| {model['name']} ({s['architecture']}, {s['config']}) | {model['head']['file']} "
                         f"({model['head']['sha256'][:12]}...) | {source} | {len(model['images'])} | "
                         f"{s['max_abs_input_diff']:.3g} | {s['max_abs_logit_diff_same_input']:.3g} | "
                         f"{s['max_abs_logit_diff_end_to_end']:.3g} | {model['passed']} |")
    lines += ["", "Reference logits span " + "; ".join(
        f"{m['name']} {m['reference_logit_range'][0]:.4g} to {m['reference_logit_range'][1]:.4g}"
        for m in report["models"].values()) + " (random CLIP: not a measure of detection quality).", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m specdet.benchmarks.published_parity", description=__doc__.split("\n")[0])
    parser.add_argument("--rine-code", type=Path, required=True, help="a checkout of github.com/mever-team/rine")
    parser.add_argument("--univfd-code", type=Path, required=True,
                        help="a checkout of github.com/WisconsinAIVision/UniversalFakeDetect")
    parser.add_argument("--clip-code", type=Path, required=True, help="a checkout of github.com/openai/CLIP")
    parser.add_argument("--rine-head", help="default: RINE-CODE/ckpt/model_2class_trainable.pth")
    parser.add_argument("--univfd-head", help="default: UNIVFD-CODE/pretrained_weights/fc_weights.pth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=cli.THREADS, default=2)
    parser.add_argument("--out", type=Path, required=True, help="report path without suffix (.json and .md written)")
    cli.add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(run, args)


if __name__ == "__main__":
    sys.exit(main())

"""The published detectors (RINE, UnivFD): the released head layouts, detect-import from both CLIP formats against
the reference computations, bad files, export and predict of an imported checkpoint, and CenterCrop's padding.

The reference code itself is third-party and not here: ``published_files`` writes its computations in plain torch
from OpenAI's and the papers' code, and benchmarks/published_parity.py (run with the real code, results in
benchmarks/results) checks the full-size models against the code itself.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import published_files as pf
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as samples

from specdet.export import cli as export_cli
from specdet.models import checkpoint, create_model, default_preprocessing, import_cli
from specdet.models.import_published import map_head, openai_to_hf
from specdet.runtime import pipeline, resample
from specdet.runtime.cli import main as predict_main
from specdet.runtime.preprocess import crop_pixels, preprocess

# The tensors of RINE's released ckpt/model_2class_trainable.pth (SHA-256 680d301b...), as torch.load lists them.
RELEASED_2CLASS = {
    "alpha": (1, 24, 128),
    **{f"proj{p}.{i}.{t}": (128, 1024 if (p, i) == (1, 1) else 128) if t == "weight" else (128,)
       for p in (1, 2) for i in (1, 4, 7, 10) for t in ("weight", "bias")},
    "head.0.weight": (128, 128), "head.0.bias": (128,), "head.3.weight": (128, 128), "head.3.bias": (128,),
    "head.6.weight": (1, 128), "head.6.bias": (1,),
}
# UnivFD's released pretrained_weights/fc_weights.pth (SHA-256 47710074...).
RELEASED_FC = {"weight": (1, 768), "bias": (1,)}
# The released RINE heads' (nproj, proj_dim): get_our_trained_model in the reference src/utils.py.
RELEASED_RINE = {"1class": (4, 1024), "2class": (4, 128), "4class": (2, 1024), "ldm": (4, 1024)}
T = pf.TINY


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def _import(capsys, *args):
    code = import_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random CLIP as OpenAI's state dict and as a Hugging Face folder, and released-layout tiny heads."""
    folder = tmp_path_factory.mktemp("published")
    clip = pf.openai_clip_state(**T)
    torch.save(clip, folder / "ViT-tiny.state.pth")
    hf = folder / "clip-hf"
    hf.mkdir()
    save_file(openai_to_hf(clip), hf / "model.safetensors")
    (hf / "config.json").write_text(json.dumps({
        "model_type": "clip_vision_model", "hidden_size": T["width"], "num_hidden_layers": T["layers"],
        "num_attention_heads": T["heads"], "intermediate_size": T["mlp"], "patch_size": T["patch"],
        "image_size": T["patch"] * T["grid"], "projection_dim": T["embed"], "hidden_act": "quick_gelu"}))
    rine = pf.rine_head_state(T["layers"], T["width"], nproj=2, dim=16)
    univfd = pf.univfd_head_state(T["embed"])
    torch.save(rine, folder / "model_tiny_trainable.pth")
    torch.save(univfd, folder / "fc_weights.pth")
    return {"folder": folder, "clip": clip, "openai": folder / "ViT-tiny.state.pth", "hf": hf, "rine": rine,
            "univfd": univfd, "rine_head": folder / "model_tiny_trainable.pth", "univfd_head": folder / "fc_weights.pth"}


# ---- the released layouts -----------------------------------------------------------------------


def test_synthetic_heads_have_the_released_names_and_shapes():
    assert _shapes(pf.rine_head_state(24, 1024, nproj=4, dim=128)) == RELEASED_2CLASS
    assert _shapes(pf.univfd_head_state(768)) == RELEASED_FC


@pytest.mark.parametrize("released", sorted(RELEASED_RINE))
def test_released_rine_heads_map_onto_rine_clip_l14(released):
    nproj, dim = RELEASED_RINE[released]
    head = pf.rine_head_state(24, 1024, nproj=nproj, dim=dim)
    overrides, mapped = map_head("rine", head, "head.pth")
    assert overrides == {"nproj": nproj, "proj_dim": dim}
    with torch.device("meta"):
        model = create_model("rine_clip_l14", **overrides)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert _shapes(mapped) == expected


def test_released_univfd_head_maps_onto_univfd_clip_l14():
    overrides, mapped = map_head("univfd", pf.univfd_head_state(768), "fc_weights.pth")
    with torch.device("meta"):
        model = create_model("univfd_clip_l14", **overrides)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not k.startswith(("backbone.", "projection."))}
    assert _shapes(mapped) == expected == {"fc.weight": (1, 768), "fc.bias": (1,)}


def test_openai_names_convert_to_every_tower_tensor():
    clip = pf.openai_clip_state(**T)
    with torch.device("meta"):
        model = create_model("univfd_tiny")
    tower = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}
    converted = {("projection.weight" if k == "visual_projection.weight" else "backbone." + k.removeprefix(
        "vision_model.")): tuple(v.shape) for k, v in openai_to_hf(clip).items()}
    assert converted == tower


def _photos() -> torch.Tensor:
    """Three photos as the published models' input (random noise images would all look alike to a random CLIP)."""
    photos = [samples.astronaut(), samples.coffee(), samples.chelsea()]
    return torch.from_numpy(preprocess(photos, default_preprocessing("rine_tiny")))


# ---- detect-import against the reference computations ------------------------------------------------


@pytest.mark.parametrize("source", ["openai", "hf"])
def test_rine_import_computes_the_reference(files, source, capsys, tmp_path):
    out = tmp_path / "rine.pth"
    code, stdout, err = _import(capsys, "rine", files["rine_head"], "--clip", files[source], "-o", out,
                                "--arch", "rine_tiny")
    assert (code, err) == (0, "")
    assert "rine_tiny (nproj 2, proj_dim 16)" in stdout
    loaded = checkpoint.load(out)
    x = _photos()
    taps, _ = pf.openai_vision(files["clip"], x, T["heads"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.block_tokens(x), taps, rtol=0, atol=1e-5)
        logits = loaded.model(x)["logit"]
    torch.testing.assert_close(logits, pf.rine_reference(files["rine"], taps), rtol=0, atol=1e-5)
    assert logits.std() > 1e-2  # the images get different scores: the comparison is not of constants
    published = loaded.metadata["published"]
    assert published["model"] == "RINE" and "ECCV 2024" in published["paper"] and published["licence"] == "Apache-2.0"
    assert re.fullmatch(r"[0-9a-f]{64}", published["head"]["sha256"])
    assert published["clip"]["format"] == {"openai": "openai", "hf": "huggingface"}[source]
    assert loaded.preprocessing == {**default_preprocessing("rine_tiny"), "pad_small": True}


@pytest.mark.parametrize("source", ["openai", "hf"])
def test_univfd_import_computes_the_reference(files, source, capsys, tmp_path):
    out = tmp_path / "univfd.pth"
    code, _, err = _import(capsys, "univfd", files["univfd_head"], "--clip", files[source], "-o", out,
                           "--arch", "univfd_tiny")
    assert (code, err) == (0, "")
    loaded = checkpoint.load(out)
    x = _photos()
    _, embedding = pf.openai_vision(files["clip"], x, T["heads"])
    head = files["univfd"]
    with torch.no_grad():
        logits = loaded.model(x)["logit"]
    torch.testing.assert_close(logits, (embedding @ head["weight"].T + head["bias"])[:, 0], rtol=0, atol=1e-5)
    assert logits.std() > 1e-2
    assert loaded.metadata["published"]["licence"] == "MIT"


# ---- bad input: one line, exit 2, nothing written -------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def _bad_files(files, folder):
    truncated = folder / "truncated.pth"
    truncated.write_bytes(files["rine_head"].read_bytes()[:2000])
    with_code = folder / "with_code.pth"
    torch.save({"alpha": _RunsCode()}, with_code)
    scripted = folder / "ViT-L-14.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated; OpenAI's files are TorchScript all the same
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    text = folder / "notes.pth"
    text.write_text("not a tensor file\n")
    numbers = folder / "numbers.pth"
    torch.save({"alpha": 1.0}, numbers)
    return {"truncated": truncated, "with_code": with_code, "scripted": scripted, "text": text, "numbers": numbers}


def _full_size_head(folder):
    """The released 2-class layout (full size), for the CLIP-size check."""
    path = folder / "model_2class_trainable.pth"
    torch.save(pf.rine_head_state(24, 1024, nproj=4, dim=128), path)
    return path


@pytest.fixture(scope="module")
def vit_b16(tmp_path_factory):
    """A Hugging Face folder of CLIP ViT-B/16's size (zeros: only the shapes matter)."""
    folder = tmp_path_factory.mktemp("vit-b16")
    clip = {k: torch.zeros_like(v, dtype=torch.float16) for k, v in pf.openai_clip_state(**pf.VIT_B16).items()}
    save_file(openai_to_hf(clip), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "clip", "projection_dim": 512, "vision_config": {
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "patch_size": 16, "image_size": 224}}))
    return folder


@pytest.mark.parametrize("case, pattern", [
    ("univfd head as rine", r"is not a RINE head file .*it looks like a UnivFD head: run detect-import univfd"),
    ("rine head as univfd", r"is not a UnivFD head file .*it looks like a RINE head: run detect-import rine"),
    ("truncated head", r"truncated\.pth is not a readable RINE head file .*download it again"),
    ("head with code", r"with_code\.pth holds pickled Python objects, which are refused for safety"),
    ("text file head", r"notes\.pth is not a readable RINE head file"),
    ("head without tensors", r"numbers\.pth is not a RINE head file: it does not hold named tensors"),
    ("torchscript clip", r"ViT-L-14\.pt is a TorchScript archive .*torch\.jit\.load"),
    ("vit-b16 clip", r"is a ViT of width 768, 12 blocks, 12 heads, MLP 3072, patch 16 at 224 pixels; rine_clip_l14 "
                     r"needs a ViT of width 1024, 24 blocks, 16 heads, MLP 4096, patch 14 at 224 pixels"),
    ("tiny clip, full size", r"rine_clip_l14 needs a ViT of width 1024"),
    ("missing clip", r"CLIP state dict .* not found"),
    ("wrong arch", r"--arch univfd_tiny is not a RINE variant"),
    ("output is input", r"is also an input"),
])
def test_bad_input_is_one_line_exit_2(files, vit_b16, tmp_path, capsys, case, pattern):
    bad = _bad_files(files, tmp_path)
    out = tmp_path / "model.pth"
    rine, clip, arch = files["rine_head"], files["openai"], ["--arch", "rine_tiny"]
    args = {
        "univfd head as rine": ["rine", files["univfd_head"], "--clip", clip, *arch],
        "rine head as univfd": ["univfd", rine, "--clip", clip, "--arch", "univfd_tiny"],
        "truncated head": ["rine", bad["truncated"], "--clip", clip, *arch],
        "head with code": ["rine", bad["with_code"], "--clip", clip, *arch],
        "text file head": ["rine", bad["text"], "--clip", clip, *arch],
        "head without tensors": ["rine", bad["numbers"], "--clip", clip, *arch],
        "torchscript clip": ["rine", rine, "--clip", bad["scripted"], *arch],
        "vit-b16 clip": ["rine", _full_size_head(tmp_path), "--clip", vit_b16],
        "tiny clip, full size": ["rine", rine, "--clip", clip],
        "missing clip": ["rine", rine, "--clip", tmp_path / "nothing.pt", *arch],
        "wrong arch": ["rine", rine, "--clip", clip, "--arch", "univfd_tiny"],
        "output is input": ["rine", rine, "--clip", clip, *arch, "-o", rine],
    }[case]
    if "-o" not in args:
        args += ["-o", out]
    code, stdout, err = _import(capsys, *args)
    assert code == 2 and stdout == ""
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert "this pickle ran code" not in stdout + err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left


# ---- from the imported checkpoint on: export and predict --------------------------------------------------


def test_imported_checkpoints_export_and_predict(files, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(samples.chelsea()).save(photos / "chelsea.png")
    Image.fromarray(samples.coffee()[:150, :201]).save(photos / "small.png")  # padded, not scaled up
    for kind, arch in (("rine", "rine_tiny"), ("univfd", "univfd_tiny")):
        pth, onnx_file = tmp_path / f"{kind}.pth", tmp_path / f"{kind}.onnx"
        assert import_cli.main([kind, str(files[f"{kind}_head"]), "--clip", str(files["hf"]), "-o", str(pth),
                                "--arch", arch]) == 0
        assert export_cli.main([str(pth), "-o", str(onnx_file), "--max-batch", "2"]) == 0
        capsys.readouterr()
        scores = {}
        for artifact in (pth, onnx_file):
            assert predict_main([str(artifact), str(photos), "--json"]) == 0
            scores[artifact.suffix] = {r["path"]: r["probability"] for r in json.loads(capsys.readouterr().out)}
        assert scores[".pth"].keys() == scores[".onnx"].keys() and len(scores[".pth"]) == 2
        for path, probability in scores[".pth"].items():
            assert abs(probability - scores[".onnx"][path]) < 1e-4


# ---- CenterCrop's padding --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(201, 150), (180, 300), (100, 100), (224, 223), (300, 300), (225, 500)])
def test_pad_small_is_torchvisions_center_crop(size):
    from torchvision import transforms

    spec = default_preprocessing("rine_clip_l14")
    image = Image.fromarray(samples.astronaut()).resize(size)
    reference = transforms.Compose([transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(spec["mean"], spec["std"])])(image)
    np.testing.assert_allclose(preprocess(image, spec)[0], reference.numpy(), rtol=0, atol=1e-6)
    if min(size) < 224:  # without pad_small the image is scaled up instead
        assert not np.allclose(preprocess(image, {**spec, "pad_small": False})[0], reference.numpy(), atol=1e-3)


def test_pad_small_crops_on_the_cpu_when_the_device_resizes(tmp_path):
    """With resize_on_device, a padded image is cropped by the worker (nothing to resample), a large one is not."""
    spec = default_preprocessing("univfd_clip_l14")
    small, large = Image.fromarray(samples.coffee()[:150, :201]), Image.fromarray(samples.coffee())
    small.save(tmp_path / "small.png")
    large.save(tmp_path / "large.png")
    out = np.zeros((2, 224, 224, 3), np.uint8)
    errors, _, regions = pipeline.read_batch([str(tmp_path / "small.png"), str(tmp_path / "large.png")], spec,
                                             10**8, out, np.zeros(1 << 20, np.uint8))
    assert errors == [None, None] and [position for position, _, _ in regions] == [1]
    np.testing.assert_array_equal(out[0], crop_pixels(small, spec))
    assert resample.plan(small.size, spec) is None


def test_bad_pad_small_is_an_invalid_preprocessing():
    with pytest.raises(Exception, match="pad_small must be true or false"):
        preprocess(samples.coffee(), {**default_preprocessing("rine_tiny"), "pad_small": "yes"})


def test_dropout_is_off_at_inference_and_the_tower_stays_frozen():
    model = create_model("rine_tiny").train()
    assert not model.backbone.training and all(not p.requires_grad for p in model.backbone.parameters())
    x = _photos()[:2]
    with torch.no_grad():
        trained = [model(x)["logit"] for _ in range(2)]
        model.eval()
        evaluated = [model(x)["logit"] for _ in range(2)]
    assert not torch.equal(*trained)  # the reference's Dropout(0.5) slots are there, active in training
    assert torch.equal(*evaluated)

"""The detectors: registry, outputs, the seed-flaw corrections, pretrained loading, gradients.

Only the tiny variants are built and run; the full-size ones are built on the
meta device (no memory, no init cost) to check their size.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import huggingface_hub
import numpy as np
import pytest
import torch

import specdet.models.dual_branch as dual_branch
import specdet.models.spectral as spectral
from specdet.errors import SpecdetError
from specdet.models import ScoringModule, create_model, default_preprocessing, list_models
from specdet.models.spectral import band_split, spectrum_magnitude_mean
from specdet.train.losses import DualBranchLoss, RineSSCALoss

TINY = ["dual_branch_tiny", "rine_ssca_tiny", "rine_tiny", "univfd_tiny"]
PUBLISHED = ("rine_clip_l14", "rine_tiny", "univfd_clip_l14", "univfd_tiny")  # the papers' models, as released


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in TINY}


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


# --- registry ---


def test_list_models():
    assert list_models() == ["dual_branch_tiny", "dual_branch_vit_b16", "rine_clip_l14", "rine_ssca_clip_l14",
                             "rine_ssca_tiny", "rine_tiny", "univfd_clip_l14", "univfd_tiny"]


def test_unknown_name_lists_known_names():
    with pytest.raises(SpecdetError) as error:
        create_model("resnet50")
    message = str(error.value)
    assert "\n" not in message and "resnet50" in message and all(name in message for name in list_models())


def test_unknown_override_names_bad_key_and_valid_ones():
    with pytest.raises(SpecdetError) as error:
        create_model("dual_branch_tiny", band_center="zero")
    message = str(error.value)
    assert "\n" not in message and "band_center" in message and "band_centre" in message


def test_invalid_band_centre():
    with pytest.raises(SpecdetError, match="band_centre"):
        create_model("dual_branch_tiny", band_centre="middle")


@pytest.mark.parametrize("name", TINY)
def test_model_keeps_name_and_config(models, name):
    assert models[name].arch_name == name
    assert models[name].config.input_size == 224


def test_override_reaches_config():
    assert create_model("dual_branch_tiny", band_centre="seed").config.band_centre == "seed"


def test_output_shapes(models, images):
    with torch.no_grad():
        dual = models["dual_branch_tiny"](images)
        rine = models["rine_ssca_tiny"](images)
    assert {k: v.shape for k, v in dual.items()} == {
        "logit": (2,),
        "spatial_logit": (2,),
        "frequency_logit": (2,),
    }
    assert {k: v.shape for k, v in rine.items()} == {"logit": (2,), "embedding": (2, 32)}
    assert torch.allclose(rine["embedding"].norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_scoring_module(models, images, name):
    with torch.no_grad():
        logit, probability = ScoringModule(models[name])(images)
        expected = models[name](images)["logit"]
    assert logit.shape == probability.shape == (2,)
    assert torch.equal(logit, expected)
    assert torch.allclose(probability, torch.sigmoid(expected))


@pytest.mark.parametrize("name", list_models())
def test_default_preprocessing(name):
    pre = default_preprocessing(name)
    # The published detectors' reference evaluation pads a small image (torchvision's CenterCrop alone).
    padded = {"pad_small"} if name in PUBLISHED else set()
    assert set(pre) == {"resize", "crop", "mean", "std", "interpolation"} | padded
    assert pre.get("pad_small", False) == (name in PUBLISHED)
    assert pre["resize"] is None and pre["crop"] == 224 and pre["interpolation"] in ("bicubic", "bilinear")
    assert len(pre["mean"]) == len(pre["std"]) == 3
    expected_mean = [0.5] * 3 if name.startswith("dual_branch") else [0.48145466, 0.4578275, 0.40821073]
    assert pre["mean"] == expected_mean


@pytest.mark.parametrize(
    ("name", "backbone", "low", "high"),
    [("dual_branch_vit_b16", "vit", 86e6, 95e6), ("rine_ssca_clip_l14", "backbone", 303e6, 310e6),
     # CLIP ViT-L/14's vision tower (303.2 M) and RINE's 2-class head (0.28 M) or UnivFD's projection and fc
     ("rine_clip_l14", "backbone", 303.4e6, 303.5e6), ("univfd_clip_l14", "backbone", 303.9e6, 304.0e6)],
)
def test_full_size_parameter_counts(name, backbone, low, high):
    with torch.device("meta"):
        model = create_model(name)
    assert low < sum(p.numel() for p in model.parameters()) < high
    assert sum(p.numel() for p in getattr(model, backbone).parameters()) > 0.95 * low


# --- seed-flaw corrections: dual branch ---


def test_zero_centre_puts_a_constant_image_in_the_lowest_band():
    constant = torch.full((1, 3, 224, 224), 0.7)
    corrected = create_model("dual_branch_tiny").frequency.bands(constant)
    seed = create_model("dual_branch_tiny", band_centre="seed").frequency.bands(constant)
    assert torch.allclose(corrected[:, 0], constant, atol=1e-5)
    assert corrected[:, 1:].abs().max() < 1e-5
    assert seed[:, 0].abs().max() < 1e-5  # the seed's "low" band misses the zero frequency


def test_masks_are_a_buffer_built_once(models, images, monkeypatch):
    model = models["dual_branch_tiny"]
    assert "frequency.masks" in dict(model.named_buffers())
    assert "frequency.masks" not in model.state_dict()

    def fail(*args, **kwargs):
        raise AssertionError("radial_band_masks called in forward")

    monkeypatch.setattr(dual_branch, "radial_band_masks", fail)
    monkeypatch.setattr(spectral, "radial_band_masks", fail)
    with torch.no_grad():
        model(images)


def test_bands_sum_back_to_the_input(models, images):
    bands = models["dual_branch_tiny"].frequency.bands(images)
    assert bands.shape == (2, 4, 3, 224, 224)
    assert (bands.sum(dim=1) - images).abs().max() < 1e-5


def test_band_split_matches_numpy_float64(models):
    frequency = models["dual_branch_tiny"].frequency
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bands = band_split(x, frequency.masks, frequency.edges, frequency.centre).numpy()
    spectrum = np.fft.fft2(x.numpy())
    for k, mask in enumerate(frequency.masks.numpy()):
        expected = np.fft.ifft2(spectrum * mask).real
        assert np.abs(bands[:, k] - expected).max() < 1e-10


def test_spectrum_magnitude_mean_matches_numpy():
    x = torch.randn(2, 5, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = np.abs(np.fft.rfft2(x.numpy(), norm="ortho")).mean(axis=(-2, -1))
    assert np.abs(spectrum_magnitude_mean(x).numpy() - expected).max() < 1e-12


def test_custom_ops_are_chosen_per_thread():
    """One thread inside use_custom_ops (a plugin export, say) leaves another thread on the torch.fft path.

    The two paths are told apart by masks of zeros: the torch.fft path applies
    the masks it is given (zero bands), the custom op builds its own from the
    edges (bands that sum back to the input).
    """
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    edges = spectral.default_band_edges(4)
    zeros = torch.zeros(4, 16, 16)
    both_inside = threading.Barrier(2, timeout=60)
    seen: dict[str, tuple[bool, torch.Tensor]] = {}

    def run(name: str, custom: bool) -> None:
        with spectral.use_custom_ops() if custom else contextlib.nullcontext():
            both_inside.wait()  # the other thread is in its own block now
            seen[name] = (spectral.custom_ops_enabled(), band_split(x, zeros, edges, "zero"))
            both_inside.wait()  # and stays there until this one has run

    threads = [threading.Thread(target=run, args=("custom", True)), threading.Thread(target=run, args=("torch", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["custom"][0] and not seen["torch"][0]
    assert torch.count_nonzero(seen["torch"][1]) == 0
    torch.testing.assert_close(seen["custom"][1].sum(dim=1), x, atol=1e-5, rtol=0)
    assert not spectral.custom_ops_enabled()


@pytest.mark.parametrize(
    ("name", "attention"),
    [
        ("dual_branch_tiny", "spatial_to_frequency"),
        ("dual_branch_tiny", "frequency_to_spatial"),
        ("rine_ssca_tiny", "cross"),
    ],
)
def test_cross_attention_spans_many_keys(models, images, name, attention):
    module = getattr(models[name], attention)
    captured = {}
    handle = module.register_forward_pre_hook(lambda _, args: captured.setdefault("args", args))
    with torch.no_grad():
        models[name](images)
        handle.remove()
        query, key, value = captured["args"]
        _, weights = module(query, key, value, need_weights=True)
    assert weights.shape[1] == 1 and weights.shape[2] > 1  # one query over many keys
    assert torch.allclose(weights.sum(dim=-1), torch.ones(2, 1), atol=1e-5)
    assert weights.max() < 0.999  # softmax over one key would be all ones


# --- seed-flaw corrections: RINE + SSCA ---


def test_ssca_input_map_is_not_spatially_constant(models, images):
    model = models["rine_ssca_tiny"]
    captured = {}
    handle = model.ssca.reduce.register_forward_hook(lambda _, args, out: captured.setdefault("out", out))
    with torch.no_grad():
        model(images)
    handle.remove()
    feature_map = captured["out"]
    assert feature_map.shape == (2, 32, 16, 16)
    spread = feature_map.flatten(2).std(dim=-1)  # per (sample, channel), over cells
    assert (spread > 1e-3 * feature_map.abs().mean()).all()


# --- pretrained loading ---


def _no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize(
    ("name", "weights"),
    [
        ("dual_branch_tiny", "/nonexistent/vit.safetensors"),
        ("rine_ssca_tiny", "/nonexistent/clip"),
        ("rine_ssca_tiny", "nonexistent-org/nonexistent-model"),
    ],
)
def test_missing_weights_raise_one_line_without_network(monkeypatch, name, weights):
    attempts = _no_network(monkeypatch)
    start = time.monotonic()
    with pytest.raises(SpecdetError) as error:
        create_model(name, pretrained=True, weights=weights)
    assert time.monotonic() - start < 10
    assert "\n" not in str(error.value) and weights in str(error.value) and "pretrained=False" in str(error.value)
    assert not attempts


def test_missing_hub_cache_raises_without_network(monkeypatch, tmp_path):
    attempts = _no_network(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SpecdetError, match="Hugging Face cache"):
        create_model("dual_branch_tiny", pretrained=True)
    assert not attempts


def test_vit_weights_load_from_a_local_file(models, tmp_path):
    from safetensors.torch import save_file

    source = models["dual_branch_tiny"].vit
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_model("dual_branch_tiny", pretrained=True, weights=str(path)).vit
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_clip_weights_load_from_a_local_directory(models, tmp_path):
    source = models["rine_ssca_tiny"].backbone
    source.save_pretrained(tmp_path)
    loaded = create_model("rine_ssca_tiny", pretrained=True, weights=str(tmp_path)).backbone
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(SpecdetError, match="shape"):
        create_model("rine_ssca_tiny", pretrained=True, weights=str(tmp_path), clip_layers=3)


# --- behaviour ---


@pytest.mark.parametrize("name", TINY)
def test_eval_is_deterministic(models, images, name):
    with torch.no_grad():
        first, second = models[name](images), models[name](images)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_dual_branch_gradients_reach_both_branches(images):
    model = create_model("dual_branch_tiny").train()
    total, _ = DualBranchLoss()(model(images), torch.tensor([0.0, 1.0]))
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_rine_gradients_skip_the_frozen_clip(images):
    model = create_model("rine_ssca_tiny").train()
    assert not model.backbone.training and model.q1.training
    batch = torch.cat([images, images.flip(-1)])  # two of each label, so SupCon has positives
    total, _ = RineSSCALoss()(model(batch), torch.tensor([0, 1, 0, 1]))
    total.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.backbone.parameters())
    head = [(n, p) for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in head)

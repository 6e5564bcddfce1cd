"""Shared fixtures: a tiny stand-in model registry, sample images, tiny artifacts.

The stand-in replaces ``specdet.models``' registry functions for these tests,
so checkpoint and runtime behaviour is tested on a model that builds and runs
in milliseconds, independently of the real detectors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as samples

from specdet import models
from specdet.manifest import Manifest
from specdet.models import checkpoint

# The C/C++ runtime's build fixtures (cpp, cpp_sanitized), for its two test files.
pytest_plugins = ["cpp_support"]

TINY_PREPROCESSING = {
    "resize": 40,
    "crop": 32,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bicubic",
}
MAX_BATCH = 4


@dataclasses.dataclass
class TinyConfig:
    width: int = 4  # channels of the single conv layer
    seed: int = 0  # initial weights, so two builds differ only when asked to


class TinyDetector(torch.nn.Module):
    arch_name = "tiny"

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        torch.manual_seed(config.seed)
        self.conv = torch.nn.Conv2d(3, config.width, 3, stride=2)
        self.head = torch.nn.Linear(config.width, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(image).relu().mean((2, 3))).squeeze(1)


class TinyScoring(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.model(image)
        return logit, torch.sigmoid(logit)


def _create_model(name: str, **overrides) -> torch.nn.Module:
    assert name == "tiny"
    return TinyDetector(TinyConfig(**overrides))


@pytest.fixture
def tiny_models(monkeypatch):
    """Install the stand-in registry in ``specdet.models``."""
    monkeypatch.setattr(models, "create_model", _create_model, raising=False)
    monkeypatch.setattr(models, "list_models", lambda: ["tiny"], raising=False)
    monkeypatch.setattr(models, "default_preprocessing", lambda name: dict(TINY_PREPROCESSING), raising=False)
    monkeypatch.setattr(models, "ScoringModule", TinyScoring, raising=False)


@pytest.fixture
def tiny_checkpoint(tiny_models, tmp_path) -> Path:
    return checkpoint.save(_create_model("tiny"), tmp_path / "tiny.pth", threshold=0.5)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """The stand-in exported to ONNX (batch 1..MAX_BATCH) with a hand-written manifest inside."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    module = TinyScoring(_create_model("tiny")).eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    torch.onnx.export(
        module,
        (torch.zeros(2, 3, 32, 32),),
        path,
        dynamo=True,
        input_names=["image"],
        output_names=["logit", "probability"],
        dynamic_shapes={"image": {0: batch}},
        external_data=False,
        verbose=False,
    )
    Manifest.from_dict(tiny_manifest()).write(path)
    return path


def tiny_manifest() -> dict:
    """The stand-in's manifest as JSON data (tests change it before writing)."""
    return {
        "format": "specdet-manifest",
        "version": 1,
        "artifact": "tiny.onnx",
        "architecture": "tiny",
        "config": dataclasses.asdict(TinyConfig()),
        "preprocessing": dict(TINY_PREPROCESSING),
        "threshold": 0.5,
        "inputs": [{"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float32"}],
        "outputs": [
            {"name": "logit", "shape": ["batch"], "dtype": "float32"},
            {"name": "probability", "shape": ["batch"], "dtype": "float32"},
        ],
        "batch": {"min": 1, "max": MAX_BATCH},
        "fft_mode": "torch",
        "precision": "fp32",
        "opset": 18,
        "parent": {"path": "tiny.pth", "sha256": "0" * 64},
        "versions": {},
        "validation": {},
        "metadata": {},
    }


def _quarter(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(array)
    return image.resize((image.width // 4, image.height // 4))


def _exif_rotated() -> Image.Image:
    """40x20 stored, left half red, right half blue, tagged 'rotate 90 clockwise to display'."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    return Image.fromarray(pixels)


EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """A folder of images: ``good/`` (every kind load_image handles) and ``bad/`` (corrupt ones)."""
    root = tmp_path_factory.mktemp("images")
    good, bad = root / "good", root / "bad"
    (good / "nested").mkdir(parents=True)
    bad.mkdir()
    _quarter(samples.astronaut()).save(good / "astronaut.png")
    _quarter(samples.coffee()).save(good / "coffee.jpg", quality=90)
    _quarter(samples.chelsea()).save(good / "nested" / "chelsea.JPG", quality=90)
    _quarter(samples.camera()).save(good / "camera.png")  # mode L
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    Image.fromarray(rgba).save(good / "rgba.png")
    palette = Image.new("P", (48, 48), 0)  # left half: index 0, transparent
    palette.paste(1, (24, 0, 48, 48))  # right half: index 1, red
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(good / "palette.gif", transparency=0)
    Image.new("CMYK", (48, 48), (0, 255, 255, 0)).save(good / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    _exif_rotated().save(good / "rotated.jpg", quality=95, exif=exif)
    Image.fromarray(np.full((48, 48), 65535, np.uint16)).save(good / "deep.png")
    (good / "notes.txt").write_text("not an image, and not an image suffix: folders skip it")

    jpeg = (good / "coffee.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (bad / "text.png").write_text("this is text, not a PNG")
    return root

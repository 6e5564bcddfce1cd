"""Training data: the field's folder layouts, unreadable images, seeded augmentation, the demo data maker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from specdet.errors import SpecdetError
from specdet.models import default_preprocessing
from specdet.runtime.preprocess import preprocess
from specdet.train import augment as augment_module
from specdet.train.augment import Augment
from specdet.train.data import FAKE, REAL, EvalDataset, TrainDataset, discover
from specdet.train.make_data import make_demo_data, random_decoder, upsample_tconv

SPEC = {**default_preprocessing("dual_branch_tiny"), "crop": 48}


def _write(path: Path, rng: np.random.Generator) -> None:
    """A random-size (64..256 px) smooth colour image: noise would make every augmentation look alike."""
    h, w = rng.integers(64, 257, size=2)
    y, x = np.mgrid[0:h, 0:w] / 32.0
    pixels = np.stack([np.sin(x + c) * np.cos(y * (c + 1)) for c in range(3)], axis=-1)
    pixels = (127.5 * (pixels + 1) + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=92)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """CNNDetection layout: two sources (one nested by category), 16 images, one corrupt file."""
    root = tmp_path_factory.mktemp("cnndet")
    rng = np.random.default_rng(0)
    for folder in ("biggan/0_real", "biggan/1_fake", "stylegan/car/0_real", "stylegan/car/1_fake"):
        for i in range(4):
            _write(root / folder / f"{i}.jpg", rng)
    (root / "biggan/1_fake/broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "biggan/notes.txt").write_text("ignored: not in a class folder")
    return root


def test_discover_cnndetection_layout_groups_nested_folders_by_top_level_source(layout):
    samples = discover(layout)
    assert {s.source for s in samples} == {"biggan", "stylegan"}
    assert len(samples) == 17
    assert sum(s.label == FAKE for s in samples if s.source == "biggan") == 5
    assert all(s.label == (REAL if "0_real" in s.path else FAKE) for s in samples)
    assert [s.path for s in samples] == sorted(s.path for s in samples)


def test_discover_one_source_with_real_fake_names(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path / "mine" / "real" / "a.png", rng)
    _write(tmp_path / "mine" / "fake" / "deeper" / "b.jpg", rng)
    samples = discover(tmp_path / "mine")
    found = [(Path(s.path).name, s.label, s.source) for s in samples]
    assert found == [("b.jpg", FAKE, "mine"), ("a.png", REAL, "mine")]


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir(), lambda p: (p / "photos").mkdir(parents=True)])
def test_discover_rejects_folders_without_the_layout(tmp_path, make):
    make(tmp_path / "data")
    with pytest.raises(SpecdetError, match="0_real"):
        discover(tmp_path / "data")


def test_unreadable_training_image_is_replaced_by_the_next_and_reported(layout):
    samples = discover(layout)
    broken = next(i for i, s in enumerate(samples) if s.path.endswith("broken.jpg"))
    item = TrainDataset(samples, Augment(SPEC), seed=0)[(0, broken)]
    assert item["skipped"] == [(samples[broken].path, item["skipped"][0][1])]
    assert item["label"] == samples[broken + 1].label and item["image"].shape == (3, 48, 48)


def test_eval_items_are_the_inference_preprocessing_and_unreadable_ones_are_left_out(layout):
    samples = discover(layout)
    dataset = EvalDataset(samples, SPEC)
    for i, sample in enumerate(samples):
        item = dataset[i]
        if sample.path.endswith("broken.jpg"):
            assert item["image"] is None and item["error"]
        else:
            assert np.array_equal(item["image"].numpy(), preprocess(sample.path, SPEC)[0])


def test_training_items_are_seeded_by_run_epoch_and_index(layout):
    samples = discover(layout)
    dataset = TrainDataset(samples, Augment(SPEC), seed=3)
    first = dataset[(0, 2)]["image"]
    assert torch.equal(first, TrainDataset(samples, Augment(SPEC), seed=3)[(0, 2)]["image"])
    assert not torch.equal(first, dataset[(1, 2)]["image"])
    assert not torch.equal(first, TrainDataset(samples, Augment(SPEC), seed=4)[(0, 2)]["image"])


def test_augment_draws_the_cnndetection_protocol(monkeypatch):
    calls = {"blur": [], "jpeg": []}
    monkeypatch.setattr(augment_module, "gaussian_blur", lambda im, s: calls["blur"].append(s) or im)
    monkeypatch.setattr(augment_module, "jpeg", lambda im, q: calls["jpeg"].append(q) or im)
    image = Image.new("RGB", (64, 80))
    rng = np.random.default_rng(0)
    for _ in range(1000):
        assert Augment(SPEC)(image, rng).shape == (3, 48, 48)
    assert 450 < len(calls["blur"]) < 550 and 450 < len(calls["jpeg"]) < 550  # probability 0.5 each
    assert 0.0 <= min(calls["blur"]) < 0.2 and 2.8 < max(calls["blur"]) <= 3.0
    assert min(calls["jpeg"]) >= 30 and max(calls["jpeg"]) == 100 and all(isinstance(q, int) for q in calls["jpeg"])


def test_augment_without_blur_or_jpeg_is_crop_flip_and_the_inference_normalisation():
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    plain = Augment(SPEC, blur_prob=0.0, jpeg_prob=0.0, flip_prob=0.0)(image, np.random.default_rng(0))
    flipped = Augment(SPEC, blur_prob=0.0, jpeg_prob=0.0, flip_prob=1.0)(image, np.random.default_rng(0))
    assert np.array_equal(plain, preprocess(image, SPEC)[0])
    assert np.array_equal(flipped, plain[:, :, ::-1])


def test_blur_and_jpeg_change_the_image_as_asked():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(augment_module.gaussian_blur(image, 0.0)), np.asarray(image))
    blurred = np.asarray(augment_module.gaussian_blur(image, 2.0), dtype=np.float64)
    assert blurred.std() < 0.5 * np.asarray(image, dtype=np.float64).std()
    assert augment_module.jpeg(image, 30).size == image.size


def test_generators_keep_the_image_and_leave_upsampling_traces():
    smooth = torch.linspace(0, 1, 64).expand(1, 3, 64, 64).clone()
    flat = torch.full((1, 3, 64, 64), 0.5)
    checker = upsample_tconv(flat, torch.Generator().manual_seed(0))
    assert checker.mean().item() == pytest.approx(0.5, abs=0.02)
    # The perturbed kernel's four output phases differ: a period-2 pattern on a flat image.
    inner = checker[..., 2:-2, 2:-2]
    assert (inner[..., ::2, ::2] - inner[..., 1::2, 1::2]).abs().mean() > 1e-3
    decoded = random_decoder(smooth, torch.Generator().manual_seed(0))
    assert decoded.shape == smooth.shape and (decoded - smooth).abs().mean() < 0.05


def test_make_demo_data_writes_both_layouts_deterministically(tmp_path):
    counts = make_demo_data(tmp_path / "a", train_crops=4, val_crops=4, size=64, seed=1)
    make_demo_data(tmp_path / "b", train_crops=4, val_crops=4, size=64, seed=1)
    assert counts == {"train": 8, "val": 8}
    train, val = discover(tmp_path / "a" / "train"), discover(tmp_path / "a" / "val")
    assert len(train) == 8 and sum(s.label for s in train) == 4
    assert {s.source for s in val} == {"tconv", "decoder"} and len(val) == 8
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.jpg"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    with Image.open(tmp_path / "a" / files[0]) as image:
        assert image.size == (64, 64)

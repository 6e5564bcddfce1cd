"""``detect-make-data OUT``: a real/fake demo set made from photographs that ship with PyPI packages.

Reals are crops (random position and scale, random flip) of the photographs
bundled with scikit-image and scikit-learn. Each fake is made from a real
crop by a generator-like process that leaves the traces detectors of
generated images look for (Wang et al. 2020; Durall et al. 2020, "Watch your
up-convolution"):

- ``tconv``: downsample by 2, then upsample with a transposed convolution
  (stride 2, a 4x4 bilinear kernel perturbed at random per image, shared by
  the colour channels): periodic checkerboard traces, spectral peaks at the
  Nyquist frequency, and the high frequencies lost to the downsampling.
- ``decoder``: downsample by 2 or 4, then a small randomly initialised
  generator decoder (a 1x1 lift to 16 channels, one or two stride-2
  transposed convolutions with leaky ReLU) with a bilinear skip path, as in
  StyleGAN2's output skips; its last, linear layer is fitted to the real crop
  by least squares (the part of a generator that training would fit): the
  image looks like the crop, and its spectrum carries a grid of replica peaks.

Reals and fakes then go through the same JPEG step (quality 75 to 95), so
compression tells them apart no more than content does: the difference the
detector can learn is the generator's, in the high frequencies that the
frequency branch sees. Grayscale photographs give grayscale fakes.

Layout: ``OUT/train/{0_real,1_fake}`` (one source) and
``OUT/val/{tconv,decoder}/{0_real,1_fake}`` (per source, CNNDetection's
layout), the validation crops from photographs that training never sees.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from specdet import cli
from specdet.errors import SpecdetError
from specdet.files import check_output
from specdet.progress import bar as progress_bar

# Bundled photographs (no download); validation ones are never used for training.
TRAIN_PHOTOS = (
    "astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle",
    "brick", "grass", "moon", "coins", "clock", "cell", "china",
)
VAL_PHOTOS = ("coffee", "flower", "camera", "gravel")
JPEG_QUALITY = (75, 95)  # inclusive; the same range for reals and fakes
_DECODER_WIDTH = 16
# How the README this writes begins: one that does not is the user's, never written over.
_README_START = "Demo real/fake set written by `detect-make-data`"
# Ridge of the least-squares fit of the decoder's output layer, relative to the
# features' mean energy: grayscale crops make the skip features collinear.
_RIDGE = 1e-6


def load_photo(name: str) -> np.ndarray:
    """A bundled photograph: ``HxWx3`` (colour) or ``HxW`` (grayscale) uint8."""
    try:
        from skimage import data
    except ImportError as err:
        raise SpecdetError("the demo data is made from scikit-image's photos: pip install 'specdet[demo]'") from err
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def upsample_tconv(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[1, 3, H, W]`` in [0, 1]: downsample by 2, upsample with a perturbed bilinear transposed convolution."""
    low = F.avg_pool2d(x, 2)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    strength = torch.empty(()).uniform_(0.03, 0.12, generator=generator)
    kernel = torch.outer(taps, taps) + strength * torch.randn(4, 4, generator=generator)
    kernel = kernel * 4 / kernel.sum()  # unit gain on average over the four output phases
    return F.conv_transpose2d(low, kernel.expand(3, 1, 4, 4), stride=2, padding=1, groups=3)


def random_decoder(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[1, 3, H, W]`` in [0, 1]: downsample, then a random transposed-conv decoder with a fitted output layer."""
    layers = int(torch.randint(1, 3, (), generator=generator))
    low = F.avg_pool2d(x, 2**layers)
    width = _DECODER_WIDTH
    lift = torch.randn(width, 3, 1, 1, generator=generator) / 3**0.5
    h = F.conv2d(low, lift, 0.1 * torch.randn(width, generator=generator))
    for _ in range(layers):
        weight = torch.randn(width, width, 4, 4, generator=generator) * (2 / (width * 4)) ** 0.5  # He init
        h = F.leaky_relu(F.conv_transpose2d(h, weight, stride=2, padding=1), 0.2)
    skip = F.interpolate(low, scale_factor=2**layers, mode="bilinear", align_corners=False)
    features = torch.cat([h[0].flatten(1), skip[0].flatten(1), torch.ones(1, h.shape[-2] * h.shape[-1])]).double()
    gram = features @ features.T
    gram += _RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    readout = torch.linalg.solve(gram, features @ x[0].flatten(1).T.double())  # [features, 3]
    return (readout.T @ features).reshape(x.shape).float()


GENERATORS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "tconv": upsample_tconv,
    "decoder": random_decoder,
}


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """A ``size`` square at a random scale (down to half, never up) and position, flipped half the time."""
    image = Image.fromarray(photo)
    short = min(image.size)
    if short < size:
        raise ValueError(f"photo of {image.size} is smaller than the crop {size}")
    scale = rng.uniform(max(size / short, 0.5), 1.0)
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    left = int(rng.integers(0, image.width - size + 1))
    top = int(rng.integers(0, image.height - size + 1))
    image = image.crop((left, top, left + size, top + size))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def make_fake(real: Image.Image, name: str, generator: torch.Generator) -> Image.Image:
    x = torch.from_numpy(np.asarray(real.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = GENERATORS[name](x, generator).clamp(0, 1)
    fake = Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return fake.convert(real.mode)  # a grayscale photograph gives a grayscale fake


def make_demo_data(
    out: str | Path, *, train_crops: int = 800, val_crops: int = 200, size: int = 256, seed: int = 0,
    progress: bool = False,
) -> dict[str, int]:
    """Write the demo set to ``out``; returns image counts per split. Each crop gives one real and one fake."""
    out = Path(out)
    photos = {name: load_photo(name) for name in TRAIN_PHOTOS + VAL_PHOTOS}
    check_size(size, photos)
    check_readme(out)
    splits = (("train", TRAIN_PHOTOS, train_crops), ("val", VAL_PHOTOS, val_crops))
    # The ops per image are small: one thread is several times faster than two fighting over them.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for split_index, (split, names, crops) in enumerate(splits):
            for i in progress_bar(enabled=progress, iterable=range(crops), desc=split, unit="crop"):
                # Consecutive crops take the generators in turn from the same photograph.
                photo = names[(i // len(GENERATORS)) % len(names)]
                fake_name = tuple(GENERATORS)[i % len(GENERATORS)]
                folder = out / split / fake_name if split == "val" else out / split
                _write_pair(folder, f"{photo}_{i:04d}", photos[photo], fake_name, size,
                            np.random.default_rng((seed, split_index, i)))
    finally:
        torch.set_num_threads(threads)
    (out / "README.md").write_text(
        f"{_README_START} (seed {seed}, {size}x{size} crops).\n\n" + __doc__.split("\n\n", 1)[1]
    )
    return {split: 2 * crops for split, _, crops in splits}


def check_size(size: int, photos: dict[str, np.ndarray]) -> None:
    smallest = min(min(photo.shape[:2]) for photo in photos.values())
    if size % 4 or not 16 <= size <= smallest:
        raise SpecdetError(f"crop size {size} must be a multiple of 4 from 16 to {smallest} (the smallest photograph)")


def check_readme(out: Path) -> None:
    """Refuse to write over an ``OUT/README.md`` that an earlier ``detect-make-data`` did not write."""
    readme = out / "README.md"
    try:
        with open(readme, "rb") as file:
            ours = file.read(len(_README_START)) == _README_START.encode()
    except FileNotFoundError:
        return
    except OSError as err:
        raise SpecdetError(f"cannot read {readme} ({err.strerror}): pick another folder") from err
    if not ours:
        raise SpecdetError(f"{readme} was not written by detect-make-data and would be replaced: pick another "
                           "folder or move it")


def _write_pair(
    folder: Path, stem: str, photo: np.ndarray, fake_name: str, size: int, rng: np.random.Generator
) -> None:
    """A real crop of ``photo`` to ``folder/0_real``, its fake to ``folder/1_fake``, both JPEG."""
    real = random_crop(photo, size, rng)
    fake = make_fake(real, fake_name, torch.Generator().manual_seed(int(rng.integers(2**62))))
    pairs = ((real, folder / "0_real" / f"{stem}.jpg"), (fake, folder / "1_fake" / f"{stem}_{fake_name}.jpg"))
    for image, path in pairs:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))


def _make(args: argparse.Namespace) -> int:
    out = check_output(args.out, "data set", folder=True)
    existing = [out / split for split in ("train", "val") if (out / split).exists()]
    if existing and not args.overwrite:
        raise SpecdetError(f"{existing[0]} already exists: pick another folder or pass --overwrite")
    # Everything that can refuse the run does so before the old set is deleted.
    check_size(args.size, {name: load_photo(name) for name in TRAIN_PHOTOS + VAL_PHOTOS})
    check_readme(out)
    for folder in existing:
        shutil.rmtree(folder)
    counts = make_demo_data(out, train_crops=args.train_crops, val_crops=args.val_crops, size=args.size,
                            seed=args.seed, progress=sys.stderr.isatty())
    print(f"wrote {counts['train']} training images to {out / 'train'} and {counts['val']} validation images "
          f"to {out / 'val'} (sources: {', '.join(GENERATORS)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="detect-make-data",
        description="Write a real/fake demo set: crops of photographs bundled with scikit-image and scikit-learn, "
        "and fakes made from them by transposed-convolution upsampling or a random generator decoder.",
    )
    parser.add_argument("out", help="folder to write train/ and val/ into")
    parser.add_argument("--train-crops", type=cli.int_range(1, 1_000_000), default=800, help="training crops; each gives a real and a fake")
    parser.add_argument("--val-crops", type=cli.int_range(1, 1_000_000), default=200, help="validation crops (held-out photographs)")
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels, a multiple of 4 (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace OUT/train and OUT/val if they exist")
    cli.add_debug_flag(parser)
    return cli.run(_make, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

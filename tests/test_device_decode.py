"""Decoding on the model's device (runtime/device_decode.py, ``--decode gpu``): on the CPU torchvision decodes
with libjpeg-turbo, as Pillow does, so every step after the decoder is checked here byte for byte against the
serial Pillow path: which files go to the device, the EXIF orientation, the resize and crop, errors and order."""

from __future__ import annotations

import io
from pathlib import Path

import image_corpus
import numpy as np
import pytest
import torch
from PIL import Image

from specdet.errors import SpecdetError
from specdet.runtime import Detector, device_decode
from specdet.runtime.device_decode import DeviceDecoder

SPEC = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic"}
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[str]:
    """JPEGs the device decoder takes: photo-size and small, wide and tall, grayscale, progressive, every EXIF
    orientation, and one smaller than the crop (scaled up)."""
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(1)
    paths = []
    for number, (height, width) in enumerate([(750, 1000), (1333, 1000), (300, 257), (231, 640), (100, 90)]):
        smooth = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((width, height), Image.BICUBIC)
        noisy = np.clip(np.asarray(smooth, np.int16) + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
        path = folder / f"photo-{number}.jpg"
        Image.fromarray(noisy).save(path, quality=int(rng.integers(75, 96)), progressive=number == 1)
        paths.append(path)
        if number == 0:
            for orientation in range(1, 9):
                exif = Image.Exif()
                exif[EXIF_ORIENTATION] = orientation
                oriented = folder / f"oriented-{orientation}.jpg"
                Image.fromarray(noisy[:400, :700]).save(oriented, quality=90, exif=exif)
                paths.append(oriented)
            Image.fromarray(noisy).convert("L").save(folder / "gray.jpg", quality=90)
            paths.append(folder / "gray.jpg")
    return [str(p) for p in paths]


def _device_reads(paths: list[str], batch: int, spec: dict = SPEC) -> tuple[list, DeviceDecoder]:
    decoder = DeviceDecoder(spec, 64_000_000, "cpu")
    out = []
    for first in range(0, len(paths), batch):
        crops, errors, frames = decoder.read(paths[first:first + batch])
        assert crops.dtype == torch.uint8 and crops.shape[1:] == (spec["crop"], spec["crop"], 3)
        assert len(crops) == errors.count(None)
        made = iter(crops.numpy())
        out += [(error, None if error else next(made).tobytes(), count) for error, count in zip(errors, frames)]
    return out, decoder


def test_jpegs_decoded_on_the_device_give_the_pillow_crops(jpegs):
    got, decoder = _device_reads(jpegs, batch=5)
    assert got == image_corpus.serial_reads(jpegs, SPEC)
    assert decoder.fallbacks == 0  # every one of them went through torchvision's decoder and the torch resize


def test_every_exif_orientation_is_applied_as_pillow_applies_it(jpegs):
    oriented = [p for p in jpegs if "oriented" in p]
    decoder = DeviceDecoder({**SPEC, "resize": None, "crop": 64, "pad_small": True}, 64_000_000, "cpu")
    for path in oriented:  # resize None, crop 64: the centre of the oriented image, no resampling to hide a flip
        crops, errors, _ = decoder.read([path])
        pillow = image_corpus.serial_reads([path], {**SPEC, "resize": None, "crop": 64, "pad_small": True})
        assert errors == [None] and crops[0].numpy().tobytes() == pillow[0][1], path
    assert decoder.fallbacks == 0


def test_the_hostile_corpus_gives_the_serial_paths_crops_errors_and_order(image_dir, tmp_path):
    paths = image_corpus.make(image_dir, tmp_path)
    for batch in (1, 4, 9):
        got, decoder = _device_reads(paths, batch)
        assert got == image_corpus.serial_reads(paths, SPEC)
    # Only the RGB and grayscale JPEGs went to the device; the PNGs, GIFs, CMYK, truncated, unreadable and
    # missing entries went to Pillow (which gave their errors above).
    on_device = {"coffee.jpg", "chelsea.JPG", "rotated.jpg", "photo.jpg"}
    assert decoder.fallbacks == sum(1 for p in paths if Path(p).name not in on_device)


def test_a_file_the_device_decoder_fails_on_goes_to_pillow(jpegs, monkeypatch):
    from torchvision import io as tv_io

    real = tv_io.decode_jpeg
    bad = torch.frombuffer(bytearray(open(jpegs[2], "rb").read()), dtype=torch.uint8)

    def failing(data, **kwargs):  # fails on one file, and so on any batch holding it, as nvJPEG does
        files = data if isinstance(data, list) else [data]
        if any(f.numel() == bad.numel() and torch.equal(f, bad) for f in files):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kwargs)

    monkeypatch.setattr(tv_io, "decode_jpeg", failing)
    got, decoder = _device_reads(jpegs[:4], batch=4)
    assert got == image_corpus.serial_reads(jpegs[:4], SPEC)
    assert decoder.fallbacks == 1


def test_what_goes_to_the_device(jpegs, tmp_path, monkeypatch):
    decoder = DeviceDecoder(SPEC, 64_000_000, "cpu")
    assert decoder._jpeg(jpegs[0]) is not None
    data = open(jpegs[0], "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[:-2])  # no end marker: Pillow refuses it, nvJPEG might not
    (tmp_path / "trailing.jpg").write_bytes(data + b"\r\n")
    Image.new("CMYK", (300, 300)).save(tmp_path / "cmyk.jpg")
    Image.new("RGB", (300, 300)).save(tmp_path / "png.jpg", format="PNG")
    assert decoder._jpeg(tmp_path / "cut.jpg") is None
    assert decoder._jpeg(tmp_path / "trailing.jpg") is not None
    assert decoder._jpeg(tmp_path / "cmyk.jpg") is None
    assert decoder._jpeg(tmp_path / "png.jpg") is None
    Image.open(jpegs[0]).save(tmp_path / "rgb-coded.jpg", keep_rgb=True)  # Adobe transform 0: no YCbCr
    assert Image.open(tmp_path / "rgb-coded.jpg").info.get("adobe_transform") == 0
    assert decoder._jpeg(tmp_path / "rgb-coded.jpg") is None
    assert DeviceDecoder(SPEC, 1000 * 700, "cpu")._jpeg(jpegs[0]) is None  # over the pixel limit: Pillow says so
    monkeypatch.setattr(device_decode, "MAX_FILE_BYTES", len(data) - 1)
    assert decoder._jpeg(jpegs[0]) is None


def test_orientation_table_matches_pillows_transposes():
    pixels = np.random.default_rng(2).integers(0, 256, (5, 7, 3), np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
        from PIL import ImageOps

        expected = np.asarray(ImageOps.exif_transpose(Image.open(buffer)).convert("RGB"))
        got = device_decode._orient(torch.from_numpy(pixels), orientation).numpy()
        assert np.array_equal(got, expected), orientation


@pytest.fixture(scope="module")
def corpus(image_dir, tmp_path_factory) -> list[str]:
    return image_corpus.make(image_dir, tmp_path_factory.mktemp("more"))


def test_detector_scores_files_decoded_on_the_device_as_the_pillow_path(tiny_checkpoint, corpus):
    counted = []
    with Detector(tiny_checkpoint) as detector:
        serial = detector.predict_files(corpus, batch_size=4, workers=0)
        on_device = detector.predict_files(corpus, batch_size=4, progress=counted.append, decode_device="cpu")
        with pytest.raises(SpecdetError, match="leave out workers"):
            detector.predict_files(corpus, workers=2, decode_device="cpu")
    assert on_device == serial  # probabilities, labels, errors, frames, order
    assert sum(counted) == len(corpus)
    assert any(r.ok for r in on_device) and any(not r.ok for r in on_device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_decode_gpu_without_a_gpu_is_a_one_line_error(tiny_checkpoint, corpus, capsys):
    from specdet.runtime.cli import main

    assert main([str(tiny_checkpoint), corpus[0], "--decode", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs an NVIDIA GPU" in err[0] and "--decode gpu" in err[0]


@pytest.mark.parametrize("flag", [["--workers", "2"], ["--ray"]])
def test_decode_gpu_refuses_workers_and_ray_in_one_line(tiny_checkpoint, corpus, capsys, flag):
    from specdet.runtime.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_checkpoint), corpus[0], "--decode", "gpu", *flag])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--decode gpu" in err[0]


def test_images_the_crop_pads_keep_their_orientation_and_warn_nothing(tmp_path):
    """pad_small with images smaller than the crop (cut on the host, not resampled): every orientation, colour
    and grayscale, as the Pillow path cuts them, and no stray warning on stderr (torch.from_numpy warned about
    Pillow's read-only array; torch warns once per process, so this checks it where nothing warned before)."""
    import warnings

    rng = np.random.default_rng(3)
    paths = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        for mode in ("RGB", "L"):
            path = tmp_path / f"tiny-{orientation}-{mode}.jpg"
            Image.fromarray(rng.integers(0, 256, (37, 61, 3), np.uint8)).convert(mode).save(path, exif=exif)
            paths.append(str(path))
    spec = {**SPEC, "resize": None, "pad_small": True}  # 61 x 37 stays so, padded to 224
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, decoder = _device_reads(paths, batch=5, spec=spec)
    assert got == image_corpus.serial_reads(paths, spec)
    assert decoder.fallbacks == 0
    assert [str(w.message) for w in caught] == []


def test_an_oriented_jpeg_with_a_damaged_exif_block_is_read_by_both_paths(tmp_path):
    """A tag whose value does not fit its type (a rational in PhotometricInterpretation, a SHORT): Pillow's
    exif_transpose raised struct.error rewriting the EXIF block, a traceback on the Pillow path (and for a PIL
    image given to load_image), while the device path read the file."""
    from specdet.runtime.preprocess import load_image

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    exif[0x011A] = 72.0  # XResolution, a rational: renamed below
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (70, 90, 3), np.uint8)).save(buffer, format="JPEG",
                                                                                            exif=exif)
    assert buffer.getvalue().count(b"\x01\x1a\x00\x05") == 1  # big-endian tag 0x011A of type RATIONAL
    path = tmp_path / "damaged-exif.jpg"
    path.write_bytes(buffer.getvalue().replace(b"\x01\x1a\x00\x05", b"\x01\x06\x00\x05"))
    got, decoder = _device_reads([str(path)], batch=1, spec={**SPEC, "resize": None, "crop": 64})
    assert got == image_corpus.serial_reads([str(path)], {**SPEC, "resize": None, "crop": 64})
    assert got[0][0] is None and decoder.fallbacks == 0
    assert load_image(Image.open(path)).size == (70, 90)  # turned upright: 90 x 70 stored


def test_a_wrong_device_name_is_a_one_line_error():
    with pytest.raises(SpecdetError, match="'gpu' is not a torch device"):
        DeviceDecoder(SPEC, 64_000_000, "gpu")

"""JPEG files to crops on a torch device: decoded there, oriented, resized with Pillow's arithmetic, centre-cropped.

``--decode gpu``: on a CUDA device the JPEGs are decoded by nvJPEG
(``torchvision.io.decode_jpeg``, one batched call), which is not
libjpeg-turbo: its inverse DCT and chroma upsampling differ from Pillow's by
a few levels, so these crops are close to the Pillow path's, not equal to
them. Everything after the decoder is exact: the EXIF orientation is applied
as Pillow's ``exif_transpose`` does, and the resize and crop are
:mod:`specdet.runtime.resample`'s port of Pillow's fixed-point filter. On the
CPU, torchvision decodes with libjpeg-turbo, and the crops equal the Pillow
path's byte for byte (tested), which checks every step but the decoder.

A file goes to the device decoder only when its header (read by Pillow,
nothing decoded) says it is a single-frame baseline or progressive JPEG in RGB
or grayscale, within the pixel limits, at most :data:`MAX_FILE_BYTES`, and
ending with the JPEG end marker. Every other file (PNG, CMYK, truncated,
refused, or one the device decoder fails on) is read by the Pillow path
(:func:`~specdet.runtime.preprocess.image_crop`), which gives its crop or its
usual error: errors are reported as without ``--decode gpu``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from specdet.errors import SpecdetError
from specdet.runtime import resample
from specdet.runtime.preprocess import ImageError, check_spec, crop_pixels, exif_orientation, image_crop, resized_size

# Larger files go through Pillow: their bytes would otherwise be held whole before any check of the header.
MAX_FILE_BYTES = 64 << 20
_END_OF_IMAGE = b"\xff\xd9"
_DEVICE_MODES = ("RGB", "L")  # nvJPEG's RGB output of these is what Pillow's convert("RGB") gives


def _orient(image, orientation: int):
    """``image`` (``[H, W, 3]``) as Pillow's ``exif_transpose`` turns an image of this EXIF orientation."""
    import torch

    if orientation == 2:  # FLIP_LEFT_RIGHT
        return image.flip(1)
    if orientation == 3:  # ROTATE_180
        return image.flip(0, 1)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return image.flip(0)
    if orientation == 5:  # TRANSPOSE
        return image.transpose(0, 1)
    if orientation == 6:  # ROTATE_270 (a quarter turn clockwise)
        return torch.rot90(image, -1, (0, 1))
    if orientation == 7:  # TRANSVERSE
        return image.flip(0, 1).transpose(0, 1)
    if orientation == 8:  # ROTATE_90 (a quarter turn anticlockwise)
        return torch.rot90(image, 1, (0, 1))
    return image


class DeviceDecoder:
    """Read batches of files into uint8 ``[N, crop, crop, 3]`` crops on ``device`` (see the module's notes).

    ``spec`` is the artifact's preprocessing and ``max_pixels`` the limit the
    Pillow path applies. :attr:`fallbacks` counts the files read by Pillow.
    """

    def __init__(self, spec: dict[str, Any], max_pixels: int, device: Any):
        import torch

        check_spec(spec)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise SpecdetError(f"{device!r} is not a torch device: give 'cuda', 'cuda:1' or 'cpu'") from None
        self.spec, self.max_pixels = spec, max_pixels
        self.fallbacks = 0
        if self.device.type == "cuda":
            self._check_gpu()

    def _check_gpu(self) -> None:
        """Refuse, in one line, a GPU this process cannot decode on: every file would otherwise fall back to
        Pillow without a word."""
        import torch

        if not torch.cuda.is_available():
            raise SpecdetError("decoding on the GPU needs an NVIDIA GPU and a CUDA build of PyTorch; none is usable "
                               "here: leave out --decode gpu")
        sample = io.BytesIO()
        Image.new("RGB", (16, 16)).save(sample, format="JPEG")
        if self._decode([torch.frombuffer(bytearray(sample.getvalue()), dtype=torch.uint8)]) == [None]:
            raise SpecdetError(f"this torchvision cannot decode JPEGs on {self.device} (no nvJPEG?): leave out "
                               "--decode gpu")

    def read(self, paths: Sequence[str | Path]) -> tuple[Any, list[str | None], list[int]]:
        """``(crops, errors, frames)`` as :func:`~specdet.runtime.pipeline.read_batch` gives them: each file's error
        (None when read) and frame count, and the readable files' crops in order, on the device."""
        import torch

        crop = self.spec["crop"]
        errors: list[str | None] = [None] * len(paths)
        frames = [1] * len(paths)
        eligible = {i: found for i, path in enumerate(paths) if (found := self._jpeg(path)) is not None}
        decoded = dict(zip(eligible, self._decode([eligible[i][0] for i in eligible])))
        made: dict[int, Any] = {}  # file -> its finished crop (on the host or the device); the resized ones follow
        regions, pieces, used = [], [], 0
        for i in range(len(paths)):
            if decoded.get(i) is not None:
                image = _orient(decoded[i].permute(1, 2, 0), eligible[i][1])
                crop_plan = resample.plan((image.shape[1], image.shape[0]), self.spec)
                if crop_plan is None:  # padded by the crop: nothing to resample, cut as the Pillow path cuts it
                    # A copy (torch.tensor): Pillow's array is read-only, which torch.from_numpy warns about.
                    made[i] = torch.tensor(crop_pixels(Image.fromarray(image.cpu().numpy()), self.spec))
                    continue
                (top, bottom), (left, right) = crop_plan.rows, crop_plan.cols
                pieces.append(image[top:bottom, left:right].reshape(-1))
                regions.append((i, used, crop_plan))
                used += pieces[-1].numel()
                continue
            self.fallbacks += 1
            try:
                pixels, frames[i] = image_crop(paths[i], self.spec, self.max_pixels)
                made[i] = torch.tensor(pixels)  # a copy, as above
            except ImageError as err:
                errors[i] = err.reason
        crops = torch.empty((len(paths), crop, crop, 3), dtype=torch.uint8, device=self.device)
        for i, pixels in made.items():
            crops[i] = pixels.to(self.device)
        if regions:
            resample.resize_regions(torch.cat(pieces), regions, crops)
        readable = [i for i, error in enumerate(errors) if error is None]
        return crops[readable] if len(readable) < len(paths) else crops, errors, frames

    def _jpeg(self, path: str | Path) -> tuple[Any, int] | None:
        """``(the file's bytes as a uint8 tensor, its EXIF orientation)`` when the device decoder takes it; None
        to leave it to the Pillow path (which also reports whatever is wrong with it)."""
        import torch

        try:
            path = Path(path)
            if not path.is_file():  # a FIFO or device is never opened here (nor by the Pillow path)
                return None
            with open(path, "rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)  # bounded, whatever stat said: a file may grow meanwhile
            if len(data) > MAX_FILE_BYTES or not data.rstrip(b"\0\r\n ").endswith(_END_OF_IMAGE):  # truncated: Pillow refuses it, nvJPEG may not
                return None
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:  # the header only: nothing decoded
                width, height = image.size
                resized = resized_size(image.size, self.spec)
                # An RGB-coded JPEG (Adobe transform 0) is left to Pillow: whether nvJPEG honours the marker, rather
                # than convert it as YCbCr, is unchecked (torchvision's libjpeg-turbo does: tested on the CPU).
                if (image.format != "JPEG" or image.mode not in _DEVICE_MODES or getattr(image, "n_frames", 1) != 1
                        or image.info.get("adobe_transform") == 0
                        or width * height > self.max_pixels or resized[0] * resized[1] > self.max_pixels):
                    return None
                orientation = exif_orientation(image)
        except Exception:  # noqa: BLE001 (any trouble with the header: the Pillow path reads the file and says what)
            return None
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation

    def _decode(self, encoded: list[Any]) -> list[Any]:
        """Each encoded file decoded to ``[3, H, W]`` uint8 on the device, or None where the decoder failed: one
        batched call, and one call per file only when the batch's fails (it fails whole on one bad file)."""
        from torchvision import io as tv_io

        if not encoded:
            return []
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders for TorchCodec's; decode_jpeg is still the one batched nvJPEG
            # call without another dependency, and it warns on every call.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            try:
                return list(tv_io.decode_jpeg(encoded, mode=tv_io.ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                pass
            images = []
            for data in encoded:
                try:
                    images.append(tv_io.decode_jpeg(data, mode=tv_io.ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    images.append(None)
            return images


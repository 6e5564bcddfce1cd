"""JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``) and resizing there: fast, not Pillow-exact.

nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo by a level or
two, and torch's antialiased bicubic is not Pillow's fixed-point filter, so
these crops are not the Pillow path's: :mod:`specdet.benchmarks.end_to_end`
measures by how much, beside the speed. Only for baseline JPEGs without EXIF
orientation (nvJPEG applies none); everything else belongs on the Pillow path.
"""

from __future__ import annotations

from collections.abc import Sequence

from specdet.runtime.preprocess import crop_origin, resized_size


def decode_batch(paths: Sequence[str], spec: dict):
    """uint8 ``[N, crop, crop, 3]`` crops on the GPU: decoded in one nvJPEG batch, resized and centre-cropped as the
    Pillow path sizes them (torchvision's Resize/CenterCrop rounding)."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    crop = spec["crop"]
    images = decode_jpeg([read_file(p) for p in paths], device="cuda", mode=ImageReadMode.RGB)
    out = torch.empty((len(paths), crop, crop, 3), dtype=torch.uint8, device="cuda")
    for i, image in enumerate(images):
        height, width = image.shape[1:]
        new_width, new_height = resized_size((width, height), spec)
        resized = image[None].float()
        if (new_width, new_height) != (width, height):
            resized = F.interpolate(resized, size=(new_height, new_width), mode=spec["interpolation"], antialias=True,
                                    align_corners=False)
        left, top = crop_origin((new_width, new_height), crop)
        window = resized[0, :, top:top + crop, left:left + crop].round().clamp(0, 255)
        out[i] = window.to(torch.uint8).permute(1, 2, 0)
    return out

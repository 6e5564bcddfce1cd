"""Bounds on the counts users give, the same for the command lines and the Python API.

A value outside its range is refused with one line (:func:`check_count`)
before any work starts, instead of thrashing, hanging or failing deep inside
a backend.
"""

from __future__ import annotations

import math
from typing import Any

from specdet.errors import SpecdetError

# A thread count beyond this only thrashes (100000 threads did not finish in minutes).
MAX_THREADS = 1024
# A batch beyond this does not fit any accelerator's memory at 224 x 224.
MAX_BATCH = 65536
# A --list file: a billion bytes is tens of millions of paths, more than one run should hold in memory.
MAX_LIST_BYTES = 1_000_000_000
# Input worker processes (--workers): 0 reads in the scoring process itself.
MAX_WORKERS = 256
# Shared memory for the input pipeline's batch slots: fewer slots (never under two) when batches are large.
MAX_SLOT_BYTES = 1 << 30
# Shared memory for the full-size pixels the GPU resizes (resize_on_device), all slots together.
MAX_ARENA_BYTES = 2 << 30
# 8000 x 8000: every camera photo fits; a decompression bomb (a small PNG whose
# header claims 30000 x 30000) is refused from its header, before decoding.
# Below Pillow's own warning threshold (about 89.5 megapixels).
MAX_PIXELS = 64_000_000
# The most max_pixels may be raised to: Pillow refuses larger images as
# decompression bombs whatever specdet allows (twice its MAX_IMAGE_PIXELS).
MAX_PIXELS_CEILING = 2 * 89_478_485
# Memory to decode one image and convert it to RGB (specdet.runtime.preprocess.decode_bytes, from the
# header): every image of MAX_PIXELS fits, in any mode; a 16-bit or float image raised towards
# MAX_PIXELS_CEILING may not (13000 x 13000 16-bit grayscale needs 1.6 GiB).
MAX_IMAGE_BYTES = 3 << 29  # 1.5 GiB
# The side of a model's square input (a config's input_size, a manifest's crop): 4096 x 4096 is 80 times
# the 224 x 224 the detectors were designed for; beyond it one image's activations fill any GPU.
MAX_INPUT_SIZE = 4096
# Any other whole-number field of a model config (widths, ...); fields that count blocks, bands or heads
# have tighter bounds beside the config classes (specdet.models.registry).
MAX_CONFIG_INT = 65536
# Items in a list-valued config field (per-stage widths) and characters in a text field.
MAX_CONFIG_ITEMS = 64
MAX_CONFIG_TEXT = 4096
# Weights and buffers of one model: 4 GB as float32, three times the largest variant (CLIP ViT-L/14: 0.3 G).
MAX_MODEL_NUMBERS = 1_000_000_000
# JSON a manifest (or a checkpoint's metadata, which goes into it) may hold: nesting and values, counted as
# written out (a pickled checkpoint can refer to one list many times, a tree far larger than its file).
MAX_JSON_DEPTH = 64
MAX_JSON_VALUES = 1_000_000

# Memory one Ray actor of detect-predict --ray takes besides its copy of the artifact: 0.7 to 0.85 GB
# resident measured for a tiny model (Python, torch, Ray's worker). A local cluster gets no more actors
# than the machine's available memory holds at this much each.
RAY_ACTOR_BYTES = 1 << 30
# Preprocessed calibration images held at once by FP16/INT8 conversion (--calibration-count): 1.5 GiB
# is about 2600 images at 224 x 224 (float32); each search attempt runs over all of them.
MAX_CALIBRATION_BYTES = 3 << 29


def is_probability(value: Any) -> bool:
    """Whether ``value`` is a finite number from 0 to 1: the rule for every decision threshold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


def check_count(value: Any, name: str, high: int, low: int = 1) -> int:
    """``value`` if it is a whole number from ``low`` to ``high``; otherwise a one-line :class:`SpecdetError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecdetError(f"{name}={value!r} is out of range: give a whole number from {low} to {high}")
    return value

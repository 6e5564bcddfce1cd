"""The serving venv (tests/serve/venv.sh): numpy 1.x beside pytriton, every other package from the main venv."""

from __future__ import annotations

import pytest

pytest.importorskip("pytriton")


def test_the_serving_venv_has_the_numpy_pytriton_needs():
    import numpy
    import torch  # from the main venv, through the .pth file venv.sh writes

    assert int(numpy.__version__.split(".")[0]) < 2, "pytriton's backend stub returns empty tensors on numpy 2"
    assert torch.__version__

"""detect-demo: the parity table of ONNX files against the PyTorch checkpoint (specdet.compare underneath)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np

from specdet import demo
from specdet.images import SAMPLE_PHOTOS


def test_one_model_in_one_mode_scores_like_pytorch(tmp_path):
    (row,) = demo.run_demo(tmp_path, fft_modes=("matmul",), models=("rine_ssca_tiny",))
    assert (row["model"], row["fft"], row["onnx"]) == ("rine_ssca_tiny", "matmul", "rine_ssca_tiny-matmul.onnx")
    assert 0.0 <= row["max_abs_diff"] <= 1e-4 and row["agreement"] == 1.0
    assert "| rine_ssca_tiny | matmul | rine_ssca_tiny-matmul.onnx |" in demo.format_table([row], len(SAMPLE_PHOTOS))


def test_outputs_that_are_not_numbers_fail_parity(tmp_path, monkeypatch, capsys):
    """An ONNX file whose scores are NaN is infinitely far from PyTorch: the demo fails, it does not pass."""
    finite, broken = np.array([0.2, 0.7]), np.array([np.nan, 0.7])
    # Per model: the checkpoint's scores, then the ONNX file's.
    scores = iter([finite, finite.copy(), finite, broken])
    monkeypatch.setattr(demo, "_score", lambda detector, images: (next(scores), 0.001))
    monkeypatch.setattr(demo, "export_checkpoint", lambda pth, path, **kwargs: SimpleNamespace(path=path, size_bytes=0))
    monkeypatch.setattr(demo, "Detector", lambda path: contextlib.nullcontext(SimpleNamespace(threshold=0.5)))
    assert demo.main(["--out", str(tmp_path), "--fft", "matmul"]) == 1
    out, err = capsys.readouterr()
    assert "| rine_ssca_tiny | matmul | rine_ssca_tiny-matmul.onnx | 0.0 | inf | 50% |" in out
    assert "parity FAILED: largest difference inf" in err

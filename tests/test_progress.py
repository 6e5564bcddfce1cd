"""Progress bars are drawn on terminals only: logs and CI output get no carriage-return frames."""

from __future__ import annotations

import io

import torch

from specdet.export import export_onnx
from specdet.progress import bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_draws_on_a_terminal_and_not_elsewhere():
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        with bar(total=3, file=stream, mininterval=0) as b:
            b.update(3)
    assert "\r" in terminal.getvalue() and log.getvalue() == ""
    with bar(enabled=False, total=3, file=terminal) as b:  # the caller may still turn it off
        before = terminal.getvalue()
        b.update(3)
    assert terminal.getvalue() == before


class _Filter(torch.nn.Module):
    def forward(self, x):
        return torch.fft.irfft2(torch.fft.rfft2(x) * 0.5, s=x.shape[-2:])


def test_export_writes_no_bar_frames_to_a_log(tmp_path, capfd):
    export_onnx(_Filter(), tmp_path / "f.onnx", example_input=torch.randn(2, 3, 16, 16), fft="matmul", progress=True)
    assert "\r" not in capfd.readouterr().err

"""Spectral modules of the kinds users bring, written the way their authors write them.

None of them is one of our detectors; the exporter must handle them through
the general ``torch.fft`` lowering.
"""

from __future__ import annotations

import torch
from torch import nn


class GlobalFilter(nn.Module):
    """GFNet's global filter layer: rfft2, times a learned complex filter, irfft2."""

    def __init__(self, channels: int, h: int, w: int):
        super().__init__()
        self.complex_weight = nn.Parameter(torch.randn(h, w // 2 + 1, channels, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, C]
        h, w = x.shape[1:3]
        spectrum = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
        spectrum = spectrum * torch.view_as_complex(self.complex_weight)
        return torch.fft.irfft2(spectrum, s=(h, w), dim=(1, 2), norm="ortho")


class GlobalFilterNet(nn.Module):
    """A small classifier around :class:`GlobalFilter` taking NCHW images."""

    def __init__(self, h: int = 16, w: int = 20):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.filter = GlobalFilter(8, h, w)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.filter(self.stem(x).permute(0, 2, 3, 1))
        return self.head(y.mean(dim=(1, 2)))


class FourierUnit(nn.Module):
    """Fast Fourier convolution's spectral unit (FFC, LaMa): 1x1 conv over stacked real and imaginary parts."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        spectrum = torch.fft.rfft2(x, norm="ortho")
        stacked = torch.stack((spectrum.real, spectrum.imag), dim=2).reshape(b, 2 * c, h, w // 2 + 1)
        stacked = torch.relu(self.conv(stacked)).reshape(b, c, 2, h, w // 2 + 1)
        spectrum = torch.complex(stacked[:, :, 0], stacked[:, :, 1])
        return torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") + x


class AmplitudePhaseMix(nn.Module):
    """Amplitude/phase editing on the full, shifted spectrum: abs, angle, polar, exp(1j*phase), fftshift."""

    def __init__(self, h: int = 12, w: int = 14):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, h * w).reshape(h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
        amplitude, phase = torch.abs(spectrum), torch.angle(spectrum)
        edited = torch.polar(amplitude * self.gain, phase) + 0.1 * amplitude * torch.exp(1j * phase)
        image = torch.fft.ifft2(torch.fft.ifftshift(edited, dim=(-2, -1)))
        return torch.cat([image.real, image.imag.abs()], dim=1)


class SpectralConv2d(nn.Module):
    """Fourier Neural Operator layer: complex weights mix channels on the lowest modes (einsum)."""

    def __init__(self, channels: int = 3, modes: int = 4):
        super().__init__()
        self.modes = modes
        self.weights = nn.Parameter(torch.randn(channels, channels, modes, modes, dtype=torch.cfloat) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        spectrum = torch.fft.rfft2(x)
        low = torch.einsum("bixy,ioxy->boxy", spectrum[:, :, : self.modes, : self.modes], self.weights)
        out = torch.zeros(b, c, h, w // 2 + 1, dtype=torch.cfloat)
        out[:, :, : self.modes, : self.modes] = low
        return torch.fft.irfft2(out, s=(h, w))

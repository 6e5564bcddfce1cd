"""ComplexLowering in eager mode: every lowering of torch.fft and of complex arithmetic against torch itself.

No ONNX here: the mode runs eagerly, so each case runs twice, once as plain
PyTorch (complex tensors) and once inside ``ComplexLowering`` (pairs of real
tensors), in float64, and the two must agree to 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from specdet.errors import SpecdetError
from specdet.export import dft_matrices
from specdet.export.complex_pair import ComplexExportError, ComplexPair
from specdet.export.lowering import LOWERINGS, ComplexLowering

ATOL = 1e-10
NORMS = (None, "backward", "ortho", "forward")
fft = torch.fft


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def lowered(lowering: str, func, *args):
    with ComplexLowering(lowering):
        return func(*args)


def to_torch(value):
    """A pair as the complex tensor it stands for; sequences element by element."""
    if isinstance(value, ComplexPair):
        return torch.complex(value.re, value.im)
    if isinstance(value, (list, tuple)):
        return type(value)(to_torch(v) for v in value)
    return value


def assert_lowered_like_torch(got, expected, atol: float = ATOL) -> None:
    """``got`` (from the mode) stands for ``expected`` (plain torch); complex values must come back as pairs."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected)
        for g, e in zip(got, expected):
            assert_lowered_like_torch(g, e, atol)
        return
    if isinstance(expected, torch.Tensor) and expected.is_complex():
        # Inside the mode no complex tensor may survive: ONNX has no complex dtype.
        assert isinstance(got, ComplexPair), f"expected a ComplexPair, got {type(got).__name__}"
        assert not got.re.is_complex() and not got.im.is_complex()
        assert got.re.dtype == got.im.dtype == expected.real.dtype
        assert got.dtype == expected.dtype
    else:
        assert isinstance(got, torch.Tensor) and not got.is_complex()
    got = to_torch(got)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def check(lowering: str, func, *args, atol: float = ATOL) -> None:
    expected = func(*args)
    assert_lowered_like_torch(lowered(lowering, func, *args), expected, atol)


# --- torch.fft: every transform, norm, size, padding/trimming and axis choice ---

# (id, function of (re, im, norm), shape of re and im). Complex inputs are
# built inside the function with torch.complex, so that under the mode they
# are pairs, as they are in a model.
FFT_CASES = [
    # 1-D complex to complex
    ("fft", lambda a, b, norm: fft.fft(torch.complex(a, b), norm=norm), (3, 10)),
    ("fft-odd", lambda a, b, norm: fft.fft(torch.complex(a, b), norm=norm), (2, 7)),
    ("fft-real-input", lambda a, b, norm: fft.fft(a, norm=norm), (2, 14)),
    ("fft-pad", lambda a, b, norm: fft.fft(torch.complex(a, b), n=16, norm=norm), (2, 10)),
    ("fft-trim", lambda a, b, norm: fft.fft(a, n=7, norm=norm), (2, 10)),
    ("fft-middle-dim", lambda a, b, norm: fft.fft(torch.complex(a, b), dim=1, norm=norm), (2, 7, 4)),
    ("fft-first-dim-pad", lambda a, b, norm: fft.fft(torch.complex(a, b), 9, 0, norm), (7, 3)),
    ("ifft", lambda a, b, norm: fft.ifft(torch.complex(a, b), norm=norm), (3, 16)),
    ("ifft-odd-pad-middle", lambda a, b, norm: fft.ifft(torch.complex(a, b), n=11, dim=-2, norm=norm), (2, 7, 3)),
    ("ifft-real-input-trim", lambda a, b, norm: fft.ifft(a, n=5, norm=norm), (2, 14)),
    # 1-D real to complex and back
    ("rfft-even", lambda a, b, norm: fft.rfft(a, norm=norm), (3, 16)),
    ("rfft-odd", lambda a, b, norm: fft.rfft(a, norm=norm), (3, 7)),
    ("rfft-pad-odd", lambda a, b, norm: fft.rfft(a, n=13, norm=norm), (2, 10)),
    ("rfft-trim-middle", lambda a, b, norm: fft.rfft(a, n=5, dim=1, norm=norm), (2, 10, 3)),
    ("irfft-default-n", lambda a, b, norm: fft.irfft(torch.complex(a, b), norm=norm), (3, 9)),
    ("irfft-odd-n", lambda a, b, norm: fft.irfft(torch.complex(a, b), n=7, norm=norm), (3, 4)),
    ("irfft-pad", lambda a, b, norm: fft.irfft(torch.complex(a, b), n=16, norm=norm), (2, 5)),
    ("irfft-trim", lambda a, b, norm: fft.irfft(torch.complex(a, b), n=6, norm=norm), (2, 8)),
    ("irfft-middle", lambda a, b, norm: fft.irfft(torch.complex(a, b), n=14, dim=1, norm=norm), (2, 8, 3)),
    ("rfft-irfft-odd", lambda a, b, norm: fft.irfft(fft.rfft(a, norm=norm), n=7, norm=norm), (2, 7)),
    # 2-D
    ("fft2", lambda a, b, norm: fft.fft2(torch.complex(a, b), norm=norm), (2, 7, 10)),
    ("fft2-s-pad-trim", lambda a, b, norm: fft.fft2(a, s=(9, 8), norm=norm), (2, 7, 10)),
    ("fft2-middle-dims", lambda a, b, norm: fft.fft2(torch.complex(a, b), dim=(0, 2), norm=norm), (7, 3, 10)),
    ("ifft2", lambda a, b, norm: fft.ifft2(torch.complex(a, b), norm=norm), (2, 14, 16)),
    ("ifft2-s-dims", lambda a, b, norm: fft.ifft2(torch.complex(a, b), s=(16, 5), dim=(1, 2), norm=norm), (2, 14, 7, 3)),
    ("rfft2", lambda a, b, norm: fft.rfft2(a, norm=norm), (2, 14, 14)),
    ("rfft2-odd", lambda a, b, norm: fft.rfft2(a, norm=norm), (2, 7, 15)),
    ("rfft2-s", lambda a, b, norm: fft.rfft2(a, s=(16, 9), norm=norm), (2, 10, 14)),
    ("rfft2-dims-reversed", lambda a, b, norm: fft.rfft2(a, dim=(2, 0), norm=norm), (7, 3, 10)),
    ("irfft2", lambda a, b, norm: fft.irfft2(torch.complex(a, b), norm=norm), (2, 14, 8)),
    ("irfft2-s-odd", lambda a, b, norm: fft.irfft2(torch.complex(a, b), s=(7, 13), norm=norm), (2, 7, 7)),
    ("irfft2-s-pad-trim", lambda a, b, norm: fft.irfft2(torch.complex(a, b), s=(16, 10), norm=norm), (2, 10, 9)),
    ("irfft2-middle-dims", lambda a, b, norm: fft.irfft2(torch.complex(a, b), s=(10, 7), dim=(0, 1), norm=norm), (10, 4, 3)),
    ("rfft2-irfft2-round-trip", lambda a, b, norm: fft.irfft2(fft.rfft2(a, norm=norm), s=a.shape[-2:], norm=norm), (2, 7, 10)),
    # N-D
    ("fftn-all-dims", lambda a, b, norm: fft.fftn(torch.complex(a, b), norm=norm), (3, 7, 10)),
    ("fftn-s-last-dims", lambda a, b, norm: fft.fftn(a, s=(8, 5), norm=norm), (2, 7, 10)),
    ("fftn-dims", lambda a, b, norm: fft.fftn(torch.complex(a, b), s=(9, 4), dim=(1, 3), norm=norm), (2, 7, 3, 6)),
    ("ifftn", lambda a, b, norm: fft.ifftn(torch.complex(a, b), norm=norm), (3, 7, 10)),
    ("ifftn-dims", lambda a, b, norm: fft.ifftn(torch.complex(a, b), s=(16,), dim=(1,), norm=norm), (2, 14, 3)),
    ("rfftn", lambda a, b, norm: fft.rfftn(a, norm=norm), (3, 7, 10)),
    ("rfftn-s-dims", lambda a, b, norm: fft.rfftn(a, s=(5, 9), dim=(0, 1), norm=norm), (7, 10, 2)),
    ("irfftn", lambda a, b, norm: fft.irfftn(torch.complex(a, b), norm=norm), (3, 7, 6)),
    ("irfftn-s-dims", lambda a, b, norm: fft.irfftn(torch.complex(a, b), s=(10, 7), dim=(1, 2), norm=norm), (2, 8, 4)),
    # shifts of complex spectra
    ("fftshift-all", lambda a, b, norm: fft.fftshift(fft.fft2(a, norm=norm)), (3, 7, 10)),
    ("fftshift-dims", lambda a, b, norm: fft.fftshift(fft.fft2(torch.complex(a, b), norm=norm), dim=(-2, -1)), (2, 7, 10)),
    ("ifftshift-middle", lambda a, b, norm: fft.ifftshift(fft.fftn(a, norm=norm), dim=1), (2, 7, 10)),
    (
        "shift-round-trip",
        lambda a, b, norm: fft.ifft2(fft.ifftshift(fft.fftshift(fft.fft2(a, norm=norm), dim=(-2, -1)), dim=(-2, -1)), norm=norm),
        (2, 7, 14),
    ),
]


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: str(n))
@pytest.mark.parametrize("case", FFT_CASES, ids=[c[0] for c in FFT_CASES])
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_fft_matches_torch(lowering, case, norm):
    _, func, shape = case
    check(lowering, func, randn(*shape, seed=1), randn(*shape, seed=2), norm)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_complex_tensors_made_outside_the_mode(lowering):
    """A complex parameter or constant (a torch complex tensor, not a pair) joins the arithmetic as a pair."""
    z = torch.nn.Parameter(torch.complex(randn(2, 10), randn(2, 10, seed=1)))
    check(lowering, lambda: fft.ifft(fft.fft(z) * z, n=12))
    check(lowering, lambda: fft.fft(z.real) + z.imag * z)
    check(lowering, lambda: z * fft.rfft(z.real, n=18) - fft.fft(z.imag) / z)
    check(lowering, lambda: torch.abs(z) + torch.angle(z.conj()).cos())


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_large_size_keeps_float64_precision(lowering):
    # 224: the detectors' input size; the phase is reduced in integers, so no precision is lost.
    check(lowering, lambda x: fft.irfft2(fft.rfft2(x, norm="ortho") * 1.5, s=(224, 224), norm="ortho"), randn(1, 224, 224))


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_float32_stays_float32(lowering):
    x = randn(2, 14, 16).float()
    out = lowered(lowering, lambda t: fft.rfft2(t, norm="ortho"), x)
    assert isinstance(out, ComplexPair) and out.re.dtype == out.im.dtype == torch.float32
    assert out.dtype == torch.complex64
    torch.testing.assert_close(to_torch(out), fft.rfft2(x, norm="ortho"), atol=1e-5, rtol=1e-5)


class _Recorder(TorchFunctionMode):
    """Below ComplexLowering on the mode stack: sees the torch calls the lowering makes."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("lowering, fft_calls", [("matmul", []), ("dft", ["fft_rfft2", "fft_irfft2"])])
def test_only_the_dft_lowering_calls_torch_fft(lowering, fft_calls):
    """matmul computes each transform as matrix products; dft keeps the torch.fft call (ONNX DFT)."""
    recorder = _Recorder()
    with recorder, ComplexLowering(lowering):
        fft.irfft2(fft.rfft2(randn(2, 7, 10)) * 2, s=(7, 10))
    assert [name for name in recorder.names if name.startswith("fft_")] == fft_calls
    assert ("matmul" in recorder.names) == (lowering == "matmul")


# --- complex arithmetic on pairs ---

# (id, function of two real tensors x [2, 3, 7, 10] and y [2, 3, 7, 10]).
# Complex operands come from torch.fft, torch.complex or Python complex numbers.
ARITHMETIC_CASES = [
    ("abs", lambda x, y: torch.abs(fft.fft2(x))),
    ("abs-method", lambda x, y: fft.rfft2(x).abs()),
    ("absolute", lambda x, y: torch.absolute(torch.complex(x, y))),
    ("real-imag-properties", lambda x, y: (fft.fft(x).real, fft.fft(x).imag)),
    ("real-imag-functions", lambda x, y: (torch.real(fft.fft(x)), torch.imag(fft.fft(x)))),
    ("conj", lambda x, y: torch.conj(fft.fft(x))),
    ("conj-method", lambda x, y: fft.fft(x).conj() * fft.fft(y)),
    ("conj-physical", lambda x, y: torch.conj_physical(torch.complex(x, y))),
    ("exp", lambda x, y: torch.exp(torch.complex(x, y))),
    ("exp-method", lambda x, y: (0.1 * fft.fft(x)).exp()),
    ("exp-1j-phase", lambda x, y: torch.exp(1j * y) * x),
    ("polar", lambda x, y: torch.polar(x.abs(), y)),
    ("complex", lambda x, y: torch.complex(x, y)),
    ("complex-broadcast", lambda x, y: torch.complex(x, y[0, 0])),
    ("view-as-complex", lambda x, y: torch.view_as_complex(torch.stack([x, y], dim=-1))),
    ("view-as-real", lambda x, y: torch.view_as_real(fft.rfft2(x))),
    ("view-as-real-of-view-as-complex", lambda x, y: torch.view_as_real(torch.view_as_complex(torch.stack([x, y], -1)) * 2)),
    ("neg", lambda x, y: -fft.fft(x)),
    ("neg-function", lambda x, y: torch.neg(fft.fft(x))),
    ("reciprocal", lambda x, y: torch.reciprocal(torch.complex(x, y))),
    ("square", lambda x, y: torch.square(fft.fft(x))),
    ("pow-2", lambda x, y: fft.fft(x) ** 2),
    # with real tensors, on both sides, with broadcasting
    ("add-real", lambda x, y: fft.fft(x) + y),
    ("radd-real", lambda x, y: y + fft.fft(x)),
    ("add-real-broadcast", lambda x, y: fft.fft(x) + y[0, 0]),
    ("add-real-broadcast-up", lambda x, y: fft.fft(x[0, 0]) + y),
    ("sub-real", lambda x, y: fft.fft(x) - y),
    ("rsub-real", lambda x, y: y - fft.fft(x)),
    ("mul-real", lambda x, y: fft.fft(x) * y),
    ("rmul-real", lambda x, y: y * fft.fft(x)),
    ("mul-real-broadcast", lambda x, y: fft.rfft2(x) * y[0, 0, :, :6]),
    ("div-real", lambda x, y: fft.fft(x) / (y.abs() + 0.5)),
    ("rdiv-real", lambda x, y: y / fft.fft(x)),
    ("torch-add-alpha", lambda x, y: torch.add(fft.fft(x), y, alpha=2.5)),
    ("torch-sub-alpha", lambda x, y: torch.sub(y, fft.fft(x), alpha=-0.5)),
    ("torch-rsub", lambda x, y: torch.rsub(fft.fft(x), y)),
    ("torch-mul", lambda x, y: torch.mul(y, fft.fft(x))),
    ("torch-div", lambda x, y: torch.div(fft.fft(x), y)),
    ("torch-true-divide", lambda x, y: torch.true_divide(y, fft.fft(x))),
    # with Python real and complex scalars, on both sides
    ("add-real-scalar", lambda x, y: fft.fft(x) + 2.5),
    ("radd-real-scalar", lambda x, y: 2 + fft.fft(x)),
    ("sub-real-scalar", lambda x, y: fft.fft(x) - 3),
    ("rsub-real-scalar", lambda x, y: 3.0 - fft.fft(x)),
    ("mul-real-scalar", lambda x, y: fft.fft(x) * 0.5),
    ("rmul-real-scalar", lambda x, y: -2 * fft.fft(x)),
    ("div-real-scalar", lambda x, y: fft.fft(x) / 4),
    ("rdiv-real-scalar", lambda x, y: 4.0 / fft.fft(x)),
    ("add-complex-scalar", lambda x, y: fft.fft(x) + (1 - 2j)),
    ("radd-complex-scalar", lambda x, y: 1j + fft.fft(x)),
    ("sub-complex-scalar", lambda x, y: fft.fft(x) - 0.5j),
    ("rsub-complex-scalar", lambda x, y: (2 + 1j) - fft.fft(x)),
    ("mul-complex-scalar", lambda x, y: fft.fft(x) * (0.5 + 2j)),
    ("rmul-complex-scalar", lambda x, y: 1j * fft.fft(x)),
    ("div-complex-scalar", lambda x, y: fft.fft(x) / (1 + 2j)),
    ("div-imaginary-scalar", lambda x, y: torch.div(fft.fft(x), 2j)),
    ("rdiv-complex-scalar", lambda x, y: (1 - 1j) / fft.fft(x)),
    ("real-tensor-times-1j", lambda x, y: x * 1j + y),
    ("1j-times-real-tensor", lambda x, y: 1j * x - y),
    ("real-tensor-plus-complex-scalar", lambda x, y: x + (2 - 1j)),
    ("complex-scalar-minus-real-tensor", lambda x, y: (2 - 1j) - x),
    ("real-tensor-over-complex-scalar", lambda x, y: x / (3 + 4j)),
    # complex with complex
    ("add-complex", lambda x, y: fft.fft(x) + fft.fft(y)),
    ("sub-complex", lambda x, y: fft.fft(x) - torch.complex(y, x)),
    ("mul-complex", lambda x, y: fft.fft(x) * fft.fft(y)),
    ("mul-complex-broadcast", lambda x, y: fft.rfft2(x) * torch.complex(y[0, 0, :, :6], x[0, 0, :, :6])),
    ("div-complex", lambda x, y: fft.fft(x) / fft.fft(y)),
    ("div-complex-function", lambda x, y: torch.divide(torch.complex(x, y), torch.complex(y, x))),
    # bilinear: einsum and matmul
    ("einsum", lambda x, y: torch.einsum("bixy,bjxy->bijx", fft.fft(x), fft.fft(y))),
    ("einsum-fno", lambda x, y: torch.einsum("bixy,ioxy->boxy", fft.rfft2(x)[:, :, :3, :3],
                                             torch.complex(y[0, :, :3, :3], x[1, :, :3, :3])[:, None].expand(3, 3, 3, 3))),
    ("einsum-operand-list", lambda x, y: torch.einsum("...ij,...jk->...ik", [fft.fft(x), fft.fft(y).transpose(-1, -2)])),
    ("matmul", lambda x, y: torch.matmul(fft.fft(x), fft.fft(y).transpose(-1, -2))),
    ("matmul-operator", lambda x, y: fft.fft(x) @ fft.fft(y).transpose(-1, -2)),
    ("mm", lambda x, y: torch.mm(fft.fft(x[0, 0]), fft.fft(y[0, 0]).transpose(0, 1))),
    ("bmm", lambda x, y: torch.bmm(fft.fft(x[0]), fft.fft(y[0]).transpose(1, 2))),
    # cat/stack, reductions, shapes, indexing, splitting
    ("cat", lambda x, y: torch.cat([fft.fft(x), fft.fft(y)], dim=1)),
    ("cat-with-real", lambda x, y: torch.cat([fft.fft(x), y.to(torch.complex128)], dim=-1)),
    ("concat", lambda x, y: torch.concat((fft.fft(x), torch.complex(y, x)), dim=0)),
    ("stack", lambda x, y: torch.stack([fft.fft(x), fft.fft(y)], dim=2)),
    ("sum-all", lambda x, y: fft.fft(x).sum()),
    ("sum-dims", lambda x, y: torch.sum(fft.fft2(x), dim=(-2, -1))),
    ("sum-keepdim", lambda x, y: fft.fft(x).sum(dim=1, keepdim=True)),
    ("mean-all", lambda x, y: torch.mean(fft.fft(x))),
    ("mean-dims", lambda x, y: fft.rfft2(x).mean(dim=(-2, -1))),
    ("reshape", lambda x, y: fft.fft(x).reshape(6, -1)),
    ("view", lambda x, y: fft.fft(x).view(2, 3, 70)),
    ("permute", lambda x, y: fft.fft(x).permute(0, 2, 3, 1)),
    ("torch-permute", lambda x, y: torch.permute(fft.fft(x), (3, 2, 1, 0))),
    ("transpose", lambda x, y: fft.fft(x).transpose(1, 2)),
    ("flatten-unsqueeze-squeeze", lambda x, y: fft.fft(x).flatten(2).unsqueeze(0).squeeze(0)),
    ("movedim", lambda x, y: torch.movedim(fft.fft(x), 1, -1)),
    ("expand", lambda x, y: fft.fft(x[:1]).expand(4, 3, 7, 10)),
    ("roll-flip", lambda x, y: torch.roll(fft.fft(x), 2, dims=-1).flip(1)),
    ("index-slices", lambda x, y: fft.fft(x)[1:, ::2, 3]),
    ("index-ellipsis-none", lambda x, y: fft.fft(x)[..., None, :4]),
    ("index-tensor", lambda x, y: fft.fft(x)[:, torch.tensor([2, 0])]),
    ("narrow", lambda x, y: fft.fft(x).narrow(-1, 2, 5)),
    ("chunk", lambda x, y: fft.fft(x).chunk(2, dim=-1)),
    ("split", lambda x, y: torch.split(fft.fft(x), [3, 4], dim=2)),
    ("unbind", lambda x, y: fft.fft(x).unbind(1)),
    # factories asked for a complex dtype
    ("zeros", lambda x, y: torch.zeros(2, 3, dtype=torch.complex128)),
    ("zeros-size-tuple", lambda x, y: torch.zeros((2, 3), dtype=torch.complex128) + x[0, :2, :3, 0]),
    ("ones", lambda x, y: torch.ones(4, 5, dtype=torch.complex128)),
    ("full-positional", lambda x, y: torch.full((2, 3), 1 - 2j, dtype=torch.complex128)),
    ("full-keyword", lambda x, y: torch.full(size=(2, 3), fill_value=0.5j, dtype=torch.complex128)),
    ("full-real-fill", lambda x, y: torch.full((2, 3), 3.0, dtype=torch.complex128)),
    ("zeros-like-real", lambda x, y: torch.zeros_like(x, dtype=torch.complex128)),
    ("ones-like-real", lambda x, y: torch.ones_like(x, dtype=torch.complex128)),
    ("full-like-real", lambda x, y: torch.full_like(x, 2 + 3j, dtype=torch.complex128)),
    ("factory-then-arithmetic", lambda x, y: torch.ones(7, 10, dtype=torch.complex128) * fft.fft(x) + torch.full((10,), 1j, dtype=torch.complex128)),
]


@pytest.mark.parametrize("case", ARITHMETIC_CASES, ids=[c[0] for c in ARITHMETIC_CASES])
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_complex_arithmetic_matches_torch(lowering, case):
    _, func = case
    check(lowering, func, randn(2, 3, 7, 10, seed=3), randn(2, 3, 7, 10, seed=4))


# Ops that torch itself refuses on mixed real/complex dtypes, but that the
# lowering accepts (a real operand has a zero imaginary part): compared with
# torch after casting the real operand to complex.
MIXED_BILINEAR_CASES = [
    (
        "einsum-real-complex",
        lambda x, y: torch.einsum("bixy,bjxy->bij", x, fft.fft(y)),
        lambda x, y: torch.einsum("bixy,bjxy->bij", x.to(torch.complex128), fft.fft(y)),
    ),
    (
        "einsum-complex-real",
        lambda x, y: torch.einsum("bixy,bjxy->bij", fft.fft(x), y),
        lambda x, y: torch.einsum("bixy,bjxy->bij", fft.fft(x), y.to(torch.complex128)),
    ),
    (
        "real-matmul-complex",
        lambda x, y: x @ fft.fft(y).transpose(-1, -2),
        lambda x, y: x.to(torch.complex128) @ fft.fft(y).transpose(-1, -2),
    ),
    (
        "complex-matmul-real",
        lambda x, y: torch.matmul(fft.fft(x), y.transpose(-1, -2)),
        lambda x, y: torch.matmul(fft.fft(x), y.transpose(-1, -2).to(torch.complex128)),
    ),
    (
        "complex-operator-matmul-real",
        lambda x, y: fft.fft(x) @ y.transpose(-1, -2),
        lambda x, y: fft.fft(x) @ y.transpose(-1, -2).to(torch.complex128),
    ),
]


@pytest.mark.parametrize("case", MIXED_BILINEAR_CASES, ids=[c[0] for c in MIXED_BILINEAR_CASES])
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_bilinear_ops_with_one_real_operand(lowering, case):
    _, func, reference = case
    x, y = randn(2, 3, 7, 10, seed=3), randn(2, 3, 7, 10, seed=4)
    assert_lowered_like_torch(lowered(lowering, func, x, y), reference(x, y))


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_angle_matches_torch_up_to_the_branch_cut(lowering):
    # The real bins of a spectrum of a real signal sit on the branch cut: a
    # zero imaginary part of either sign gives +pi or -pi for a negative real
    # part. Compare the direction, not the number.
    x = randn(2, 3, 7, 10, seed=5)
    for func in (lambda t: torch.angle(fft.fft2(t)), lambda t: fft.rfft2(t).angle()):
        got, expected = lowered(lowering, func, x), func(x)
        assert isinstance(got, torch.Tensor) and not got.is_complex()
        assert got.shape == expected.shape
        assert got.abs().max() <= torch.pi + 1e-12
        torch.testing.assert_close(torch.cos(got), torch.cos(expected), atol=ATOL, rtol=0)
        torch.testing.assert_close(torch.sin(got), torch.sin(expected), atol=ATOL, rtol=0)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_amplitude_phase_round_trip(lowering):
    def func(x):
        spectrum = fft.fft2(x)
        edited = torch.polar(spectrum.abs() * 0.5, torch.angle(spectrum)) + spectrum.abs() * torch.exp(1j * spectrum.angle())
        return fft.ifft2(edited)

    check(lowering, func, randn(2, 7, 10, seed=6))


def test_pair_reports_what_a_complex_tensor_reports():
    with ComplexLowering("matmul"):
        z = fft.rfft2(randn(2, 3, 7, 10))
    expected = fft.rfft2(randn(2, 3, 7, 10))
    assert isinstance(z, ComplexPair)
    assert z.shape == expected.shape and z.ndim == expected.ndim == z.dim()
    assert z.size() == expected.size() and z.size(-1) == expected.size(-1) == 6
    assert len(z) == len(expected)
    assert z.dtype == torch.complex128 and z.is_complex()
    assert z.device == expected.device
    float32 = ComplexPair(torch.zeros(2), torch.zeros(2))
    assert float32.dtype == torch.complex64
    with pytest.raises(TypeError):
        ComplexPair(torch.zeros(2, dtype=torch.complex64), torch.zeros(2))


# --- item assignment ---


def _assign_into_zeros(x, y):
    """SpectralConv2d's pattern: a complex zeros buffer, low modes written in."""
    spectrum = fft.rfft2(x)
    out = torch.zeros(*spectrum.shape, dtype=torch.complex128)
    out[:, :, :3, :3] = spectrum[:, :, :3, :3] * 2
    out[:, :, -3:, :3] = spectrum[:, :, -3:, :3]
    return fft.irfft2(out, s=x.shape[-2:])


def _assign_scalars_and_reals(x, y):
    z = fft.fft(x)
    z[0] = 1 + 2j  # a Python complex
    z[1, 0] = 3.0  # a Python real: imaginary part 0
    z[1, 1] = y[1, 1]  # a real tensor: imaginary part 0
    z[..., 0] = torch.complex(y[..., 0], x[..., 0])  # a complex tensor
    return z


def _assign_into_a_sum(x, y):
    """Writing into ``z + real`` must not touch ``z``, as in torch."""
    z = fft.fft(x)
    w = z + y
    w[:, 0] = 5j
    return z, w


def _assign_into_a_broadcast_sum(x, y):
    z = fft.fft(x[0, 0, 0])  # [10]
    w = z + y[0, 0]  # [7, 10]: broadcast
    w[0, :3] = 1 - 1j
    return z, w


@pytest.mark.parametrize(
    "func", [_assign_into_zeros, _assign_scalars_and_reals, _assign_into_a_sum, _assign_into_a_broadcast_sum],
    ids=lambda f: f.__name__.strip("_"),
)
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_item_assignment(lowering, func):
    check(lowering, func, randn(2, 3, 7, 10, seed=7), randn(2, 3, 7, 10, seed=8))


# --- what cannot be lowered says so ---


@pytest.mark.parametrize(
    "func, message",
    [
        (lambda x: fft.hfft(fft.fft(x)), "hfft"),
        (lambda x: fft.ihfft(x), "ihfft"),
        (lambda x: fft.hfft2(fft.fft2(x)), "hfft2"),
        (lambda x: fft.ihfftn(x), "ihfftn"),
        (lambda x: torch.sort(fft.fft(x), dim=-1), "sort"),
        (lambda x: fft.fft(x).sort(), "sort"),
        (lambda x: fft.fft(x) ** 3, "z * z"),
        (lambda x: torch.cumsum(fft.fft(x), dim=0), "cumsum"),
        (lambda x: fft.rfft(fft.fft(x)), "real input"),
        (lambda x: torch.einsum("i,i,i->", fft.fft(x[0]), x[0], x[0]), "two operands"),
    ],
    ids=["hfft", "ihfft", "hfft2", "ihfftn", "torch.sort", "sort-method", "pow-3", "cumsum", "rfft-of-complex", "einsum-3"],
)
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_unsupported_ops_raise_a_helpful_error(lowering, func, message):
    with pytest.raises((ComplexExportError, AttributeError, TypeError)) as info:
        lowered(lowering, func, randn(3, 8))
    if isinstance(info.value, AttributeError):  # a Tensor method the pair lacks
        assert "cannot use .sort()" in str(info.value) and "export" in str(info.value)
        return
    if isinstance(info.value, TypeError):
        # dft mode hands the call to torch.fft, which refuses a complex rfft input itself.
        assert lowering == "dft" and message in str(info.value)
        return
    assert isinstance(info.value, SpecdetError)
    assert message in str(info.value)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_unsupported_op_message_says_what_to_do(lowering):
    with pytest.raises(ComplexExportError, match=r"cumsum on a complex tensor cannot be exported.*rewrite it"):
        lowered(lowering, lambda x: torch.cumsum(fft.fft(x), dim=0), randn(3, 8))
    with pytest.raises(ComplexExportError, match=r"^torch\.fft\.hfft cannot be exported; use rfft\*/irfft\*"):
        lowered(lowering, lambda x: fft.hfft(x), randn(3, 8))
    with pytest.raises(ComplexExportError, match=r"a complex tensor can only be squared.*z \* z"):
        lowered(lowering, lambda x: fft.fft(x) ** 3, randn(3, 8))


# Ordinary torch code on complex tensors, in forms first found missing.
MORE_FORMS = [
    ("zeros-like-of-spectrum", lambda x: torch.zeros_like(fft.rfft2(x)) + 1),
    ("zeros-like-of-spectrum-with-dtype", lambda x: torch.zeros_like(fft.rfft2(x), dtype=torch.complex128) + 1j),
    ("ones-like-real-dtype", lambda x: torch.ones_like(fft.rfft2(x), dtype=torch.float64) * fft.rfft2(x)),
    ("mul-method", lambda x: fft.fft(x).mul(x)),
    ("add-method", lambda x: fft.fft(x).add(1.0)),
    ("transpose-property", lambda x: fft.fft(x).T),
    ("python-abs", lambda x: abs(fft.fft(x))),
    ("torch-pow-2", lambda x: torch.pow(fft.fft(x), 2)),
    ("where", lambda x: torch.where(x > 0, fft.fft(x), 0)),
]


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("func", [g[1] for g in MORE_FORMS], ids=[g[0] for g in MORE_FORMS])
def test_more_forms(lowering, func):
    check(lowering, func, randn(3, 8))


def test_a_pair_outside_the_mode_is_refused():
    with ComplexLowering("matmul"):
        z = fft.fft(randn(3, 8))
    with pytest.raises(ComplexExportError, match="outside ComplexLowering"):
        torch.abs(z)
    with pytest.raises(ComplexExportError):
        torch.cat([z, z])


def test_unknown_lowering_is_refused():
    with pytest.raises(ValueError, match="matmul"):
        ComplexLowering("cufft")


def test_mode_leaves_real_code_alone():
    x = randn(2, 3, 7, 10)
    conv = torch.nn.Conv2d(3, 4, 3).double()
    with ComplexLowering("matmul"):
        out = torch.relu(conv(x)).mean(dim=(2, 3))
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.relu(conv(x)).mean(dim=(2, 3)), atol=0, rtol=0)


# --- the DFT matrices themselves, against numpy.fft ---

MATRIX_SIZES = [*range(1, 18), 224]
F64 = torch.zeros((), dtype=torch.float64)


@pytest.mark.parametrize("norm", NORMS, ids=str)
@pytest.mark.parametrize("n", MATRIX_SIZES)
def test_dft_matrices_match_numpy(n, norm):
    eye = np.eye(n)
    cos, sin = (m.numpy() for m in dft_matrices.c2c_matrices(n, False, norm, F64))
    np.testing.assert_allclose(cos - 1j * sin, np.fft.fft(eye, axis=0, norm=norm), rtol=0, atol=1e-12)
    cos, sin = (m.numpy() for m in dft_matrices.c2c_matrices(n, True, norm, F64))
    np.testing.assert_allclose(cos + 1j * sin, np.fft.ifft(eye, axis=0, norm=norm), rtol=0, atol=1e-12)
    cos, sin = (m.numpy() for m in dft_matrices.r2c_matrices(n, norm, F64))
    assert cos.shape == (n // 2 + 1, n)
    np.testing.assert_allclose(cos - 1j * sin, np.fft.rfft(eye, axis=0, norm=norm), rtol=0, atol=1e-12)
    # irfft is real-linear: its response to unit real and imaginary bins gives A and -B.
    bins = n // 2 + 1
    a, b = (m.numpy() for m in dft_matrices.c2r_matrices(n, norm, F64))
    assert a.shape == b.shape == (n, bins)
    np.testing.assert_allclose(a, np.fft.irfft(np.eye(bins), n=n, axis=0, norm=norm), rtol=0, atol=1e-12)
    np.testing.assert_allclose(-b, np.fft.irfft(1j * np.eye(bins), n=n, axis=0, norm=norm), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dft_matrices_follow_the_dtype_and_device_of_like(dtype):
    like = torch.zeros((), dtype=dtype)
    for matrix in (*dft_matrices.c2c_matrices(10, False, "ortho", like), *dft_matrices.c2r_matrices(9, None, like)):
        assert matrix.dtype == dtype and matrix.device == like.device
    # Rounded once from the float64 matrix, as torch would round it.
    cos, _ = dft_matrices.c2c_matrices(10, False, "ortho", like)
    exact, _ = dft_matrices.c2c_matrices(10, False, "ortho", F64)
    assert torch.equal(cos, exact.to(dtype))


def test_dft_matrices_at_224_in_float32():
    like = torch.zeros((), dtype=torch.float32)
    cos, sin = dft_matrices.r2c_matrices(224, "ortho", like)
    reference = np.fft.rfft(np.eye(224), axis=0, norm="ortho")
    np.testing.assert_allclose(cos.numpy(), reference.real, atol=1e-7, rtol=0)
    np.testing.assert_allclose(-sin.numpy(), reference.imag, atol=1e-7, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 7, 224])
def test_dft_scale(n):
    assert dft_matrices.scale(n, None, inverse=False) == 1.0
    assert dft_matrices.scale(n, "backward", inverse=True) == pytest.approx(1 / n)
    assert dft_matrices.scale(n, "forward", inverse=False) == pytest.approx(1 / n)
    assert dft_matrices.scale(n, "forward", inverse=True) == 1.0
    assert dft_matrices.scale(n, "ortho", inverse=True) == pytest.approx(n ** -0.5)
    with pytest.raises(ValueError, match="norm"):
        dft_matrices.scale(n, "unitary", inverse=False)

"""Lower ``torch.fft`` code and complex arithmetic to real ops that ONNX exporters handle.

:class:`ComplexLowering` is a ``TorchFunctionMode``: inside it, every
``torch.fft`` call returns a :class:`ComplexPair` (two real tensors) instead
of a complex tensor, and every torch call that receives a pair is answered by
real arithmetic. The exporter runs the model's forward inside it, so any
module written with ``torch.fft`` and the usual complex operations exports,
not only ours. How a transform itself is computed depends on the mode:

- ``matmul``: each 1-D transform is a product with constant cosine and sine
  matrices (:mod:`specdet.export.dft_matrices`). Plain MatMul: every runtime,
  any size, FP16 tensor cores.
- ``dft``: the transform stays a ``torch.fft`` call on a complex view of the
  pair, which the exporter writes as ONNX ``DFT`` nodes.

The mode also runs eagerly, which is how the tests compare a lowering with
``torch.fft`` without going through ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from specdet.export import dft_matrices
from specdet.export.complex_pair import (
    PARTWISE_OPS,
    SEQUENCE_OPS,
    SPLITTING_OPS,
    ComplexExportError,
    ComplexPair,
    apply_partwise,
    as_pair_or_value,
    is_pair_or_complex_scalar,
    parts,
)

LOWERINGS = ("matmul", "dft")


# --- the transforms, one axis at a time (matmul mode) ---


def _fit(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """Zero-pad or trim ``x`` along ``dim`` to length ``n``, as torch.fft does for ``n``/``s``."""
    length = x.shape[dim]
    if length == n:
        return x
    if length > n:
        return x.narrow(dim, 0, n)
    pad_shape = list(x.shape)
    pad_shape[dim] = n - length
    return torch.cat([x, x.new_zeros(pad_shape)], dim=dim)


def _apply(matrix: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """``matrix @ x`` along axis ``dim`` of ``x``."""
    dim = dim % x.ndim
    if dim == x.ndim - 1:
        return x @ matrix.T
    if dim == x.ndim - 2:
        return matrix @ x
    return (x.movedim(dim, -1) @ matrix.T).movedim(-1, dim)


def _c2c(re: torch.Tensor, im: torch.Tensor | None, dim: int, n: int, inverse: bool, norm: str | None):
    re = _fit(re, dim, n)
    cos, sin = dft_matrices.c2c_matrices(n, inverse, norm, re)
    sign = 1.0 if inverse else -1.0  # exp(sign * 2j*pi*k*t/n)
    out_re, out_im = _apply(cos, re, dim), sign * _apply(sin, re, dim)
    if im is not None:
        im = _fit(im, dim, n)
        out_re = out_re - sign * _apply(sin, im, dim)
        out_im = out_im + _apply(cos, im, dim)
    return out_re, out_im


def _r2c(x: torch.Tensor, dim: int, n: int, norm: str | None):
    x = _fit(x, dim, n)
    cos, sin = dft_matrices.r2c_matrices(n, norm, x)
    return _apply(cos, x, dim), -_apply(sin, x, dim)


def _c2r(re: torch.Tensor, im: torch.Tensor, dim: int, n: int, norm: str | None) -> torch.Tensor:
    bins = n // 2 + 1
    re, im = _fit(re, dim, bins), _fit(im, dim, bins)
    a, b = dft_matrices.c2r_matrices(n, norm, re)
    return _apply(a, re, dim) - _apply(b, im, dim)


# --- torch.fft signatures to (axes, lengths) ---


def _axes_and_lengths(x: Any, s: Sequence[int] | None, dim: Sequence[int] | int | None, default_dims: int | None):
    ndim = x.ndim
    if dim is None:
        count = len(s) if s is not None else (default_dims or ndim)
        axes = list(range(ndim - count, ndim))
    else:
        axes = [dim] if isinstance(dim, int) else list(dim)
    axes = [a % ndim for a in axes]
    lengths = list(s) if s is not None else [None] * len(axes)
    if len(lengths) != len(axes):
        raise ComplexExportError(f"torch.fft got s={s} and dim={dim} of different lengths")
    return axes, lengths


def _real_and_imag(x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(x, ComplexPair):
        return x.re, x.im
    if x.is_complex():
        return x.real, x.imag
    return x, None


def _fftn(x, s, dim, norm, *, inverse: bool, default_dims: int | None):
    axes, lengths = _axes_and_lengths(x, s, dim, default_dims)
    re, im = _real_and_imag(x)
    for axis, n in zip(axes, lengths):
        re, im = _c2c(re, im, axis, n or re.shape[axis], inverse, norm)
    return ComplexPair(re, im)


def _rfftn(x, s, dim, norm, *, default_dims: int | None):
    if isinstance(x, ComplexPair) or x.is_complex():
        raise ComplexExportError("torch.fft.rfft* needs a real input; use torch.fft.fft* for complex tensors")
    axes, lengths = _axes_and_lengths(x, s, dim, default_dims)
    last, n_last = axes[-1], lengths[-1] or x.shape[axes[-1]]
    re, im = _r2c(x, last, n_last, norm)
    for axis, n in zip(axes[:-1], lengths[:-1]):
        re, im = _c2c(re, im, axis, n or re.shape[axis], False, norm)
    return ComplexPair(re, im)


def _irfftn(x, s, dim, norm, *, default_dims: int | None):
    axes, lengths = _axes_and_lengths(x, s, dim, default_dims)
    re, im = _real_and_imag(x)
    if im is None:
        im = torch.zeros_like(re)
    for axis, n in zip(axes[:-1], lengths[:-1]):
        re, im = _c2c(re, im, axis, n or re.shape[axis], True, norm)
    last = axes[-1]
    n_last = lengths[-1] or 2 * (re.shape[last] - 1)
    return _c2r(re, im, last, n_last, norm)


def _matmul_transforms() -> dict:
    fft = torch.fft
    return {
        fft.fft: lambda x, n=None, dim=-1, norm=None: _fftn(x, None if n is None else [n], dim, norm, inverse=False, default_dims=1),
        fft.ifft: lambda x, n=None, dim=-1, norm=None: _fftn(x, None if n is None else [n], dim, norm, inverse=True, default_dims=1),
        fft.rfft: lambda x, n=None, dim=-1, norm=None: _rfftn(x, None if n is None else [n], dim, norm, default_dims=1),
        fft.irfft: lambda x, n=None, dim=-1, norm=None: _irfftn(x, None if n is None else [n], dim, norm, default_dims=1),
        fft.fft2: lambda x, s=None, dim=(-2, -1), norm=None: _fftn(x, s, dim, norm, inverse=False, default_dims=2),
        fft.ifft2: lambda x, s=None, dim=(-2, -1), norm=None: _fftn(x, s, dim, norm, inverse=True, default_dims=2),
        fft.rfft2: lambda x, s=None, dim=(-2, -1), norm=None: _rfftn(x, s, dim, norm, default_dims=2),
        fft.irfft2: lambda x, s=None, dim=(-2, -1), norm=None: _irfftn(x, s, dim, norm, default_dims=2),
        fft.fftn: lambda x, s=None, dim=None, norm=None: _fftn(x, s, dim, norm, inverse=False, default_dims=None),
        fft.ifftn: lambda x, s=None, dim=None, norm=None: _fftn(x, s, dim, norm, inverse=True, default_dims=None),
        fft.rfftn: lambda x, s=None, dim=None, norm=None: _rfftn(x, s, dim, norm, default_dims=None),
        fft.irfftn: lambda x, s=None, dim=None, norm=None: _irfftn(x, s, dim, norm, default_dims=None),
    }


MATMUL_TRANSFORMS = _matmul_transforms()
UNSUPPORTED_TRANSFORMS = {torch.fft.hfft, torch.fft.ihfft, torch.fft.hfft2, torch.fft.ihfft2, torch.fft.hfftn, torch.fft.ihfftn}


def _dft_transform(func, args, kwargs):
    """Run the torch.fft call on a complex view of the pair; the exporter emits DFT nodes."""

    def to_complex(value: Any) -> Any:
        if isinstance(value, ComplexPair):
            return torch.view_as_complex(torch.stack([value.re, value.im], dim=-1))
        return value

    out = func(*(to_complex(a) for a in args), **{k: to_complex(v) for k, v in kwargs.items()})
    if out.is_complex():
        # torch.fft.ifft* of a real input returns a lazily conjugated view,
        # which view_as_real refuses until the conjugation is resolved.
        both = torch.view_as_real(out.resolve_conj())
        return ComplexPair(both[..., 0], both[..., 1])
    return out


# --- complex-producing and complex-consuming torch functions ---


def _complex_functions() -> dict:
    return {
        torch.view_as_complex: lambda t: ComplexPair(t[..., 0], t[..., 1]),
        torch.view_as_real: lambda z: torch.stack([z.re, z.im], dim=-1),
        torch.complex: lambda real, imag: ComplexPair(*torch.broadcast_tensors(real, imag)),
        torch.polar: lambda abs, angle: ComplexPair(abs * torch.cos(angle), abs * torch.sin(angle)),
        torch.real: lambda z: z.re,
        torch.imag: lambda z: z.im,
        # ``.real``/``.imag`` of a complex tensor that is not a pair (a complex
        # parameter), and ComplexPair's own arithmetic reading them.
        torch.Tensor.real.__get__: lambda z: z.re,
        torch.Tensor.imag.__get__: lambda z: z.im,
        torch.abs: ComplexPair.abs,
        torch.absolute: ComplexPair.abs,
        torch.angle: ComplexPair.angle,
        torch.conj: ComplexPair.conj,
        torch.conj_physical: ComplexPair.conj,
        torch.exp: ComplexPair.exp,
        torch.neg: ComplexPair.__neg__,
        torch.reciprocal: lambda z: 1.0 / z,
        torch.square: lambda z: z * z,
        torch.pow: lambda z, exponent: z**exponent,
        torch.zeros_like: lambda z, **kw: _like(z, 0.0, **kw),
        torch.ones_like: lambda z, **kw: _like(z, 1.0, **kw),
        torch.where: lambda condition, a, b: _where(condition, a, b),
    }


def _like(z: ComplexPair, value: float, dtype: torch.dtype | None = None, **kwargs) -> Any:
    """``zeros_like``/``ones_like`` of a pair: a pair, or a real tensor when a real dtype is asked for."""
    real = torch.full_like(z.re, value, dtype=_REAL_DTYPE.get(dtype, dtype), **kwargs)
    if dtype is not None and not dtype.is_complex:
        return real
    return ComplexPair(real, torch.zeros_like(real))


def _where(condition: torch.Tensor, a: Any, b: Any) -> ComplexPair:
    (a_re, a_im), (b_re, b_im) = parts(as_pair_or_value(a)), parts(as_pair_or_value(b))
    re = torch.where(condition, a_re, b_re)
    im = torch.where(condition, 0.0 if a_im is None else a_im, 0.0 if b_im is None else b_im)
    return ComplexPair(re, torch.broadcast_to(im, re.shape))


COMPLEX_FUNCTIONS = _complex_functions()

# Binary arithmetic, by name so that ``torch.mul``, ``Tensor.mul`` and
# ``Tensor.__mul__`` are all covered: name -> (python operator, swap operands).
_BINARY = {
    "add": ("__add__", False), "__add__": ("__add__", False), "__radd__": ("__add__", True), "__iadd__": ("__add__", False),
    "sub": ("__sub__", False), "subtract": ("__sub__", False), "__sub__": ("__sub__", False),
    "__rsub__": ("__sub__", True), "rsub": ("__sub__", True), "__isub__": ("__sub__", False),
    "mul": ("__mul__", False), "multiply": ("__mul__", False), "__mul__": ("__mul__", False),
    "__rmul__": ("__mul__", True), "__imul__": ("__mul__", False),
    "div": ("__truediv__", False), "divide": ("__truediv__", False), "true_divide": ("__truediv__", False),
    "__truediv__": ("__truediv__", False), "__rtruediv__": ("__truediv__", True), "__itruediv__": ("__truediv__", False),
}


# Ops linear in each of two tensor operands, by name: complex products expand
# into four real ones (see _bilinear for where each takes its operands).
_BILINEAR = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum"}


def _bilinear(func, args: tuple, kwargs: dict) -> Any:
    name = func.__name__
    if name == "einsum":
        equation, *operands = args
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        if len(operands) != 2:
            raise ComplexExportError("einsum on complex tensors is exported for two operands only")
        call = lambda a, b: torch.einsum(equation, a, b)  # noqa: E731
    else:
        operands = list(args[:2]) if name != "__rmatmul__" else [args[1], args[0]]
        call = torch.matmul
    (a_re, a_im), (b_re, b_im) = (parts(as_pair_or_value(o)) for o in operands)
    re, im = call(a_re, b_re), None
    if a_im is not None and b_im is not None:
        re = re - call(a_im, b_im)
    if b_im is not None:
        im = call(a_re, b_im)
    if a_im is not None:
        im = call(a_im, b_re) if im is None else im + call(a_im, b_re)
    return ComplexPair(re, im)


def _binary(name: str, a: Any, b: Any, alpha: Any = 1) -> Any:
    """``a <op> b`` where at least one side is a pair or a Python complex number."""
    operator, swap = _BINARY[name]
    if swap:
        a, b = b, a
    if alpha != 1:
        b = b * alpha
    left = as_pair_or_value(a)
    if not isinstance(left, ComplexPair):
        # A real tensor or a number (real or complex) on the left: make it a
        # pair, so the pair's own operator does the work.
        l_re, l_im = parts(left)
        real = l_re if isinstance(l_re, torch.Tensor) else torch.as_tensor(l_re)
        left = ComplexPair(real, torch.zeros_like(real) if l_im is None else torch.as_tensor(l_im))
    return getattr(left, operator)(as_pair_or_value(b))


class ComplexLowering(TorchFunctionMode):
    """Within this mode, ``torch.fft`` and complex arithmetic run on real tensors only."""

    def __init__(self, fft: str = "matmul"):
        super().__init__()
        if fft not in LOWERINGS:
            raise ValueError(f"fft lowering must be one of {LOWERINGS}, got {fft!r}")
        self.fft = fft

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMUL_TRANSFORMS:
            if self.fft == "dft":
                return _dft_transform(func, args, kwargs)
            return MATMUL_TRANSFORMS[func](*args, **kwargs)
        if func in UNSUPPORTED_TRANSFORMS:
            name = func.__name__.removeprefix("fft_")  # the builtin is named fft_hfft
            raise ComplexExportError(f"torch.fft.{name} cannot be exported; use rfft*/irfft*")
        if _is_complex_dtype(kwargs.get("dtype")) and func.__name__ in _FACTORIES and not (
            args and isinstance(args[0], ComplexPair)  # zeros_like(pair, dtype=...) is answered below
        ):
            return _complex_factory(func, args, kwargs)
        values = (*args, *kwargs.values())
        if any(_is_complex(v) for v in _flatten(values)):
            # Complex tensors that did not come from torch.fft (a complex
            # parameter, say) join as pairs too.
            args = tuple(_to_pairs(a) for a in args)
            kwargs = {k: _to_pairs(v) for k, v in kwargs.items()}
            return self._complex_call(func, args, kwargs)
        out = func(*args, **kwargs)
        # Complex tensors made without torch.fft (a complex parameter, a
        # complex constant) become pairs as soon as a torch call returns one.
        if isinstance(out, torch.Tensor) and out.is_complex():
            return ComplexPair.from_complex(out)
        return out

    def _complex_call(self, func, args, kwargs):
        name = getattr(func, "__name__", "")
        if func in COMPLEX_FUNCTIONS:
            return COMPLEX_FUNCTIONS[func](*args, **kwargs)
        if name in _BINARY:
            return _binary(name, *args, **kwargs)
        if name in _BILINEAR:
            return _bilinear(func, args, kwargs)
        if name in PARTWISE_OPS or name in SEQUENCE_OPS or name in SPLITTING_OPS:
            return apply_partwise(func, args, kwargs)
        # A method of the pair itself (reached as Tensor.abs, Tensor.exp, ...).
        if args and isinstance(args[0], ComplexPair) and hasattr(ComplexPair, name):
            return getattr(args[0], name)(*args[1:], **kwargs)
        raise ComplexExportError(
            f"{name or func} on a complex tensor cannot be exported yet; "
            "rewrite it with abs/angle/real/imag/mul/add or report it with the model code"
        )


# Tensor factories asked for a complex dtype make a pair of real tensors.
_FACTORIES = {"zeros", "ones", "empty", "full", "zeros_like", "ones_like", "empty_like", "full_like"}
_REAL_DTYPE = {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}


def _is_complex_dtype(dtype: Any) -> bool:
    return isinstance(dtype, torch.dtype) and dtype.is_complex


def _complex_factory(func, args: tuple, kwargs: dict) -> ComplexPair:
    kwargs = {**kwargs, "dtype": _REAL_DTYPE[kwargs["dtype"]]}
    if func.__name__.startswith("full"):
        args = list(args)
        if "fill_value" in kwargs:  # then the size may be a keyword too
            fill = complex(kwargs.pop("fill_value"))
            return ComplexPair(func(*args, fill_value=fill.real, **kwargs), func(*args, fill_value=fill.imag, **kwargs))
        fill = complex(args.pop())
        return ComplexPair(func(*args, fill.real, **kwargs), func(*args, fill.imag, **kwargs))
    real = func(*args, **kwargs)
    # ones() is 1 + 0j: only the real part takes the factory's value.
    return ComplexPair(real, torch.zeros_like(real))


def _is_complex(value: Any) -> bool:
    return is_pair_or_complex_scalar(value) or (isinstance(value, torch.Tensor) and value.is_complex())


def _to_pairs(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(as_pair_or_value(v) for v in value)
    return as_pair_or_value(value)


def _flatten(values: Sequence[Any]):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from value
        else:
            yield value

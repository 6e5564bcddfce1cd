"""Complex tensors as pairs of real tensors, for export.

ONNX exporters handle few ops on complex tensors, and ONNX itself has no
complex dtype. :class:`ComplexPair` holds the real and imaginary parts as two
real tensors and implements the complex arithmetic users write on spectra
(``abs``, ``angle``, ``.real``, ``.imag``, ``conj``, ``exp``, products and
quotients with real or complex tensors and Python scalars) with real ops
only. :mod:`specdet.export.lowering` creates pairs where ``torch.fft`` would
create complex tensors, and routes every torch call that meets a pair here.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

from specdet.errors import SpecdetError


class ComplexExportError(SpecdetError):
    """A complex operation the exporter cannot lower."""


# Ops that act on the real and imaginary parts independently: shape changes,
# indexing, and sums, which are linear. Looked up by name, so both the
# ``torch.X`` function and the ``Tensor.X`` method are covered.
PARTWISE_OPS = frozenset(
    {
        "reshape", "view", "permute", "transpose", "swapaxes", "movedim", "unsqueeze", "squeeze",
        "flatten", "unflatten", "expand", "expand_as", "repeat", "tile", "roll", "flip", "contiguous",
        "clone", "sum", "mean", "narrow", "__getitem__", "pad", "fft_fftshift", "fft_ifftshift",
        "detach", "cpu", "repeat_interleave", "diagonal", "tril", "triu",
    }
)
# Tensor methods of a pair that ComplexLowering answers (arithmetic, by name).
METHODS_VIA_TORCH = frozenset({"add", "sub", "mul", "div", "true_divide", "matmul", "pow", "square", "multiply", "divide", "subtract"})
# Ops that take a sequence of tensors and some of which may be pairs.
SEQUENCE_OPS = frozenset({"cat", "concat", "concatenate", "stack"})
# Ops that return a sequence of tensors.
SPLITTING_OPS = frozenset({"chunk", "split", "unbind", "tensor_split"})


class ComplexPair:
    """A complex tensor ``re + 1j * im`` held as two real tensors of one shape."""

    __slots__ = ("re", "im")

    def __init__(self, re: torch.Tensor, im: torch.Tensor):
        if re.is_complex() or im.is_complex():
            raise TypeError("ComplexPair parts must be real tensors")
        self.re = re
        self.im = im

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Having this hook makes torch's argument parser hand calls with a pair
        # to the active ComplexLowering mode, which answers them first. Outside
        # the mode a pair has no business in a torch call.
        raise ComplexExportError(f"{getattr(func, '__name__', func)} got a ComplexPair outside ComplexLowering")

    @classmethod
    def from_complex(cls, z: torch.Tensor) -> ComplexPair:
        """Split a complex tensor (for example a complex parameter) into a pair."""
        return cls(z.real.contiguous(), z.imag.contiguous())

    # --- what a complex tensor reports about itself ---
    @property
    def shape(self) -> torch.Size:
        return self.re.shape

    @property
    def ndim(self) -> int:
        return self.re.ndim

    def dim(self) -> int:
        return self.re.ndim

    def size(self, dim: int | None = None):
        return self.re.size() if dim is None else self.re.size(dim)

    def __len__(self) -> int:
        return len(self.re)

    @property
    def dtype(self) -> torch.dtype:
        return torch.complex128 if self.re.dtype == torch.float64 else torch.complex64

    @property
    def device(self) -> torch.device:
        return self.re.device

    def is_complex(self) -> bool:
        return True

    @property
    def real(self) -> torch.Tensor:
        return self.re

    @property
    def imag(self) -> torch.Tensor:
        return self.im

    # --- complex arithmetic on real parts ---
    def abs(self) -> torch.Tensor:
        return torch.sqrt(self.re * self.re + self.im * self.im)

    def angle(self) -> torch.Tensor:
        return torch.atan2(self.im, self.re)

    def conj(self) -> ComplexPair:
        return ComplexPair(self.re, -self.im)

    def exp(self) -> ComplexPair:
        scale = torch.exp(self.re)
        return ComplexPair(scale * torch.cos(self.im), scale * torch.sin(self.im))

    def __neg__(self) -> ComplexPair:
        return ComplexPair(-self.re, -self.im)

    def __add__(self, other: Any) -> ComplexPair:
        o_re, o_im = parts(other)
        re = self.re + o_re
        if o_im is None:
            # The imaginary part is unchanged, but the sum is a new tensor, as
            # in torch: a copy (not self.im, nor a broadcast view of it), so
            # that writing into the sum leaves this pair alone.
            return ComplexPair(re, self.im.expand(re.shape).to(re.dtype, copy=True))
        im = self.im + o_im
        return ComplexPair(re, torch.broadcast_to(im, re.shape))

    __radd__ = __add__

    def __sub__(self, other: Any) -> ComplexPair:
        return self + (-as_pair_or_value(other))

    def __rsub__(self, other: Any) -> ComplexPair:
        return (-self) + other

    def __mul__(self, other: Any) -> ComplexPair:
        o_re, o_im = parts(other)
        if o_im is None:  # real factor: scale both parts
            return ComplexPair(self.re * o_re, self.im * o_re)
        return ComplexPair(self.re * o_re - self.im * o_im, self.re * o_im + self.im * o_re)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> ComplexPair:
        o_re, o_im = parts(other)
        if o_im is None:
            return ComplexPair(self.re / o_re, self.im / o_re)
        if not isinstance(o_re, torch.Tensor):  # a Python complex number
            return self * (1 / complex(o_re, o_im))
        return self * ComplexPair(*parts_of_reciprocal(o_re, o_im))

    def __rtruediv__(self, other: Any) -> ComplexPair:
        return ComplexPair(*parts_of_reciprocal(self.re, self.im)) * other

    def reciprocal(self) -> ComplexPair:
        return ComplexPair(*parts_of_reciprocal(self.re, self.im))

    def __matmul__(self, other: Any) -> ComplexPair:
        # Answered by ComplexLowering, which expands the complex product.
        return torch.matmul(self, other)

    def __rmatmul__(self, other: Any) -> ComplexPair:
        return torch.matmul(other, self)

    def __pow__(self, exponent: Any) -> ComplexPair:
        if exponent == 2:
            return self * self
        raise ComplexExportError("a complex tensor can only be squared when exported; write z * z or use abs()")

    __abs__ = abs

    @property
    def T(self) -> ComplexPair:  # noqa: N802 (torch's name)
        return ComplexPair(self.re.T, self.im.T)

    @property
    def mT(self) -> ComplexPair:  # noqa: N802 (torch's name)
        return ComplexPair(self.re.mT, self.im.mT)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Methods such as reshape, permute, sum act on both parts alike.
        if name in PARTWISE_OPS or name in SPLITTING_OPS:
            return lambda *args, **kwargs: apply_partwise(getattr(torch.Tensor, name), (self, *args), kwargs)
        # Methods such as mul, add, matmul: answered by ComplexLowering as the
        # torch function of that name called on this pair.
        if name in METHODS_VIA_TORCH:
            return lambda *args, **kwargs: getattr(torch, name)(self, *args, **kwargs)
        raise AttributeError(f"complex tensors cannot use .{name}() in an exported model (specdet export)")

    def __getitem__(self, index: Any) -> ComplexPair:
        return ComplexPair(self.re[index], self.im[index])

    def __setitem__(self, index: Any, value: Any) -> None:
        v_re, v_im = parts(value)
        self.re[index] = v_re
        self.im[index] = 0.0 if v_im is None else v_im

    def __repr__(self) -> str:
        return f"ComplexPair(shape={tuple(self.shape)}, dtype={self.dtype})"


def parts(value: Any) -> tuple[Any, Any]:
    """``(real, imag)`` of a pair, real tensor or Python number; imag is None when zero."""
    if isinstance(value, ComplexPair):
        return value.re, value.im
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            return value.real, value.imag
        return value, None
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return value.real, value.imag
    if isinstance(value, numbers.Real):
        return value, None
    raise TypeError(f"cannot combine a complex tensor with {type(value).__name__}")


def as_pair_or_value(value: Any) -> Any:
    """Complex tensors become pairs; real tensors and numbers stay as they are."""
    if isinstance(value, torch.Tensor) and value.is_complex():
        return ComplexPair.from_complex(value)
    return value


def parts_of_reciprocal(re: Any, im: Any) -> tuple[Any, Any]:
    norm = re * re + im * im
    return re / norm, -im / norm


def is_pair_or_complex_scalar(value: Any) -> bool:
    return isinstance(value, ComplexPair) or (
        isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)
    )


def apply_partwise(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Apply a linear or shape-only op to the real and imaginary parts separately."""
    name = getattr(func, "__name__", "")

    def select(value: Any, part: str) -> Any:
        if isinstance(value, ComplexPair):
            return getattr(value, part)
        if isinstance(value, (list, tuple)) and name in SEQUENCE_OPS:
            return type(value)(select_tensor(v, part) for v in value)
        return value

    def select_tensor(value: Any, part: str) -> Any:
        # A real tensor inside cat/stack of complex ones has a zero imaginary part.
        if isinstance(value, ComplexPair):
            return getattr(value, part)
        return value if part == "re" else torch.zeros_like(value)

    re = func(*(select(a, "re") for a in args), **{k: select(v, "re") for k, v in kwargs.items()})
    im = func(*(select(a, "im") for a in args), **{k: select(v, "im") for k, v in kwargs.items()})
    if isinstance(re, (tuple, list)):
        return type(re)(ComplexPair(r, i) for r, i in zip(re, im))
    return ComplexPair(re, im)

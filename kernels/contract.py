"""The contract files of the ops (``kernels/<op>/contract.json``) and their golden data.

A contract lists an op's inputs, outputs, attributes and their ranges, the
tolerance per dtype, and golden cases. Each golden case is a file
``golden/<name>.npz`` with ``x`` (the input: standard normal values from the
case's seed, rounded to float16, so the same input serves both dtypes) and
``y`` (the float64 NumPy reference, :mod:`specdet.kernels.reference`, of
``x``). Regenerate them after changing a reference or a case:

    python -m specdet.kernels.contract --write
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from specdet import cli
from specdet.kernels import reference

KERNELS_DIR = Path(__file__).resolve().parent
OP_DIRS = {"BandSplit": "band_split", "SpectrumMagnitudeMean": "spectrum_magnitude_mean"}


@dataclasses.dataclass
class GoldenCase:
    op: str
    name: str
    attributes: dict
    x: np.ndarray  # float16
    y: np.ndarray  # float64 reference

    def __repr__(self) -> str:
        return f"GoldenCase({self.op}/{self.name}, x{list(self.x.shape)})"


@dataclasses.dataclass
class Comparison:
    ok: bool
    max_abs: float
    max_rel: float
    worst_ratio: float  # max |y - ref| / (atol + rtol |ref|): <= 1 passes

    def __str__(self) -> str:
        return f"max abs {self.max_abs:.3e}, max rel {self.max_rel:.3e}, worst/allowed {self.worst_ratio:.3f}"


@functools.cache
def _load(op: str) -> str:
    return (KERNELS_DIR / OP_DIRS[op] / "contract.json").read_text()


def contract(op: str) -> dict:
    """The contract of ``op`` (``BandSplit``, ``SpectrumMagnitudeMean``), as a fresh dict."""
    return json.loads(_load(op))


def golden_dir(op: str) -> Path:
    return KERNELS_DIR / OP_DIRS[op] / "golden"


def golden_input(spec: dict) -> np.ndarray:
    return np.random.default_rng(spec["seed"]).standard_normal(spec["shape"]).astype(np.float16)


def golden_cases(op: str) -> list[GoldenCase]:
    cases = []
    for spec in contract(op)["golden"]:
        with np.load(golden_dir(op) / f"{spec['name']}.npz", allow_pickle=False) as data:
            cases.append(GoldenCase(op, spec["name"], spec["attributes"], data["x"], data["y"]))
    return cases


def tolerance(op: str, dtype: str) -> tuple[float, float]:
    entry = contract(op)["tolerance"][dtype]
    return float(entry["atol"]), float(entry["rtol"])


def compare(op: str, dtype: str, actual: np.ndarray, expected: np.ndarray) -> Comparison:
    """``actual`` (a kernel's output) against ``expected`` (the float64 reference) at the contract's tolerance."""
    atol, rtol = tolerance(op, dtype)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(False, np.inf, np.inf, np.inf)
    if actual.size == 0:
        return Comparison(True, 0.0, 0.0, 0.0)
    error = np.abs(actual - expected)
    allowed = atol + rtol * np.abs(expected)
    ratio = float(np.max(error / allowed))
    rel = float(np.max(error / np.maximum(np.abs(expected), 1e-12)))
    return Comparison(bool(np.all(np.isfinite(actual)) and ratio <= 1.0), float(error.max()), rel, ratio)


def write_golden(op: str) -> list[Path]:
    directory = golden_dir(op)
    directory.mkdir(exist_ok=True)
    written = []
    for spec in contract(op)["golden"]:
        x = golden_input(spec)
        y = reference.run(op, x, spec["attributes"])
        path = directory / f"{spec['name']}.npz"
        np.savez_compressed(path, x=x, y=y)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m specdet.kernels.contract", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate the golden files from the references")
    args = parser.parse_args(argv)
    for op in OP_DIRS:
        if args.write:
            for path in write_golden(op):
                print(f"wrote {path.relative_to(KERNELS_DIR)} ({path.stat().st_size} bytes)")
        else:
            for case in golden_cases(op):
                print(case, "atol/rtol float32", tolerance(op, "float32"), "float16", tolerance(op, "float16"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

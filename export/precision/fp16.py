"""FP16 files: :func:`to_fp16`, choosing the FP32 islands by measurement, and its report.

Starting from every candidate group in FP32 (and everything else in FP16),
each candidate group is released to FP16 in turn and kept in FP16 only when
the file still agrees with the FP32 one on the calibration images within the
tolerance (largest probability difference). Every trial's numbers are kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from specdet.compare import Agreement
from specdet.errors import SpecdetError
from specdet.export.precision.fp16_convert import convert_to_fp16
from specdet.export.precision.graph import FLOAT16, name_nodes
from specdet.export.precision.islands import RANGE_LIMIT, Group, find_groups, range_islands
from specdet.export.precision.measure import agreement, run_model, storage_twin
from specdet.export.precision.report import PrecisionReport
from specdet.export.precision.search import search_islands

CONVERTER = "onnxconverter-common"
# Largest probability difference (FP16 file vs FP32 file) a released group may leave.
DEFAULT_TOLERANCE = 0.005


@dataclasses.dataclass
class Fp16Report(PrecisionReport):
    converter: str
    range_limit: float  # magnitude above which a node is a range island (see range_islands)
    agreement_onnxruntime: Agreement  # the written file as ONNX Runtime's CPU provider runs it
    fp32_nodes: int
    # ``agreement`` (the shared field): the written file vs FP32, FP16 storage emulated (see storage_twin)

    def lines(self) -> list[str]:
        a = self.agreement
        b = self.agreement_onnxruntime
        return [
            f"  FP16 vs FP32 on {a.images} calibration images ({self.calibration}), FP16 storage emulated: largest "
            f"probability difference {_number(a.max_prob_diff)}, largest logit difference "
            f"{_number(a.max_logit_diff)}, decision agreement {100 * a.decision_agreement:.1f}%",
            f"  the file as ONNX Runtime (CPU) runs it: largest probability difference {_number(b.max_prob_diff)}, "
            f"decision agreement {100 * b.decision_agreement:.1f}%",
            f"  {self.fp32_nodes} of {self.nodes} nodes stay FP32:",
            *self._island_lines(),
            *self._released_lines("FP16"),
        ]


def _number(value: float | None) -> str:
    return "n/a (no finite output)" if value is None else f"{value:.2e}"


def to_fp16(
    model: onnx.ModelProto,
    batches: Sequence[np.ndarray],
    *,
    input_name: str,
    threshold: float,
    calibration: str,
    tolerance: float = DEFAULT_TOLERANCE,
    range_limit: float = RANGE_LIMIT,
    progress: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, Fp16Report]:
    """Convert the FP32 ``model`` to mixed precision, choosing its FP32 islands by measurement on ``batches``.

    ``batches`` are preprocessed calibration images (each within the model's
    batch range). Raises :class:`SpecdetError` if even the most conservative
    conversion (every candidate in FP32) misses ``tolerance``.
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    if any(t.data_type == FLOAT16 for t in model.graph.initializer) or any(
        v.type.tensor_type.elem_type == FLOAT16 for v in (*model.graph.input, *model.graph.output)
    ):
        raise SpecdetError("the model already has FP16 tensors: convert its FP32 export instead")
    name_nodes(model)  # the only change to ``model``: unnamed nodes get names
    say("finding sensitive ops")
    groups = find_groups(model)
    say("measuring value ranges")
    taken = {n for g in groups for n in g.nodes}
    ranged = range_islands(model, batches, input_name, limit=range_limit, exclude=taken)
    if ranged is not None:
        groups.insert(0, ranged)
    reference = run_model(model.SerializeToString(), batches, input_name, fp16=False)

    def attempt(fp32_groups: list[Group]) -> tuple[onnx.ModelProto, Agreement]:
        converted = convert_to_fp16(model, [n for g in fp32_groups for n in g.nodes])
        outputs = run_model(storage_twin(converted), batches, input_name, fp16=True, unoptimised=True)
        return converted, agreement(reference, outputs, threshold)

    say("baseline: every candidate in FP32")
    found = search_islands(groups, attempt, tolerance, precision="FP16", fallback="FP32", flag="--fp16-tolerance",
                           say=say)
    say("running the chosen file as ONNX Runtime does")
    as_is = agreement(reference, run_model(found.model.SerializeToString(), batches, input_name, fp16=True), threshold)
    report = Fp16Report(
        converter=f"{CONVERTER} {_version('onnxconverter-common')}",
        tolerance=tolerance,
        range_limit=range_limit,
        calibration=calibration,
        islands=found.islands,
        released=found.released,
        trials=found.trials,
        agreement=found.agreement,
        agreement_onnxruntime=as_is,
        fp32_nodes=sum(len(g.nodes) for g in found.islands),
        nodes=len(model.graph.node),
        seconds=time.perf_counter() - start,
    )
    return found.model, report


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def require_converter() -> None:
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError as err:
        raise SpecdetError("--precision fp16 needs onnxconverter-common: pip install 'specdet[fp16]'") from err

"""Choosing FP32 islands by measurement: the search the FP16 and INT8 conversions share.

Start from the most conservative file (every candidate group kept in FP32),
then release the groups that are not forced one at a time, keeping each
release whose agreement with the FP32 file stays within the tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from specdet.compare import Agreement
from specdet.errors import SpecdetError
from specdet.export.precision.islands import Group


@dataclasses.dataclass
class Trial:
    released: str  # the group converted in this trial ("" for the baseline: every candidate in FP32)
    agreement: Agreement
    kept: bool  # whether the group stays converted


@dataclasses.dataclass
class Search:
    islands: list[Group]  # every group left in FP32
    released: list[str]  # candidate groups measured safe converted
    trials: list[Trial]
    model: Any  # the chosen file (an onnx.ModelProto)
    agreement: Agreement  # the chosen file against the FP32 file


def search_islands(
    groups: Sequence[Group],
    attempt: Callable[[list[Group]], tuple[Any, Agreement]],
    tolerance: float,
    *,
    precision: str,
    fallback: str,
    flag: str,
    say: Callable[[str], None],
) -> Search:
    """``attempt(fp32_groups)`` converts with those groups in FP32 and measures; a one-line error when even
    the baseline misses ``tolerance`` (``fallback``: what to export instead, ``flag``: the tolerance's flag)."""
    fp32 = list(groups)
    best, measured = attempt(fp32)
    trials = [Trial("", measured, kept=False)]
    if not measured.within(tolerance):
        miss = (f"largest probability difference {measured.max_prob_diff:.3g} > {tolerance:g}" if measured.finite
                else f"outputs that are not finite on {len(measured.nonfinite)} of {measured.images} images")
        raise SpecdetError(f"{precision} misses the tolerance even with every sensitive op in FP32: {miss} on the "
                           f"calibration images; export in {fallback}, or raise {flag}")
    released = []
    for group in [g for g in groups if not g.forced]:
        say(f"trying {group.name} in {precision}")
        trial_groups = [g for g in fp32 if g is not group]
        candidate, result = attempt(trial_groups)
        ok = result.within(tolerance)
        trials.append(Trial(group.name, result, kept=ok))
        if ok:
            fp32, best, measured = trial_groups, candidate, result
            released.append(group.name)
    return Search(fp32, released, trials, best, measured)

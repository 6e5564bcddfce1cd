"""What a conversion chose and measured: the fields and methods the FP16 and INT8 reports share.

Each conversion's report (:class:`~specdet.export.precision.fp16.Fp16Report`,
:class:`~specdet.export.precision.int8.Int8Report`) adds its own fields and
writes its own :meth:`lines`; the manifest stores :meth:`island_summary` as
``fp32_islands`` and :meth:`to_dict` (less ``islands``) under the precision's key.
"""

from __future__ import annotations

import abc
import dataclasses

from specdet.compare import Agreement
from specdet.export.precision.islands import Group
from specdet.export.precision.search import Trial


@dataclasses.dataclass
class PrecisionReport(abc.ABC):
    tolerance: float  # largest probability difference from the FP32 file a released group may leave
    calibration: str  # where the calibration images came from
    islands: list[Group]  # every group left in FP32
    released: list[str]  # candidate groups measured safe in the lower precision
    trials: list[Trial]
    agreement: Agreement  # the written file against the FP32 file (each report says how it ran them)
    nodes: int  # nodes of the FP32 file
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def island_summary(self) -> list[dict]:
        """The manifest's ``fp32_islands``: name, reason and node names of each FP32 group."""
        return [{"name": g.name, "reason": g.reason, "forced": g.forced, "nodes": g.nodes} for g in self.islands]

    @abc.abstractmethod
    def lines(self) -> list[str]:
        """The report as indented lines for the terminal (detect-export prints them)."""

    def _island_lines(self) -> list[str]:
        return [f"    {g.name} ({len(g.nodes)} nodes): {g.reason}" for g in self.islands] or ["    none"]

    def _released_lines(self, precision: str) -> list[str]:
        return [f"  measured safe in {precision}: {', '.join(self.released)}"] if self.released else []

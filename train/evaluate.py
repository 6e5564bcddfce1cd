"""Scoring a detector on a dataset and the per-source report (JSON and Markdown).

Scoring runs the inference preprocessing and the deployment interface
(:class:`specdet.models.ScoringModule`) in float32 without autocast, so a
score here is the score ``detect-predict`` gives the same file, and a
threshold calibrated on these scores holds at inference. Under torchrun each
process scores its share and every process receives all scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specdet.errors import SpecdetError
from specdet.files import check_output
from specdet.models import ScoringModule, checkpoint
from specdet.train import distributed
from specdet.train.data import REAL, EvalDataset, Sample, default_workers, discover, eval_loader
from specdet.train.metrics import mean_over_sources, source_metrics, threshold_at_fpr


@dataclass(frozen=True)
class Scores:
    samples: list[Sample]  # those that could be read, in dataset order
    probabilities: list[float]  # float32 values, fake = 1
    errors: list[tuple[str, str]]  # (path, reason) of the images left out

    def real_scores(self) -> list[float]:
        return [p for s, p in zip(self.samples, self.probabilities) if s.label == REAL]


@torch.no_grad()
def score(
    model: torch.nn.Module,
    samples: list[Sample],
    preprocessing: dict[str, Any],
    world: distributed.World,
    *,
    batch_size: int,
    workers: int,
) -> Scores:
    """Probabilities of every readable image; leaves ``model`` in eval mode."""
    scoring = ScoringModule(model).eval()
    loader = eval_loader(
        EvalDataset(samples, preprocessing), batch_size, rank=world.rank, world_size=world.size,
        workers=workers, pin_memory=world.device.type == "cuda",
    )
    found, errors = [], []
    for batch in loader:
        errors += [(samples[i].path, reason) for i, reason in batch["errors"]]
        if batch["image"] is None:
            continue
        _, probability = scoring(batch["image"].to(world.device, non_blocking=True))
        found += zip(batch["index"].tolist(), probability.float().cpu().tolist())
    found = sorted(distributed.gather(found, world))
    return Scores(
        samples=[samples[i] for i, _ in found],
        probabilities=[p for _, p in found],
        errors=distributed.gather(errors, world),
    )


def report(scores: Scores, threshold: float) -> dict[str, Any]:
    """``{"threshold", "sources": {name: metrics}, "mean": metrics, "images", "skipped"}``."""
    by_source: dict[str, tuple[list[int], list[float]]] = {}
    for sample, probability in zip(scores.samples, scores.probabilities):
        labels, values = by_source.setdefault(sample.source, ([], []))
        labels.append(sample.label)
        values.append(probability)
    sources = {name: source_metrics(*by_source[name], threshold) for name in sorted(by_source)}
    return {
        "threshold": threshold,
        "sources": sources,
        "mean": mean_over_sources(sources),
        "images": len(scores.samples),
        "skipped": [{"path": path, "reason": reason} for path, reason in scores.errors],
    }


def calibrated_threshold(scores: Scores, fpr: float | None, default: float) -> float:
    """The threshold at ``fpr`` on the reals of ``scores``; ``default`` when ``fpr`` is None."""
    return default if fpr is None else threshold_at_fpr(scores.real_scores(), fpr)


def markdown(result: dict[str, Any], title: str) -> str:
    """The report as the field's table: percentages per source, then the mean over sources."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = [
        f"{title} (fake if probability >= {result['threshold']:.4g})",
        "",
        "| source | reals | fakes | real acc | fake acc | mean acc | AP | AUC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["sources"].items():
        lines.append(
            f"| {name} | {m['reals']} | {m['fakes']} | {pct(m['real_acc'])} | {pct(m['fake_acc'])} "
            f"| {pct(m['mean_acc'])} | {pct(m['ap'])} | {pct(m['auc'])} |"
        )
    mean = result["mean"]
    lines.append(
        f"| **mean** | | | **{pct(mean['real_acc'])}** | **{pct(mean['fake_acc'])}** | **{pct(mean['mean_acc'])}** "
        f"| **{pct(mean['ap'])}** | **{pct(mean['auc'])}** |"
    )
    if result["skipped"]:
        lines += ["", f"{len(result['skipped'])} unreadable image(s) left out."]
    return "\n".join(lines)


def report_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """``PREFIX.json`` and ``PREFIX.md``, the files :func:`write_report` writes."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")


def write_report(result: dict[str, Any], prefix: str | os.PathLike, title: str) -> tuple[Path, Path]:
    """``PREFIX.json`` and ``PREFIX.md``."""
    json_path, md_path = report_paths(prefix)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result, title) + "\n")
    return json_path, md_path


def evaluate_checkpoint(
    path: str | os.PathLike,
    data: str | os.PathLike,
    *,
    threshold: float | None = None,
    calibrate_fpr: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    save_to: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score ``data`` with the checkpoint at ``path`` and report per source (``detect-train --eval-only``).

    The threshold is ``threshold``, else the one calibrated at ``calibrate_fpr``
    on the reals of ``data``, else the checkpoint's. ``save_to``: write the
    checkpoint again there with that threshold.
    """
    if save_to is not None:  # before the scoring, which may take hours
        check_output(save_to, "calibrated checkpoint", inputs=(path,))
    world = distributed.setup(device, threads)
    try:
        loaded = checkpoint.load(path)
        samples = discover(data)
        scores = score(
            loaded.model.to(world.device), samples, loaded.preprocessing, world, batch_size=batch_size,
            workers=workers if workers is not None else default_workers(world.size),
        )
        if not scores.samples:
            raise SpecdetError(f"no readable images under {data}: check the folder")
        if calibrate_fpr is not None:
            if not scores.real_scores():
                raise SpecdetError(f"{data} has no real images to calibrate on: drop --calibrate-fpr")
            threshold = threshold_at_fpr(scores.real_scores(), calibrate_fpr)
        result = report(scores, loaded.threshold if threshold is None else threshold)
        if save_to is not None and world.is_main:
            calibration = {"fpr": calibrate_fpr, "reals": len(scores.real_scores()), "data": str(data)}
            checkpoint.save(
                loaded.model, save_to, preprocessing=loaded.preprocessing, threshold=result["threshold"],
                **{**loaded.metadata, "calibration": calibration if calibrate_fpr is not None else None},
            )
        return result
    finally:
        distributed.teardown(world)

"""The training loop behind ``detect-train``: epochs, validation, best checkpoint, resume state, log.

Per epoch: train on augmented crops (mixed precision on GPUs, gradient
clipping, DistributedDataParallel under torchrun), score the validation set
with the inference preprocessing, calibrate the threshold on its reals, and
keep the epoch if its mean average precision over sources is the best so far.
The output is a plain specdet checkpoint (``detect-export`` and
``detect-predict`` read it as is) whose metadata holds the training config,
the validation metrics of its epoch and the calibration. Beside it:
``NAME.state.pth`` (resume) and ``NAME.log.jsonl`` (one line per epoch).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specdet.errors import SpecdetError
from specdet.files import check_output
from specdet.models import checkpoint, create_model, default_preprocessing
from specdet.progress import bar as progress_bar
from specdet.train import distributed, schedule
from specdet.train.augment import Augment
from specdet.train.config import TrainConfig, recipe_for
from specdet.train.data import REAL, TrainDataset, check_both_classes, default_workers, discover, train_loader
from specdet.train.evaluate import Scores, calibrated_threshold, markdown, report, score
from specdet.train.state import log_path, save_state, state_path

# How often (in steps) the progress bar reads the running loss: each read waits for the GPU.
_BAR_EVERY = 10


@dataclass(frozen=True)
class Outcome:
    output: Path  # the best checkpoint
    best_epoch: int | None  # 1-based; None without validation (the last epoch is kept)
    validation: dict[str, Any] | None  # the report of the kept epoch
    seconds: float


def train(config: TrainConfig, resume: dict[str, Any] | None = None) -> Outcome:
    """Train ``config``; ``resume`` is a state from :func:`specdet.train.state.load_state`."""
    # Every output is checked now, not after the first epoch has trained.
    inputs = tuple(p for p in (config.data, config.val) if p)
    for path, what in ((config.output, "checkpoint"), (state_path(config.output), "resume state"),
                       (log_path(config.output), "training log")):
        check_output(path, what, inputs=inputs)
    world = distributed.setup(config.device, config.threads)
    try:
        return _Trainer(config, world, resume).run()
    finally:
        distributed.teardown(world)


def autocast_dtype(amp_mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp_mode`` (one of AMP_MODES) on ``device``; None: float32 throughout."""
    if amp_mode == "auto":
        if device.type != "cuda":
            return None  # CPU autocast is slower than float32 on most CPUs
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp_mode == "fp16" and device.type != "cuda":
        raise SpecdetError("--precision fp16 needs a GPU: use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp_mode]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed (dropout) of one epoch on one process: resuming at an epoch repeats it."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank


class _Trainer:
    def __init__(self, config: TrainConfig, world: distributed.World, resume: dict[str, Any] | None):
        self.world = world
        torch.manual_seed(config.seed)  # the same initial weights in every process
        self.model = create_model(config.arch, **config.model_overrides)
        recipe = recipe_for(self.model)
        self.config = config = config.with_recipe(recipe)
        self.staged = recipe.staged
        self.loss = recipe.loss()
        self.preprocessing = default_preprocessing(config.arch, **config.model_overrides)
        self.trainable = [name for name, p in self.model.named_parameters() if p.requires_grad]

        device = world.device
        self.channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.amp = autocast_dtype(config.precision, device)
        if resume is not None:
            self.model.load_state_dict(resume["model"])
        self.model.to(device, memory_format=self.memory_format)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = recipe.optimizer(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        if resume is not None:
            self.optimizer.load_state_dict(resume["optimizer"])
            if self.scaler is not None and resume.get("scaler"):
                self.scaler.load_state_dict(resume["scaler"])
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
        self.start_epoch = resume["epoch"] if resume is not None else 0
        self.best = dict(resume["best"]) if resume is not None else {"epoch": None, "ap": None}

        self.train_samples = discover(config.data)
        check_both_classes(self.train_samples, config.data, "training")
        self.val_samples = discover(config.val) if config.val else None
        if self.val_samples is not None:
            check_both_classes(self.val_samples, config.val, "validation (best epoch, calibration)")
        self.workers = config.workers if config.workers is not None else default_workers(world.size)
        augment = Augment(self.preprocessing, blur_prob=config.blur_prob, jpeg_prob=config.jpeg_prob)
        self.loader = train_loader(
            TrainDataset(self.train_samples, augment, config.seed), config.batch_size, rank=world.rank,
            world_size=world.size, workers=self.workers, pin_memory=device.type == "cuda",
        )
        if len(self.loader) == 0:
            raise SpecdetError(f"{config.data} gives this process no batch: lower --batch-size or add images")
        self.output = Path(config.output)
        if world.is_main:
            self.output.parent.mkdir(parents=True, exist_ok=True)
        self.skipped: set[str] = set()

    def run(self) -> Outcome:
        config, started = self.config, time.perf_counter()
        if self.start_epoch >= config.epochs:
            done = self.start_epoch
            raise SpecdetError(f"the resumed run already finished {done} epochs: pass --epochs N with N > {done}")
        if self.world.is_main:
            self._announce()
        validation, stage, net = None, None, None
        for epoch in range(self.start_epoch, config.epochs):
            if schedule.stage_at(epoch, config.stages) != stage:
                stage = schedule.stage_at(epoch, config.stages)
                net = self._enter(stage)
            torch.manual_seed(epoch_seed(config.seed, epoch, self.world.rank))
            stats = self._train_epoch(epoch, stage, net)
            result = self._validate() if self.val_samples is not None else None
            improved = result is not None and (self.best["ap"] is None or result["mean"]["ap"] > self.best["ap"])
            if improved:
                self.best = {"epoch": epoch + 1, "ap": result["mean"]["ap"]}
            if self.world.is_main:
                if improved or result is None:
                    self._save_checkpoint(epoch, stage, stats, result)
                save_state(
                    state_path(self.output), config=config.to_dict(), epoch=epoch + 1,
                    model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler is not None else None, best=self.best,
                )
                self._log(epoch, stage, stats, result, improved)
            if improved or result is None:
                validation = result
            distributed.barrier(self.world)
        if validation is None and self.best["epoch"] is not None:
            # Resumed after the best epoch: its report is in the checkpoint.
            validation = checkpoint.load(self.output).metadata.get("validation")
        return Outcome(self.output, self.best["epoch"], validation, time.perf_counter() - started)

    def _announce(self) -> None:
        c, model = self.config, self.model
        total = sum(p.numel() for p in model.parameters()) / 1e6
        trainable = sum(model.get_parameter(n).numel() for n in self.trainable) / 1e6
        reals = sum(s.label == REAL for s in self.train_samples)
        val = "no validation (the last epoch is kept, threshold 0.5)"
        if self.val_samples is not None:
            val = f"validating on {len(self.val_samples)} ({len({s.source for s in self.val_samples})} source(s))"
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp]
        print(
            f"training {c.arch} ({total:.2f} M parameters, {trainable:.2f} M trainable) on {len(self.train_samples)} "
            f"images ({reals} real, {len(self.train_samples) - reals} fake); {val}; {self.world.device}, {amp}, "
            f"{self.world.size} process(es) x batch {c.batch_size}, {torch.get_num_threads()} thread(s), "
            f"{self.workers} loader worker(s); "
            f"epochs {self.start_epoch + 1}..{c.epochs}",
            file=sys.stderr, flush=True,
        )

    def _enter(self, stage: str) -> torch.nn.Module:
        """Freeze for ``stage`` and build the network the steps run: DDP (again) and compiled as asked."""
        schedule.apply_stage(self.model, stage, self.trainable)
        self.optimizer.zero_grad(set_to_none=True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.stage_loss = schedule.stage_loss(stage, self.loss) if self.staged else self.loss
        net = distributed.wrap(self.model, self.world)
        return torch.compile(net) if self.config.compile else net

    def _train_epoch(self, epoch: int, stage: str, net: torch.nn.Module) -> dict[str, float]:
        config, world, device = self.config, self.world, self.world.device
        schedule.set_train_mode(self.model, stage)
        self.loader.sampler.sampler.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device, dtype=torch.float64))
        images, skipped = 0, []
        bar = progress_bar(
            enabled=world.is_main, total=len(self.loader), desc=f"epoch {epoch + 1}/{config.epochs} [{stage}]",
            unit="batch", leave=False,
        )
        started = time.perf_counter()
        for step, batch in enumerate(self.loader):
            x = batch["image"].to(device, non_blocking=True, memory_format=self.memory_format)
            y = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
                outputs = net(x)
            total, parts = self.stage_loss({k: v.float() for k, v in outputs.items()}, y)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.unscale_(self.optimizer)  # clip the true gradients
            else:
                total.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            n = len(y)
            for name, value in {"loss": total, **parts}.items():
                sums[name] += value.detach().double() * n
            images += n
            skipped += batch["skipped"]
            if step % _BAR_EVERY == 0 or step == len(self.loader) - 1:
                if world.size == 1:  # under DDP every process stops together, after the epoch's sums
                    self._check_finite(sums["loss"].item(), epoch)
                elapsed = time.perf_counter() - started
                bar.set_postfix(
                    loss=f"{sums['loss'].item() / images:.4f}", img_s=f"{images * world.size / elapsed:.1f}"
                )
            bar.update()
        bar.close()
        seconds = time.perf_counter() - started
        totals = distributed.sum_across(
            {**{k: v.item() for k, v in sums.items()}, "images": images, "skipped": len(skipped)}, world
        )
        self._report_skipped(distributed.gather(skipped, world))
        count = totals.pop("images")
        # The last step can leave NaN weights behind a finite loss: checked too, before anything is saved.
        self._check_finite(totals["loss"] if not checkpoint.non_finite(self.model.state_dict()) else math.nan, epoch)
        stats = {name: value / count for name, value in totals.items() if name != "skipped"}
        stats.update(images=int(count), skipped=int(totals["skipped"]), seconds=seconds,
                     images_per_second=count / seconds)
        return stats

    def _check_finite(self, loss: float, epoch: int) -> None:
        """Stop at a non-finite loss (or weights): training cannot recover. Nothing of this epoch is saved, so
        the checkpoint and resume state on disk stay those of the last finite epoch (if any)."""
        if math.isfinite(loss):
            return
        # Without validation every epoch is saved; with it, the best one.
        saved = self.best["epoch"] if self.val_samples is not None else (epoch or None)
        kept = f"{self.output} keeps epoch {saved}, the last finite one" if saved else "no checkpoint was written"
        raise SpecdetError(f"training diverged to a {loss} loss or weights in epoch {epoch + 1} (--lr {self.config.lr:g} is too "
                           f"high, or the data holds broken images): {kept}; lower --lr or set --grad-clip")

    def _report_skipped(self, skipped: list[tuple[str, str]]) -> None:
        for path, reason in skipped:
            if path not in self.skipped and self.world.is_main:
                print(f"skipped unreadable {path}: {reason}", file=sys.stderr)
            self.skipped.add(path)

    def _validate(self) -> dict[str, Any]:
        started = time.perf_counter()
        scores: Scores = score(
            self.model, self.val_samples, self.preprocessing, self.world,
            batch_size=self.config.batch_size, workers=self.workers,
        )
        threshold = calibrated_threshold(scores, self.config.calibrate_fpr, checkpoint.DEFAULT_THRESHOLD)
        result = report(scores, threshold)
        result["seconds"] = time.perf_counter() - started
        return result

    def _save_checkpoint(self, epoch: int, stage: str, stats: dict, result: dict | None) -> None:
        calibration = None
        if result is not None and self.config.calibrate_fpr is not None:
            reals = sum(m["reals"] for m in result["sources"].values())
            calibration = {"fpr": self.config.calibrate_fpr, "reals": reals, "data": self.config.val}
        checkpoint.save(
            self.model, self.output, preprocessing=self.preprocessing,
            threshold=result["threshold"] if result is not None else checkpoint.DEFAULT_THRESHOLD,
            training=self.config.to_dict(), epoch=epoch + 1, stage=stage, train=stats,
            validation=result, calibration=calibration,
        )

    def _log(self, epoch: int, stage: str, stats: dict, result: dict | None, improved: bool) -> None:
        entry = {
            "epoch": epoch + 1,
            "stage": stage,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train": stats,
            "validation": result,
            "best": improved,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with open(log_path(self.output), "a") as file:
            file.write(json.dumps(entry) + "\n")
        line = (f"epoch {epoch + 1}/{self.config.epochs} [{stage}] loss {stats['loss']:.4f}, "
                f"{stats['images_per_second']:.1f} img/s, {stats['seconds']:.1f} s")
        if stats["skipped"]:
            line += f", {stats['skipped']} unreadable skipped"
        if result is not None:
            m = result["mean"]
            line += (f"; val AP {100 * m['ap']:.1f} AUC {100 * m['auc']:.1f} acc {100 * m['mean_acc']:.1f} "
                     f"at {result['threshold']:.4g}{' (best)' if improved else ''}")
        print(line, file=sys.stderr, flush=True)


def summary(outcome: Outcome) -> str:
    """What ``detect-train`` prints at the end."""
    if outcome.validation is None:
        return f"wrote {outcome.output} (last epoch, threshold 0.5: no validation set) in {outcome.seconds:.0f} s"
    title = f"Validation, epoch {outcome.best_epoch} (best mean AP)"
    return f"{markdown(outcome.validation, title)}\n\nwrote {outcome.output} in {outcome.seconds:.0f} s"

"""``detect-train``: train a detector, resume a run, or evaluate a checkpoint per source.

    detect-train --arch dual_branch_tiny --data DIR [--val DIR] [-o model.pth] [--epochs N] ...
    detect-train --resume model.state.pth [--epochs N]
    detect-train --eval-only model.pth --data DIR [--calibrate-fpr 0.05 | --threshold T] [--report PREFIX]
    torchrun --nproc_per_node=2 -m specdet.train.cli --arch ... --data ...

Options left out take the recipe of the model's family (see
``specdet.train.config.RECIPES``) or, with ``--resume``, the resumed run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from specdet import cli
from specdet.errors import SpecdetError
from specdet.files import check_outputs
from specdet.models import list_models
from specdet.train import distributed
from specdet.train.config import AMP_MODES, RECIPES, TrainConfig, parse_overrides, resume_config
from specdet.train.evaluate import evaluate_checkpoint, markdown, report_paths, write_report
from specdet.train.loop import summary, train
from specdet.train.state import load_state

# Options of --eval-only; every other option belongs to training.
_EVAL_OPTIONS = {"eval_only", "data", "threshold", "calibrate_fpr", "report", "output", "batch_size", "workers",
                 "threads", "device", "debug"}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def build_parser() -> argparse.ArgumentParser:
    # Every default is SUPPRESS, so the namespace holds only what was given:
    # that is what overrides the recipe and, on --resume, the saved run.
    parser = cli.ArgumentParser(
        prog="detect-train", argument_default=argparse.SUPPRESS,
        description="Train a detector on real/fake folders (CNNDetection layouts), keep the best epoch by "
        "validation AP with a calibrated threshold, or evaluate a checkpoint per source.",
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--arch", help=f"model to train: {', '.join(list_models())}")
    what.add_argument("--data", help="training folder: 0_real/ + 1_fake/ (or real/ + fake/), directly or per source; "
                      "with --eval-only, the folder to evaluate")
    what.add_argument("--val", help="validation folder (same layouts): picks the best epoch and calibrates")
    what.add_argument("-o", "--output", help="checkpoint to write (default model.pth); with --eval-only, "
                      "a copy of the checkpoint with the threshold used")
    what.add_argument("--set", dest="model_overrides", action="append", metavar="KEY=VALUE",
                      help="model config override, e.g. --set dropout=0.2 (repeatable); saved in the checkpoint")
    what.add_argument("--resume", metavar="STATE", help="continue the run whose NAME.state.pth this is")

    recipe = parser.add_argument_group("recipe (default: the model family's)")
    recipe.add_argument("--epochs", type=cli.int_range(1, 100_000), help=_defaults("epochs"))
    recipe.add_argument("--batch-size", type=cli.BATCH, help=f"per process; {_defaults('batch_size')}")
    recipe.add_argument("--lr", type=cli.number_range(0.0, 10.0, above=True), help=f"{_defaults('lr')} ({_defaults('optimizer')})")
    recipe.add_argument("--weight-decay", type=cli.number_range(0.0, 10.0), help=_defaults("weight_decay"))
    recipe.add_argument("--grad-clip", type=cli.number_range(0.0), help=f"largest gradient norm, 0: off; {_defaults('grad_clip')}")
    recipe.add_argument("--stages", type=_stages, metavar="B,J,F",
                        help="dual-branch staged schedule: epochs of branches only, joint, fusion only")
    recipe.add_argument("--seed", type=int, help="default 0")
    recipe.add_argument("--blur-prob", type=cli.PROBABILITY, help="Gaussian blur augmentation probability (default 0.5)")
    recipe.add_argument("--jpeg-prob", type=cli.PROBABILITY, help="JPEG augmentation probability (default 0.5)")
    recipe.add_argument("--calibrate-fpr", type=_fpr, metavar="F|none",
                        help="threshold at this false-positive rate on the validation reals (default 0.05; "
                        "none: 0.5); with --eval-only, on the reals of --data")

    machine = parser.add_argument_group("machine")
    machine.add_argument("--device", type=_device, help="cuda, cuda:N or cpu (default: cuda when available)")
    machine.add_argument("--workers", type=cli.int_range(0, 256), help="data-loading processes per training process")
    machine.add_argument("--threads", type=cli.THREADS, help="CPU threads for the model's ops (default: PyTorch's)")
    machine.add_argument("--precision", choices=AMP_MODES, help="auto: bf16 on GPUs that support it, else fp16; "
                         "fp32 on the CPU")
    machine.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                         help="channels-last memory format (default: on for CUDA)")
    machine.add_argument("--compile", action="store_true", help="torch.compile the training model")

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval-only", metavar="CHECKPOINT", help="evaluate this checkpoint on --data, per source")
    evaluation.add_argument("--threshold", type=cli.PROBABILITY, help="decision threshold (default: the checkpoint's)")
    evaluation.add_argument("--report", metavar="PREFIX", help="also write PREFIX.json and PREFIX.md")
    parser.set_defaults(debug=False)
    cli.add_debug_flag(parser)
    return parser


def _defaults(field: str) -> str:
    """Each family's default of a recipe field, for the help."""
    def name(value: object) -> object:
        return getattr(value, "__name__", value)

    return ", ".join(f"{family.__name__} {name(getattr(recipe, field))}" for family, recipe in RECIPES.items())


def _stages(text: str) -> tuple[int, int, int]:
    try:
        stages = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three epoch counts like 2,6,2, got {text!r}") from None
    if len(stages) != 3:
        raise argparse.ArgumentTypeError(f"expected three epoch counts like 2,6,2, got {text!r}")
    return stages


def _device(text: str) -> str:
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this trainer runs on: give cpu, cuda or cuda:N")
    return text


def _fpr(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate < 1.0:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1) like 0.05, or none; got {text!r}")
    return rate


def _train(args: argparse.Namespace) -> int:
    extra = sorted(set(vars(args)) - _CONFIG_FIELDS - {"resume", "debug"})
    if extra:
        shown = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise SpecdetError(f"{shown} applies to --eval-only only: drop it or add --eval-only CHECKPOINT")
    given = {k: v for k, v in vars(args).items() if k in _CONFIG_FIELDS}
    if "model_overrides" in given:
        given["model_overrides"] = parse_overrides(given["model_overrides"])
    state = None
    if hasattr(args, "resume"):
        state = load_state(args.resume)
        config = resume_config(state["config"], given)
    else:
        missing = [f"--{k}" for k in ("arch", "data") if k not in given]
        if missing:
            raise SpecdetError(f"{' and '.join(missing)} required (or --resume STATE, or --eval-only CHECKPOINT)")
        config = TrainConfig(**given)
    outcome = train(config, state)
    if distributed.env_rank() == 0:
        print(summary(outcome))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    extra = sorted(set(vars(args)) - _EVAL_OPTIONS)
    if extra:
        shown = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise SpecdetError(f"{shown} do(es) not apply to --eval-only: drop it")
    if not hasattr(args, "data"):
        raise SpecdetError("--eval-only needs --data DIR, the folder to evaluate")
    if hasattr(args, "threshold") and getattr(args, "calibrate_fpr", None) is not None:
        raise SpecdetError("give --threshold or --calibrate-fpr, not both")
    # Every output is checked before the scoring starts, and against each other.
    outputs = list(zip(report_paths(args.report), ("JSON report", "Markdown report"))) if hasattr(args, "report") else []
    if hasattr(args, "output"):
        outputs.append((args.output, "calibrated checkpoint"))
    check_outputs(outputs, inputs=(args.eval_only,))
    result = evaluate_checkpoint(
        args.eval_only, args.data, threshold=getattr(args, "threshold", None),
        calibrate_fpr=getattr(args, "calibrate_fpr", None), batch_size=getattr(args, "batch_size", 32),
        workers=getattr(args, "workers", None), threads=getattr(args, "threads", None),
        device=getattr(args, "device", None),
        save_to=getattr(args, "output", None),
    )
    if distributed.env_rank() == 0:
        title = f"{args.eval_only} on {args.data}"
        print(markdown(result, title))
        if hasattr(args, "report"):
            paths = write_report(result, args.report, title)
            print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(_evaluate if hasattr(args, "eval_only") else _train, args)


if __name__ == "__main__":
    sys.exit(main())

"""detect-train: both detectors train, checkpoints export-ready, resume, staged schedule, eval-only, errors.

The detectors run at reduced input sizes (``--set``) so that every run takes
seconds on a 2-core CPU; the checkpoint records those sizes, so it exports
and serves as is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specdet.models import checkpoint, create_model
from specdet.runtime import Detector
from specdet.train import distributed, schedule
from specdet.train.cli import main
from specdet.train.config import RECIPES, TrainConfig
from specdet.train.data import discover
from specdet.train.evaluate import score
from specdet.train.losses import DualBranchLoss, RineSSCALoss
from specdet.train.make_data import make_demo_data
from specdet.train.metrics import threshold_at_fpr
from specdet.train.state import load_state

SMALL = {
    "dual_branch_tiny": ["--set", "input_size=64", "--set", "freq_grid=2"],
    "rine_ssca_tiny": ["--set", "input_size=56"],
}
FAST = ["--batch-size", "4", "--workers", "0", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """16 training and 8 validation images (two sources) from the demo maker, 64 px."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, train_crops=8, val_crops=4, size=64, seed=0)
    return root


def _train(demo: Path, out: Path, arch: str = "dual_branch_tiny", *extra: str) -> Path:
    args = ["--arch", arch, "--data", str(demo / "train"), "--val", str(demo / "val"), "-o", str(out)]
    assert main(args + SMALL[arch] + FAST + list(extra)) == 0
    return out


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory) -> Path:
    return _train(demo, tmp_path_factory.mktemp("run") / "model.pth", "dual_branch_tiny", "--epochs", "2")


def test_recipes_are_the_seeds_defaults():
    dual, rine = RECIPES[type(create_model("dual_branch_tiny"))], RECIPES[type(create_model("rine_ssca_tiny"))]
    assert (dual.optimizer, dual.lr, dual.weight_decay, dual.grad_clip) == (torch.optim.AdamW, 1e-4, 0.05, 1.0)
    assert dual.loss().weights == {"final": 0.5, "spatial": 0.25, "frequency": 0.25} and dual.staged
    assert (rine.optimizer, rine.lr, rine.epochs) == (torch.optim.Adam, 1e-3, 1)
    loss = rine.loss()
    assert isinstance(loss, RineSSCALoss) and (loss.supcon_weight, loss.temperature) == (0.2, 0.07)


def test_training_writes_an_export_ready_checkpoint_log_and_state(trained, demo):
    loaded = checkpoint.load(trained)
    meta = loaded.metadata
    assert loaded.architecture == "dual_branch_tiny" and loaded.config["input_size"] == 64
    assert loaded.preprocessing["crop"] == 64
    assert meta["training"]["lr"] == 1e-4 and meta["training"]["model_overrides"] == {"input_size": 64, "freq_grid": 2}
    assert set(meta["validation"]["sources"]) == {"tconv", "decoder"}
    assert meta["calibration"] == {"fpr": 0.05, "reals": 4, "data": str(demo / "val")}
    assert loaded.threshold == meta["validation"]["threshold"]
    lines = [json.loads(line) for line in trained.with_name("model.log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in lines] == [1, 2]
    assert all(entry["train"]["images"] == 16 and entry["train"]["images_per_second"] > 0 for entry in lines)
    best = max(lines, key=lambda e: (e["validation"]["mean"]["ap"], -e["epoch"]))
    assert meta["epoch"] == best["epoch"] and best["best"]
    assert load_state(trained.with_name("model.state.pth"))["epoch"] == 2


def test_validation_scores_are_detect_predict_scores_and_the_threshold_holds(trained, demo):
    loaded = checkpoint.load(trained)
    samples = discover(demo / "val")
    scores = score(loaded.model, samples, loaded.preprocessing, distributed.setup("cpu"), batch_size=4, workers=0)
    predicted = Detector(trained).predict_files([s.path for s in samples], batch_size=4)
    assert scores.probabilities == [r.probability for r in predicted]
    # The checkpoint's threshold was calibrated on these reals with its own weights.
    reals = [r.probability for r, s in zip(predicted, samples) if s.label == 0]
    assert threshold_at_fpr(reals, 0.05) == loaded.threshold


def _run_eval(model: Path, data: Path, *extra: str, report: bool = False) -> str:
    prefix = model.with_name("eval")
    args = ["--eval-only", str(model), "--data", str(data), "--workers", "0"] + list(extra)
    assert main(args + (["--report", str(prefix)] if report else [])) == 0
    return prefix.with_name("eval.json").read_text() if report else ""


def test_eval_only_calibrates_and_writes_reports_and_a_calibrated_copy(trained, demo, capsys):
    calibrated = trained.with_name("calibrated.pth")
    _run_eval(trained, demo / "val", "--calibrate-fpr", "0.25", "-o", str(calibrated), report=True)
    out = capsys.readouterr().out
    assert "| **mean** |" in out and "| tconv |" in out and "| decoder |" in out
    result = json.loads(trained.with_name("eval.json").read_text())
    assert trained.with_name("eval.md").read_text().startswith(f"{trained} on {demo / 'val'}")
    copy = checkpoint.load(calibrated)
    assert copy.threshold == result["threshold"] and copy.metadata["calibration"]["fpr"] == 0.25
    reals = sorted(str(p) for p in (demo / "val").rglob("0_real/*.jpg"))
    assert np.mean(Detector(calibrated).predict(reals) >= copy.threshold) <= 0.25
    original = checkpoint.load(trained).model
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in copy.model.state_dict().items())


def test_rine_trains_its_head_and_leaves_clip_frozen(demo, tmp_path):
    out = _train(demo, tmp_path / "rine.pth", "rine_ssca_tiny", "--epochs", "1")
    trained = checkpoint.load(out).model.state_dict()
    torch.manual_seed(0)  # the initial weights of seed 0
    initial = create_model("rine_ssca_tiny", input_size=56).state_dict()
    assert all(torch.equal(trained[k], initial[k]) for k in initial if k.startswith("backbone."))
    assert not torch.equal(trained["classifier.weight"], initial["classifier.weight"])
    assert checkpoint.load(out).metadata["training"]["lr"] == 1e-3


def test_resume_repeats_the_uninterrupted_run(demo, tmp_path):
    straight = _train(demo, tmp_path / "straight.pth", "dual_branch_tiny", "--epochs", "2")
    first = _train(demo, tmp_path / "resumed.pth", "dual_branch_tiny", "--epochs", "1")
    # Machine settings start afresh on resume: give them again.
    assert main(["--resume", str(first.with_name("resumed.state.pth")), "--epochs", "2"] + FAST[2:]) == 0
    a = load_state(straight.with_name("straight.state.pth"))
    b = load_state(first.with_name("resumed.state.pth"))
    assert a["epoch"] == b["epoch"] == 2 and a["best"] == b["best"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    log = first.with_name("resumed.log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_staged_schedule_freezes_what_each_stage_does_not_train(demo, tmp_path):
    assert [schedule.stage_at(e, (1, 2, 1)) for e in range(4)] == ["branches", "joint", "joint", "fusion"]
    model = create_model("dual_branch_tiny")
    names = [n for n, _ in model.named_parameters()]
    schedule.apply_stage(model, "branches", names)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert grads["vit.cls_token"] and grads["frequency_head.1.weight"] and not grads["fusion_head.1.weight"]
    assert schedule.stage_loss("branches", DualBranchLoss()).weights["final"] == 0.0
    schedule.apply_stage(model, "fusion", names)
    schedule.set_train_mode(model, "fusion")
    assert not model.vit.cls_token.requires_grad and model.head_weights.requires_grad
    assert not model.frequency.training and model.fusion_head.training

    out = _train(demo, tmp_path / "staged.pth", "dual_branch_tiny", "--stages", "1,0,1", "--calibrate-fpr", "none")
    log = [json.loads(line) for line in out.with_name("staged.log.jsonl").read_text().splitlines()]
    assert [entry["stage"] for entry in log] == ["branches", "fusion"]
    assert checkpoint.load(out).threshold == 0.5


def test_bf16_autocast_trains_on_the_cpu(demo, tmp_path):
    out = _train(demo, tmp_path / "bf16.pth", "dual_branch_tiny", "--epochs", "1", "--precision", "bf16")
    entry = json.loads(out.with_name("bf16.log.jsonl").read_text())
    assert np.isfinite(entry["train"]["loss"])
    assert checkpoint.load(out).model.head_weights.dtype == torch.float32  # autocast leaves the weights alone


def test_unreadable_training_images_are_counted_not_fatal(demo, tmp_path):
    data = tmp_path / "data"
    for path in (demo / "train").rglob("*.jpg"):
        target = data / path.relative_to(demo / "train")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (data / "1_fake" / "truncated.jpg").write_bytes(next((demo / "train" / "1_fake").glob("*.jpg")).read_bytes()[:200])
    out = tmp_path / "m.pth"
    # One batch of all 17 images, so the broken one is drawn.
    assert main(["--arch", "dual_branch_tiny", "--data", str(data), "--epochs", "1", "-o", str(out)]
                + SMALL["dual_branch_tiny"] + FAST + ["--batch-size", "17"]) == 0
    entry = json.loads(out.with_name("m.log.jsonl").read_text())
    assert entry["train"]["skipped"] == 1 and entry["train"]["images"] == 17 and entry["validation"] is None
    assert checkpoint.load(out).threshold == 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "x"], "--arch required"),
        (["--arch", "rine_ssca_tiny", "--data", "x", "--stages", "1,1,1"], "--stages applies to dual-branch"),
        (["--arch", "dual_branch_tiny", "--data", "x", "--epochs", "3", "--stages", "1,1,2"], "differs from the sum"),
        (["--arch", "dual_branch_tiny", "--data", "x", "--threshold", "0.3"], "--threshold applies to --eval-only"),
        (["--arch", "dual_branch_tiny", "--data", "/nonexistent"], "data folder /nonexistent not found"),
        (["--eval-only", "m.pth", "--data", "x", "--epochs", "2"], "--epochs do(es) not apply to --eval-only"),
        (["--resume", "/nonexistent.state.pth"], "resume state /nonexistent.state.pth not found"),
    ],
)
def test_user_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_resume_refuses_a_model_checkpoint(trained, capsys):
    assert main(["--resume", str(trained)]) == 2
    assert "is a model checkpoint: resume from the .state.pth" in capsys.readouterr().err


def test_config_round_trips_through_a_weights_only_checkpoint():
    config = TrainConfig(arch="dual_branch_tiny", data="d", stages=(1, 2, 3), model_overrides={"dropout": 0.2})
    assert TrainConfig.from_dict(config.to_dict()) == config

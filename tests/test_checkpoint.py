"""specdet.models.checkpoint: round trip, atomic write, weights_only loading, one-line errors."""

from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import TINY_PREPROCESSING, TinyConfig, TinyDetector
from specdet import models
from specdet.errors import SpecdetError
from specdet.models import checkpoint
from specdet.runtime import create_runner


class Smuggled:
    """A class torch.load(weights_only=True) must refuse to unpickle."""


def test_round_trip_gives_identical_outputs(tiny_models, tmp_path):
    model = TinyDetector(TinyConfig(width=6, seed=3)).eval()
    path = checkpoint.save(model, tmp_path / "m.pth", threshold=0.7, run="r1")
    loaded = checkpoint.load(path)
    image = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.model(image), model(image))
    assert not loaded.model.training
    assert loaded.architecture == "tiny"
    assert loaded.config == {"width": 6, "seed": 3}
    assert loaded.preprocessing == TINY_PREPROCESSING
    assert loaded.threshold == 0.7
    assert loaded.metadata == {"run": "r1"}
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_is_a_plain_dict(tiny_checkpoint):
    content = torch.load(tiny_checkpoint, weights_only=True)
    assert content["format"] == "specdet-checkpoint" and content["version"] == 1


def test_failed_save_leaves_old_file_and_no_temporary(tiny_models, tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    path.write_bytes(b"old")

    def fail_halfway(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(OSError):
        checkpoint.save(TinyDetector(TinyConfig()), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]


def test_pickled_objects_are_refused(tiny_models, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "specdet-checkpoint", "payload": Smuggled()}, path)
    with pytest.raises(SpecdetError, match="pickled Python objects"):
        checkpoint.load(path)


def test_bare_state_dict_with_arch(tiny_models, tmp_path):
    model = TinyDetector(TinyConfig())
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = checkpoint.load(path, arch="tiny")
    assert loaded.threshold == 0.5 and loaded.preprocessing == TINY_PREPROCESSING
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded.model(image), model.eval()(image))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_file(tiny_models, tmp_path):
    with pytest.raises(SpecdetError, match="not found") as err:
        checkpoint.load(tmp_path / "absent.pth")
    _one_line(err)


def test_not_a_torch_file(tiny_models, tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(SpecdetError, match="not a readable checkpoint") as err:
        checkpoint.load(path)
    _one_line(err)


def test_torch_file_that_is_no_checkpoint(tiny_models, tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(SpecdetError, match="not a specdet checkpoint"):
        checkpoint.load(path)


def test_bare_state_dict_needs_arch(tiny_models, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(TinyDetector(TinyConfig()).state_dict(), path)
    with pytest.raises(SpecdetError, match="pass --arch NAME; known: tiny") as err:
        checkpoint.load(path)
    _one_line(err)


def test_unknown_architecture(tiny_models, tiny_checkpoint, tmp_path):
    content = torch.load(tiny_checkpoint, weights_only=True)
    content["architecture"] = "resnet9000"
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(SpecdetError, match="unknown architecture 'resnet9000': known: tiny"):
        checkpoint.load(path)


def test_config_the_model_does_not_accept(tiny_models, tiny_checkpoint, tmp_path):
    content = torch.load(tiny_checkpoint, weights_only=True)
    content["config"]["depth"] = 3
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(SpecdetError, match="cannot build tiny from its saved config"):
        checkpoint.load(path)


def test_arch_that_contradicts_the_checkpoint(tiny_checkpoint):
    with pytest.raises(SpecdetError, match="holds a tiny model, not other"):
        checkpoint.load(tiny_checkpoint, arch="other")


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda sd: sd.pop("head.bias"), r"1 missing \(head\.bias\)"),
        (lambda sd: sd.update(extra=torch.zeros(1)), r"1 unexpected \(extra\)"),
        (lambda sd: sd.update({"conv.weight": torch.zeros(8, 3, 3, 3)}), r"1 of the wrong shape \(conv\.weight\)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_incompatible_state_dict(tiny_models, tmp_path, change, expected):
    state_dict = TinyDetector(TinyConfig()).state_dict()
    change(state_dict)
    path = tmp_path / "weights.pt"
    torch.save(state_dict, path)
    with pytest.raises(SpecdetError, match=expected) as err:
        checkpoint.load(path, arch="tiny")
    _one_line(err)


def test_incompatible_lists_only_the_first_names(tiny_models, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(5)}, path)
    with pytest.raises(SpecdetError, match=r"5 unexpected \(layer0.weight, layer1.weight, layer2.weight, \.\.\.\)"):
        checkpoint.load(path, arch="tiny")


@pytest.mark.parametrize("arch", ["dual_branch_tiny", "rine_ssca_tiny"])
def test_real_registry_round_trip(arch, tmp_path):
    """The real tiny variants through save, load and the torch runner (no stand-in)."""
    model = models.create_model(arch).eval()
    path = checkpoint.save(model, tmp_path / f"{arch}.pth")
    loaded = checkpoint.load(path)
    assert loaded.preprocessing == models.default_preprocessing(arch)
    crop = loaded.preprocessing["crop"]
    image = torch.rand(2, 3, crop, crop)
    with torch.inference_mode():
        expected = models.ScoringModule(model)(image)[1]
    probabilities = create_runner(path).infer(image.numpy())["probability"]
    assert torch.allclose(torch.from_numpy(probabilities), expected, atol=1e-6)

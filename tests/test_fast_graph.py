"""The fast GPU path's transformations (benchmarks/fast_graph.py), each checked on the CPU on the tiny detectors:
FP32 rewrites give the same probabilities to rounding, FP16 ones within the contract (1e-3 against FP32), and the
runner takes uint8 crops to the module it captures, normalising nowhere else."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from specdet.benchmarks import fast_graph, variants
from specdet.benchmarks.torch_variants import TorchVariantRunner, torch_loader
from specdet.errors import SpecdetError
from specdet.images import sample_photos
from specdet.models import ScoringModule, checkpoint, create_model, default_preprocessing
from specdet.runtime import RunnerOptions, create_runner
from specdet.runtime.preprocess import image_crop, normalise, preprocess

MODELS = ("dual_branch_tiny", "rine_ssca_tiny")
CONTRACT = 1e-3  # largest probability difference against FP32 (issue 20)


@pytest.fixture(scope="module", params=MODELS)
def scored(request):
    """A tiny detector (seed 0, its BatchNorms given statistics of their own), 4 sample photos' crops, FP32 scores."""
    name = request.param
    torch.manual_seed(0)
    model = create_model(name).eval()
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):  # fresh statistics (mean 0, variance 1) would make folding trivial
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.2, 0.2)
    spec = default_preprocessing(name)
    pixels = preprocess([array for _, array in sample_photos()[:4]], spec)
    scoring = ScoringModule(model).eval()
    return name, scoring, spec, pixels, _probability(scoring, torch.from_numpy(pixels))


def _probability(module, x) -> np.ndarray:
    with torch.inference_mode():
        return module(x)[1].float().numpy()


def test_folding_batchnorm_keeps_the_scores(scored):
    name, scoring, _, pixels, reference = scored
    folded = copy.deepcopy(scoring)
    count = fast_graph.fold_batchnorm(folded)
    assert count == (4 if name.startswith("dual") else 0)  # one conv + BatchNorm per frequency stage
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    np.testing.assert_allclose(_probability(folded, torch.from_numpy(pixels)), reference, rtol=0, atol=1e-6)


def test_the_unused_clip_pooler_is_dropped_without_a_change(scored):
    name, scoring, _, pixels, reference = scored
    dropped = copy.deepcopy(scoring)
    assert fast_graph.drop_unused_pooler(dropped.model) == name.startswith("rine")
    if name.startswith("rine"):
        assert isinstance(dropped.model.backbone.post_layernorm, nn.Identity)
    np.testing.assert_array_equal(_probability(dropped, torch.from_numpy(pixels)), reference)


def test_channels_last_convs_keep_the_scores_and_write_channels_last(scored):
    name, scoring, _, pixels, reference = scored
    if not name.startswith("dual"):
        pytest.skip("only the dual-branch model has a conv stack")
    converted = copy.deepcopy(scoring)
    fast_graph.channels_last_convs(converted.model)
    fast_graph.cast_inputs_to_weights(converted)
    layouts = []
    first = converted.model.frequency.stacks[0]
    first.register_forward_hook(lambda m, args, out: layouts.append(
        (args[0].is_contiguous(memory_format=torch.channels_last), out.is_contiguous(memory_format=torch.channels_last))))
    np.testing.assert_allclose(_probability(converted, torch.from_numpy(pixels)), reference, rtol=0, atol=1e-6)
    assert layouts == [(True, True)]  # the input cast made it channels-last, and the conv kept it


def test_fp16_backbones_keep_the_scores_within_the_contract(scored):
    name, scoring, spec, pixels, reference = scored
    fast = fast_graph.fast_module(copy.deepcopy(scoring), spec, torch.float16)
    halves = {p.dtype for part in fast_graph.backbones(fast.scoring.model) for p in part.parameters()}
    assert halves == {torch.float16}
    before = {n: p.dtype for n, p in fast.named_parameters()}
    assert torch.float32 in before.values()  # the heads stay FP32
    crops = fast_graph.crops_of(pixels, spec)
    probability = _probability(fast, torch.from_numpy(crops))
    assert probability.dtype == np.float32 and 0 < np.max(np.abs(probability - reference)) <= CONTRACT
    assert {n: p.dtype for n, p in fast.named_parameters()} == before  # cast once, at load


def test_normalising_inside_the_module_gives_the_scores_of_normalising_outside(scored):
    _, scoring, spec, pixels, reference = scored
    crops = fast_graph.crops_of(pixels, spec)
    np.testing.assert_array_equal(normalise(crops, spec), pixels)  # the crops the benchmark's images came from
    inside = fast_graph.InGraphNormalise(copy.deepcopy(scoring), spec)
    np.testing.assert_allclose(_probability(inside, torch.from_numpy(crops)), reference, rtol=0, atol=1e-6)


def test_a_float_batch_that_no_crops_normalise_to_is_refused_in_one_line():
    spec = default_preprocessing("dual_branch_tiny")
    batch = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(SpecdetError, match="not the normalisation of any") as error:
        fast_graph.crops_of(batch, spec)
    assert "\n" not in str(error.value)


def test_other_detectors_are_refused_in_one_line():
    with pytest.raises(SpecdetError, match="knows the dual-branch and RINE[+]SSCA detectors, not Linear"):
        fast_graph.backbones(nn.Linear(2, 2))


# ---- the runner: uint8 crops into the captured module, nothing normalised outside it -------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    return checkpoint.save(create_model("dual_branch_tiny"), tmp_path_factory.mktemp("fast") / "dual.pth", threshold=0.5)


@pytest.fixture
def runners(saved):
    fast = torch_loader(fast="float16")(saved, 1)
    plain = TorchVariantRunner(create_runner(saved, "torch", RunnerOptions(threads=1)))
    yield fast, plain
    fast.close()
    plain.close()


def test_the_fast_runner_scores_images_and_crops_alike_within_the_contract(runners, saved):
    fast, plain = runners
    spec = fast.info.preprocessing
    crops = np.stack([image_crop(array, spec)[0] for _, array in sample_photos()[:3]])
    pixels = normalise(crops, spec)
    reference = plain.infer(pixels)["probability"]
    from_pixels, from_crops = fast.infer(pixels)["probability"], fast.infer_crops(crops)["probability"]
    np.testing.assert_array_equal(from_pixels, from_crops)  # the same crops reach the module either way
    assert np.max(np.abs(from_pixels - reference)) <= CONTRACT


class _Graph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def test_the_graph_copies_uint8_crops_and_the_plain_one_float_images(runners, monkeypatch):
    """What device_call copies into the captured graph's input: a quarter of the float bytes, uint8 NHWC."""
    copied = {}
    for runner in runners:
        crop = runner.info.preprocessing["crop"]
        pixels = normalise(np.zeros((2, crop, crop, 3), np.uint8), runner.info.preprocessing)
        runner._cuda_graphs = True
        static = torch.zeros((2, crop, crop, 3) if runner is runners[0] else (2, 3, crop, crop),
                             dtype=runner._input_dtype)
        graph, shapes = _Graph(), []
        monkeypatch.setattr(runner, "_graph", lambda shape, static=static, graph=graph, shapes=shapes:
                            shapes.append(shape) or (graph, static, None))
        runner.device_call(pixels)()
        copied[type(runner).__name__] = (shapes, static.dtype, static.nbytes, graph.replays)
    assert copied == {"FastGraphRunner": ([(2, 224, 224, 3)], torch.uint8, 2 * 224 * 224 * 3, 1),
                      "TorchVariantRunner": ([(2, 3, 224, 224)], torch.float32, 2 * 3 * 224 * 224 * 4, 1)}


def test_crops_on_the_device_are_launched_as_they_are_not_normalised_first(runners, monkeypatch):
    """The GPU pipeline's path (submit_batch, GPU decoding): the fast runner hands its graph the uint8 crops."""
    launched = {}
    crops = torch.zeros((2, 224, 224, 3), dtype=torch.uint8)
    def recorder(name):
        def launch(x):
            launched[name] = x
            return lambda: {}

        return launch

    for runner in runners:
        monkeypatch.setattr(runner, "_launch", recorder(type(runner).__name__))
        runner.infer_device_crops(crops)
    assert launched["FastGraphRunner"] is crops
    assert launched["TorchVariantRunner"].dtype == torch.float32  # the plain one normalises outside its graph


def test_the_captured_module_takes_uint8_crops(runners, monkeypatch):
    """_graph with torch.cuda's capture API faked on the CPU: its static input is uint8 NHWC, the module runs on it
    (warm-up and capture), and the capture's outputs are the scores of that input."""
    fast, _ = runners

    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    graph, static, (logit, probability) = fast._graph((2, 224, 224, 3))
    assert static.dtype == torch.uint8 and static.shape == (2, 224, 224, 3)
    expected = fast.infer_crops(np.zeros((2, 224, 224, 3), np.uint8))["probability"]
    np.testing.assert_array_equal(probability.float().numpy(), expected)


def test_the_fast_variants_are_registered_and_the_cpu_one_is_chosen_by_name_only(saved):
    names = {v.name for v, _ in variants.select(["torch"], saved, [], strict=True)}
    assert "torch-fast-fp16" not in names  # slower than FP32 on a CPU: a numerics check, not a torch variant to time
    assert {v.name for v, _ in variants.select(["torch-fast-fp16"], saved, [], strict=True)} == {"torch-fast-fp16"}
    for name in ("torch-cuda-fast-fp16", "torch-cuda-fast-fp16-kernels", "torch-cuda-fast-compile-fp16"):
        assert variants.VARIANTS[name].device == "cuda" and variants.VARIANTS[name].precision == "fp16"
    assert variants.VARIANTS["torch-cuda-fast-compile-fp16"].by_name_only  # minutes of autotuning

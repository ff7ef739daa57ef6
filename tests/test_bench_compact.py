"""The pieces of ``benchmarks/bench_compact.py`` that do not need Torch-Pruning (which is not a
dependency; the benchmark itself is run by hand): the data, the model, the timing harness."""

import importlib.util
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_compact.py"
_SPEC = importlib.util.spec_from_file_location("bench_compact", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses look their module up while it is executed
_SPEC.loader.exec_module(bench)


@pytest.fixture(scope="module")
def digits():
    return bench.cluttered_digits(40, 20, seed=3)


def test_cluttered_digits_shapes_labels_and_standardization(digits):
    x_train, y_train, x_test, y_test = digits
    size = bench.IMAGE_SIZE
    assert x_train.shape == (40, 1, size, size) and x_test.shape == (20, 1, size, size)
    assert y_train.shape == (40,) and y_test.shape == (20,)
    assert y_train.dtype == torch.long and int(y_train.min()) >= 0 and int(y_train.max()) <= 9
    # standardized with the training statistics: mean 0, std 1 on the training images
    assert float(x_train.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(x_train.std()) == pytest.approx(1.0, rel=1e-5)


def test_cluttered_digits_is_deterministic_per_seed(digits):
    again = bench.cluttered_digits(40, 20, seed=3)
    other = bench.cluttered_digits(40, 20, seed=4)
    for a, b in zip(digits, again):
        assert torch.equal(a, b)
    assert not torch.equal(digits[0], other[0])


@pytest.mark.parametrize("blocks", [(1, 1, 1), (2, 1, 1)], ids=["1-1-1", "2-1-1"])
def test_resnet_shapes_and_residual_layout(blocks):
    torch.manual_seed(0)
    model = bench.ResNet(4, blocks).eval()
    out = model(torch.randn(3, 1, bench.IMAGE_SIZE, bench.IMAGE_SIZE))
    assert out.shape == (3, bench.CLASSES)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # stem + 2 per block + a 1×1 shortcut where stages 2 and 3 change width and resolution
    assert len(convs) == 1 + 2 * sum(blocks) + 2
    assert bench.conv_channels(model) == sum(m.out_channels for m in convs)
    assert isinstance(model.layers[0].shortcut, nn.Identity)


def test_validation_split_is_new_images_of_the_training_digits_and_leaves_the_rest():
    with_val = bench.cluttered_digits(40, 20, seed=3, n_val=10)
    without = bench.cluttered_digits(40, 20, seed=3)
    assert len(with_val) == 6 and with_val[4].shape == (10, 1, bench.IMAGE_SIZE, bench.IMAGE_SIZE)
    for a, b in zip(with_val[:4], without):
        assert torch.equal(a, b)  # train and test unchanged by drawing a validation split
    assert not any(torch.equal(with_val[4][i], with_val[0][j]) for i in range(10)
                   for j in range(40))


def test_paired_lists_the_differences_and_the_t_test():
    from scipy import stats

    ours, theirs = [0.90, 0.91, 0.88], [0.89, 0.92, 0.86]
    text = bench.paired(ours, theirs)
    assert text.startswith("+1.0, -1.0, +2.0 points; mean +0.67 ± 0.88 (s.e.)")
    assert "ahead in 2, tied in 0 of 3" in text
    assert f"p = {stats.ttest_rel(ours, theirs).pvalue:.3f}" in text


def test_cosine_lr_endpoints():
    assert bench.cosine_lr(0, 10, peak=0.4) == 0.4
    assert bench.cosine_lr(5, 10, peak=0.4) == pytest.approx(0.2, rel=1e-12)
    assert bench.cosine_lr(10, 10, peak=0.4) == pytest.approx(0.0, abs=1e-15)


def test_quantile_matches_statistics_quantiles():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 9.0]
    # statistics' "inclusive" method is the same linear interpolation between order statistics
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    assert bench._quantile(values, 0.25) == pytest.approx(q1, rel=1e-12)
    assert bench._quantile(values, 0.75) == pytest.approx(q3, rel=1e-12)


def test_time_models_pairs_ratios_with_the_baseline():
    torch.manual_seed(0)
    small, large = bench.ResNet(2, (1, 1, 1)), bench.ResNet(4, (1, 1, 1))
    timing = bench.time_models({"original": large, "small": small}, threads=1, batch=2,
                               rounds=3, calls=1)
    assert timing.ratio["original"] == (1.0, 1.0, 1.0)
    median, low, high = timing.ratio["small"]
    assert low <= median <= high and all(math.isfinite(v) and v > 0 for v in (low, high))
    assert set(timing.seconds) == {"original", "small"}
    assert torch.get_num_threads() == 1


def _tiny_task():
    """A small cluttered-digits split and a factory of the same small ResNet every call."""
    def make():
        torch.manual_seed(0)
        return bench.ResNet(4, (1, 1, 1))

    return bench.Data(*bench.cluttered_digits(384, 64, seed=1)), make


def test_regtorch_arm_removes_zero_channels_without_changing_outputs():
    data, make = _tiny_task()
    arm = bench.run_regtorch(make, data, epochs=2, sparse_epochs=1, target=0.2, seed=0,
                             recipe=bench.Recipe(lam=0.5, factor=2.0))
    assert arm.notes["removed"] > 0
    # the cut is exact: the compact model classifies the test set as the sparse one did
    assert arm.notes["accuracy_after_cut"] == arm.notes["accuracy_before_cut"]
    assert arm.notes["max_output_difference"] <= 1e-5
    assert bench.conv_channels(arm.model) < bench.conv_channels(make())


def test_regtorch_arm_warmup_trains_plainly_before_the_penalty():
    data, make = _tiny_task()
    # a warm-up as long as the sparse phase: the penalty never acts, nothing is removed, and
    # the sparse phase is the plain training the original arm does
    arm = bench.run_regtorch(make, data, epochs=2, sparse_epochs=1, target=0.2, seed=0,
                             recipe=bench.Recipe(lam=0.5, factor=2.0, warmup=6))
    assert arm.notes["sparse_steps"] == 6 and arm.notes["removed"] == 0


def test_train_warms_up_linearly_then_follows_the_cosine_from_the_peak():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = (torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    seen: list[float] = []
    bench.train(model, optimizer, iter([batch] * 6), 6, peak=0.2, warmup=3,
                after_backward=lambda: seen.append(optimizer.param_groups[0]["lr"]))
    # by hand: 0.1·(1 + cos(π s/6)), times (s + 1)/3 in the first 3 steps
    expected = [0.1 * (1 + math.cos(math.pi * s / 6)) * min(1.0, (s + 1) / 3) for s in range(6)]
    assert seen == pytest.approx(expected, rel=1e-12)

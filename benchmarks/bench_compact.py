"""Pruning that pays: regtorch's group lasso + ``compact`` vs Torch-Pruning's ``GroupNormPruner``.

One ResNet-style CNN (a stem, residual basic blocks with BatchNorm in three stages, global average
pooling, a linear head) on an offline image task, trained three ways with the same budget of
epochs, the same batches and the same SGD recipe:

* ``original``   plain training for all epochs (the reference for size, speed and accuracy);
* ``regtorch``   proximal group lasso (after ``--warmup`` plain steps, default none) over
                 the coupled channel groups of the traced model (``regtorch.channel_groups`` +
                 ``ChannelLasso`` with its default roles, here the BatchNorm weight and bias of
                 each channel, applied by ``Proximal``), λ steered by ``ChannelSparsity``
                 (rolling back and bisecting on an overshoot) until the target fraction of
                 channel groups is exactly zero; then ``regtorch.compact`` (a smaller model with
                 the same outputs, checked) and a fine-tune for the rest of the budget with the
                 optimizer state carried across the cut (``carry_optimizer``);
* ``torch-pruning``  ``tp.pruner.GroupNormPruner``'s sparse training (``pruner.regularize`` after
                 every backward) for as many steps as the regtorch arm's sparse phase took
                 (its warm-up included), then a
                 cut to the MACs of the regtorch model
                 (the pruning ratio bisected until ``tp.utils.count_ops_and_params`` matches), then
                 a fine-tune for the rest of the budget with a new optimizer.

The task ("cluttered digits"): scikit-learn's 8×8 digits, each drawn at a random scale, rotation and
position on a 16×16 canvas, with fragments of other digits as clutter and Gaussian noise; the
training and test images are drawn from disjoint sets of base digits. It is hard enough for a small
CNN that accuracy differences between the arms are visible; at a saturating batch the convolutions,
not the framework overhead, are the cost on a CPU, and the whole run fits in minutes on two cores.

Timing: eval mode, ``torch.inference_mode``, a fixed thread count (``torch.set_num_threads``, 1 and
2 threads by default), one fixed random batch; every model is warmed up, then rounds run every
model in a freshly shuffled order, a model's time in a round being the median of a few calls. A
ratio is the median over rounds of the paired ratio to ``original`` in the same round (25th..75th
percentile after it); throughput is images per second at the median time. Parameters and MACs are
counted by ``tp.utils.count_ops_and_params`` for all three models.

Every arm takes the same number of SGD steps (``--epochs``). Recipes are chosen with
``--split val`` (accuracy on new images of the *training* base digits; the test images are not
looked at) and reported with the default ``--split test``; the last line gives the paired
differences regtorch − Torch-Pruning over the seeds and a paired t-test.

Torch-Pruning is needed for this benchmark only (it is not a regtorch dependency)::

    pip install -c /work/constraints.txt torch-pruning==1.6.1   # the constraints file pins torch

Usage::

    python benchmarks/bench_compact.py [--epochs 20] [--sparse-epochs 14] [--target 0.5]
                                       [--seeds 1] [--first-seed 0] [--threads 1,2]
                                       [--batches 1,256] [--rounds 10] [--split test|val]
                                       [--skip-original] [--quick] [--json PATH]
                                       [--lam 0.01] [--factor 1.05] [--every 5]
                                       [--roles auto] [--scale sqrt] [--hold]
                                       [--warmup 0] [--keep-scale off|exact|all] [--continued]
                                       [--fresh] [--fine-peak 1] [--fine-warmup 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import regtorch

SEED = 0
IMAGE_SIZE = 16
CLASSES = 10
NOISE_STD = 0.15
CLUTTER_FRAGMENTS = 3
CLUTTER_HALF_WIDTH = 3  # a fragment is a 7×7 window of another digit
CLUTTER_INTENSITY = 0.6
BATCH_SIZE = 64
LR = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
# Torch-Pruning's own recipe for GroupNormPruner ("group_sl" in its benchmarks/main.py: reg 5e-4).
TP_REG = 5e-4
# The regtorch arm: λ starts small and is multiplied by LAMBDA_FACTOR every CONTROL_EVERY steps
# while fewer than the target fraction of channel groups are exactly zero.
LAMBDA_START = 1e-2
LAMBDA_FACTOR = 1.05
CONTROL_EVERY = 5
MACS_RTOL = 0.01  # the Torch-Pruning cut is bisected until its MACs are within 1% of the target


# --- data -------------------------------------------------------------------------------------

def _affine(scale: Tensor, angle: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """``affine_grid`` matrices drawing the source at ``scale`` of the canvas, rotated by
    ``angle`` and centred at ``(tx, ty)`` (normalized coordinates)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    row0 = torch.stack([cos, -sin, -(cos * tx - sin * ty)], 1)
    row1 = torch.stack([sin, cos, -(sin * tx + cos * ty)], 1)
    return torch.stack([row0, row1], 1)


def _draw(base: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` cluttered images from the 8×8 ``base`` digits; returns the images and the index of
    the base digit of each."""
    size = (n, 1, IMAGE_SIZE, IMAGE_SIZE)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    pick = torch.randint(len(base), (n,), generator=generator)
    scale = uniform(0.55, 0.8)
    theta = _affine(scale, uniform(-0.35, 0.35), uniform(-1, 1) * (1 - scale),
                    uniform(-1, 1) * (1 - scale))
    grid = F.affine_grid(theta, size, align_corners=False)
    images = F.grid_sample(base[pick][:, None], grid, align_corners=False)
    rows, cols = torch.meshgrid(torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE), indexing="ij")
    for _ in range(CLUTTER_FRAGMENTS):
        other = base[torch.randint(len(base), (n,), generator=generator)]
        theta = _affine(uniform(0.35, 0.55), uniform(-0.35, 0.35), uniform(-1, 1), uniform(-1, 1))
        fragment = F.grid_sample(other[:, None], F.affine_grid(theta, size, align_corners=False),
                                 align_corners=False)
        cx = torch.randint(IMAGE_SIZE, (n, 1, 1), generator=generator)
        cy = torch.randint(IMAGE_SIZE, (n, 1, 1), generator=generator)
        window = (((cols - cx).abs() <= CLUTTER_HALF_WIDTH)
                  & ((rows - cy).abs() <= CLUTTER_HALF_WIDTH))
        images = torch.maximum(images, CLUTTER_INTENSITY * fragment * window[:, None])
    images = images + NOISE_STD * torch.randn(size, generator=generator)
    return images, pick


def cluttered_digits(n_train: int, n_test: int, seed: int = SEED,
                     n_val: int = 0) -> tuple[Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: 1×16×16 images, standardized with the training
    mean and std; train and test come from disjoint halves (2/3, 1/3) of the 1797 base digits.

    With ``n_val > 0`` also ``(x_val, y_val)`` after them: ``n_val`` further images of the
    *training* base digits (new scales, positions, clutter and noise), drawn after the test images
    so that train and test are the same with or without them. Recipes are chosen on this split;
    the test split is only reported."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    cut = 2 * len(x) // 3
    x_train, i_train = _draw(x[order[:cut]], n_train, generator)
    x_test, i_test = _draw(x[order[cut:]], n_test, generator)
    mean, std = x_train.mean(), x_train.std()
    out = ((x_train - mean) / std, y[order[:cut]][i_train],
           (x_test - mean) / std, y[order[cut:]][i_test])
    if n_val:
        x_val, i_val = _draw(x[order[:cut]], n_val, generator)
        out += ((x_val - mean) / std, y[order[:cut]][i_val])
    return out


# --- model ------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 convolutions with BatchNorm, a residual addition (a 1×1
    convolution + BatchNorm on the shortcut when the shape changes), ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet: stem (3×3 conv, BN, ReLU), three stages of basic blocks at widths
    ``width``, ``2·width``, ``4·width`` (the 2nd and 3rd halve the resolution), global average
    pooling, a linear head."""

    def __init__(self, width: int = 32, blocks: Sequence[int] = (2, 2, 2),
                 classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for stage, count in enumerate(blocks):
            cout = width * 2 ** stage
            for i in range(count):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def conv_channels(model: nn.Module) -> int:
    """Sum of the output channels of every convolution (the "channels" a pruner removes)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


# --- training ---------------------------------------------------------------------------------

@dataclass
class Data:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def cosine_lr(step: int, total: int, peak: float = LR) -> float:
    """Cosine decay from ``peak`` to 0 over ``total`` steps."""
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(step, total) / total))


def batches(data: Data, epochs: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The training batches of ``epochs`` epochs, the same for every arm of one seed."""
    generator = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - BATCH_SIZE + 1, BATCH_SIZE):
            index = order[start:start + BATCH_SIZE]
            yield data.x_train[index], data.y_train[index]


def steps_per_epoch(data: Data) -> int:
    return len(data.x_train) // BATCH_SIZE


def sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                           weight_decay=WEIGHT_DECAY)


def train(model: nn.Module, optimizer: torch.optim.Optimizer,
          stream: Iterator[tuple[Tensor, Tensor]], steps: int, *,
          after_backward: Callable[[], object] | None = None,
          stop: Callable[[int], bool] | None = None,
          schedule: tuple[int, int] | None = None, peak: float = LR, warmup: int = 0) -> int:
    """Up to ``steps`` SGD steps on the next batches of ``stream``, the learning rate a cosine
    from ``peak`` to 0 over ``steps`` (``schedule=(offset, total)``: the steps ``offset ...`` of a
    cosine over ``total``), times ``(step + 1) / warmup`` in the first ``warmup`` steps (a linear
    warm-up); ``stop(step)``, called after every step, ends the phase early when it returns true.
    Returns the number of steps taken."""
    offset, total = schedule or (0, steps)
    model.train()
    for step in range(steps):
        x, y = next(stream)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(offset + step, total, peak) * min(1.0, (step + 1) / max(
                warmup, 1))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        if stop is not None and stop(step):
            return step + 1
    return steps


@torch.inference_mode()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in
                  zip(x.split(500), y.split(500)))
    return correct / len(y)


@torch.no_grad()
def recalibrated_accuracy(model: nn.Module, data: Data) -> float:
    """Accuracy of a copy of ``model`` whose BatchNorm running statistics are recomputed on the
    training images (a cumulative average, no gradient step). In the sparse phase the proximal
    steps change the channels' scales faster than the running averages follow (momentum 0.1),
    so the eval-mode accuracy of the sparse model understates it; a diagnostic only, the arms
    go on with the model as it is."""
    copied = copy.deepcopy(model)
    for m in copied.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    copied.train()
    for xb in data.x_train.split(500):
        copied(xb)
    return accuracy(copied, data.x_test, data.y_test)


def count(model: nn.Module, example: Tensor) -> tuple[int, int]:
    """``(MACs, parameters)`` by Torch-Pruning's counter, for every model alike."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


@dataclass
class Arm:
    """One trained model and what happened on the way."""

    name: str
    model: nn.Module
    accuracy: float
    notes: dict[str, object] = field(default_factory=dict)


def run_original(make: Callable[[], nn.Module], data: Data, epochs: int, seed: int) -> Arm:
    model = make()
    train(model, sgd(model), batches(data, epochs, seed), epochs * steps_per_epoch(data))
    return Arm("original", model, accuracy(model, data.x_test, data.y_test))


@dataclass(frozen=True)
class FineTune:
    """The fine-tune after the cut, the same for both pruning arms.

    Attributes:
        peak: the peak learning rate of its cosine, as a multiple of ``LR``.
        warmup: steps of linear warm-up at its start (0: none).
    """

    peak: float = 1.0
    warmup: int = 0

    def options(self) -> dict[str, float]:
        return {"peak": self.peak * LR, "warmup": self.warmup}


@dataclass(frozen=True)
class Recipe:
    """The regtorch arm's sparse phase.

    Attributes:
        lam: initial λ of the group lasso.
        factor: ``ChannelSparsity``'s multiplier of λ per raise.
        every: proximal steps between two calls of the controller.
        roles: ``ChannelLasso`` roles (``"auto"``: the library default).
        scale: group weight, ``"sqrt"`` (√|g|) or ``"none"``.
        hold: ``False``: cut as soon as the target is reached; ``True``: keep training with the
            controller holding the fraction for the whole sparse phase, then cut.
        warmup: steps of plain training (λ = 0) before the penalty starts, counted in the sparse
            phase.
        keep_scale: ``ChannelLasso``'s ``keep_scale``.
        continued: one cosine learning rate over the whole budget, the fine-tune continuing it
            where the sparse phase stopped (``compact`` does not change the model's function);
            ``False``: a cosine over the sparse epochs, and a new one for the fine-tune.
        fresh: fine-tune with a new optimizer (no state), as the Torch-Pruning arm does;
            ``False``: the sparse phase's SGD state carried across the cut (``carry_optimizer``).
    """

    lam: float = LAMBDA_START
    factor: float = LAMBDA_FACTOR
    every: int = CONTROL_EVERY
    roles: str | tuple[str, ...] = "auto"
    scale: str = "sqrt"
    hold: bool = False
    warmup: int = 0
    keep_scale: bool | str = False
    continued: bool = False
    fresh: bool = False


def _family_scales(model: nn.Module, example: Tensor) -> list[float]:
    """Mean |γ| of each scale-free family of ``model`` (``ChannelGroups.scale_free()``)."""
    groups = regtorch.channel_groups(model, example)
    out = []
    for family in groups.scale_free():
        gammas = [s for i in family for s in groups.groups[i].of("norm")
                  if s.tensor.endswith(".weight")]
        values = torch.cat([groups.tensor(s.tensor).detach()[list(s.indices)] for s in gammas])
        out.append(round(float(values.abs().mean()), 4))
    return out


def run_regtorch(make: Callable[[], nn.Module], data: Data, epochs: int, sparse_epochs: int,
                 target: float, seed: int, recipe: Recipe = Recipe(),
                 fine_tune: FineTune = FineTune()) -> Arm:
    """Proximal group lasso over coupled channel groups, λ steered by ``ChannelSparsity`` every
    ``recipe.every`` steps until ``target`` of the groups are exactly zero (``recipe.hold``: and
    held there until ``sparse_epochs`` have passed); then ``compact`` and a fine-tune, with the
    carried optimizer state, for the rest of the budget.

    ``roles="auto"`` (ChannelLasso's default) penalizes, on this network where every convolution
    feeds a BatchNorm, each channel's BatchNorm weight and bias only — the group lasso form of
    network slimming (Liu et al., 2017). A convolution followed by BatchNorm computes the same
    function at any scale of its rows, so the loss does not resist a penalty on the rows
    (``roles=("out", "bias", "norm")``): under λ large enough to zero half the channels, every
    row shrinks and the network collapses.
    """
    model = make()
    groups = regtorch.channel_groups(model, data.x_train[:BATCH_SIZE])
    penalty = regtorch.ChannelLasso(recipe.lam, groups, scale=recipe.scale, roles=recipe.roles,
                                    keep_scale=recipe.keep_scale)
    reg = regtorch.Regularizer(model, {groups.selector: penalty})
    optimizer = regtorch.Proximal(sgd(model), reg)
    # On an overshoot the controller rolls the model and optimizer back to its last raise and
    # bisects λ (a zero channel before a ReLU cannot leave zero by itself).
    controller = regtorch.ChannelSparsity(penalty, target, factor=recipe.factor,
                                          restore=(model, optimizer.optimizer))

    if recipe.warmup:
        penalty.lam = 0.0

    def reached(step: int) -> bool:
        if step < recipe.warmup - 1:
            return False
        if step == recipe.warmup - 1:  # the penalty acts from the next step on
            penalty.lam = recipe.lam
            return False
        if (step - recipe.warmup) % recipe.every == recipe.every - 1:
            controller.step()
        landed = controller.reached_ or (controller.why_ is not None
                                         and penalty.zero_fraction() >= target)
        return landed and not recipe.hold

    stream = batches(data, epochs, seed)
    total = epochs * steps_per_epoch(data)
    sparse_steps = train(model, optimizer, stream, sparse_epochs * steps_per_epoch(data),
                         stop=reached, schedule=(0, total) if recipe.continued else None)
    zero_fraction = penalty.zero_fraction()
    acc_before = accuracy(model, data.x_test, data.y_test)
    acc_recalibrated = recalibrated_accuracy(model, data)
    small = regtorch.compact(model.eval(), data.x_test[:256])
    record = regtorch.compaction_of(small)
    acc_cut = accuracy(small, data.x_test, data.y_test)
    fine = sgd(small) if recipe.fresh else regtorch.carry_optimizer(optimizer.optimizer, model,
                                                                    small)
    scales_at_cut = _family_scales(small, data.x_test[:256])
    train(small, fine, stream, total - sparse_steps,
          schedule=(sparse_steps, total) if recipe.continued else None, **fine_tune.options())
    return Arm("regtorch", small, accuracy(small, data.x_test, data.y_test), {
        "groups": len(groups.groups), "zero_fraction": round(zero_fraction, 4),
        "removed": len(record.removed), "kept_zero": len(record.kept),
        "folded": len(record.folded), "lambda_final": round(penalty.lam, 6),
        "recipe": asdict(recipe), "restored": controller.restored_, "why": controller.why_,
        "sparse_steps": sparse_steps, "total_steps": total,
        "accuracy_before_cut": acc_before, "accuracy_before_cut_recalibrated": acc_recalibrated,
        "accuracy_after_cut": acc_cut, "max_output_difference": record.max_difference,
        "family_mean_abs_gamma_at_cut": scales_at_cut, "fine_tune": asdict(fine_tune)})


def _tp_cut(model: nn.Module, example: Tensor, ratio: float, global_pruning: bool) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    head = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    pruner = tp.pruner.GroupNormPruner(
        pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, global_pruning=global_pruning, ignored_layers=head)
    pruner.step()
    return pruned


def run_torch_pruning(make: Callable[[], nn.Module], data: Data, epochs: int,
                      sparse_steps: int, target_macs: int, seed: int,
                      global_pruning: bool, fine_tune: FineTune = FineTune()) -> Arm:
    """GroupNormPruner's sparse training for ``sparse_steps`` (those of the regtorch arm), a cut
    bisected to ``target_macs``, a fine-tune with a new optimizer for the rest of the budget."""
    import torch_pruning as tp

    model = make()
    example = data.x_train[:1]
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    pruner = tp.pruner.GroupNormPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), reg=TP_REG,
        global_pruning=global_pruning, ignored_layers=head)
    stream = batches(data, epochs, seed)
    total = epochs * steps_per_epoch(data)
    train(model, sgd(model), stream, sparse_steps,
          after_backward=lambda: pruner.regularize(model))
    acc_before = accuracy(model, data.x_test, data.y_test)
    acc_recalibrated = recalibrated_accuracy(model, data)
    # Bisect the pruning ratio; the MACs move in steps (whole channels), so keep the closest cut.
    low, high = 0.0, 0.95
    best: tuple[float, float, nn.Module] | None = None
    for _ in range(20):
        ratio = (low + high) / 2
        candidate = _tp_cut(model, example, ratio, global_pruning)
        macs = count(candidate, example)[0]
        if best is None or abs(macs - target_macs) < best[0]:
            best = (abs(macs - target_macs), ratio, candidate)
        if abs(macs - target_macs) <= MACS_RTOL * target_macs:
            break
        low, high = (ratio, high) if macs > target_macs else (low, ratio)
    _, ratio, pruned = best
    acc_cut = accuracy(pruned, data.x_test, data.y_test)
    acc_cut_recalibrated = recalibrated_accuracy(pruned, data)
    train(pruned, sgd(pruned), stream, total - sparse_steps, **fine_tune.options())
    return Arm("torch-pruning", pruned, accuracy(pruned, data.x_test, data.y_test), {
        "pruning_ratio": round(ratio, 4), "global_pruning": global_pruning,
        "macs": count(pruned, example)[0], "target_macs": target_macs,
        "accuracy_before_cut": acc_before, "accuracy_before_cut_recalibrated": acc_recalibrated,
        "accuracy_after_cut": acc_cut,
        "accuracy_after_cut_recalibrated": acc_cut_recalibrated})


# --- timing -----------------------------------------------------------------------------------

@dataclass
class Timing:
    threads: int
    batch: int
    seconds: dict[str, float]                  # median over rounds of a model's time per call
    ratio: dict[str, tuple[float, float, float]]  # paired ratio to original: median, p25, p75


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@torch.inference_mode()
def time_models(models: dict[str, nn.Module], threads: int, batch: int, rounds: int,
                calls: int, seed: int = SEED) -> Timing:
    """Interleaved timing of ``models`` (the first is the baseline) on one random batch."""
    torch.set_num_threads(threads)
    x = torch.randn(batch, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    for model in models.values():
        model.eval()
        for _ in range(max(3, calls)):
            model(x)
    rng = random.Random(seed)
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        names = list(models)
        rng.shuffle(names)
        times = {}
        for name in names:
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                models[name](x)
                samples.append(time.perf_counter() - start)
            times[name] = statistics.median(samples)
        per_round.append(times)
    baseline = next(iter(models))
    seconds = {n: statistics.median(r[n] for r in per_round) for n in models}
    ratio = {}
    for name in models:
        ratios = [r[name] / r[baseline] for r in per_round]
        ratio[name] = (statistics.median(ratios), _quantile(ratios, 0.25), _quantile(ratios, 0.75))
    return Timing(threads, batch, seconds, ratio)


# --- report -----------------------------------------------------------------------------------

def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}%"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}%"


def paired(ours: Sequence[float], theirs: Sequence[float]) -> str:
    """The paired differences ``ours − theirs`` (points), their mean ± standard error, wins, and
    a paired t-test (two-sided p; with one seed only the difference)."""
    diffs = [100 * (a - b) for a, b in zip(ours, theirs)]
    listed = ", ".join(f"{d:+.1f}" for d in diffs)
    if len(diffs) < 2:
        return f"{listed} points"
    from scipy import stats

    mean, sem = statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    wins = sum(d > 0 for d in diffs)
    ties = sum(d == 0 for d in diffs)
    p = stats.ttest_rel(ours, theirs).pvalue if sem > 0 else float("nan")
    return (f"{listed} points; mean {mean:+.2f} ± {sem:.2f} (s.e.); regtorch ahead in {wins}, "
            f"tied in {ties} of {len(diffs)}; paired t-test p = {p:.3f}")


def table(arms: dict[str, Arm], accuracies: dict[str, list[float]], sizes: dict[str, tuple],
          timings: list[Timing]) -> str:
    names = list(arms)
    head = "| | " + " | ".join(names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    base_macs, base_params, base_channels = sizes[names[0]]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("parameters", [f"{sizes[n][1]:,} ({sizes[n][1] / base_params:.2f}×)" for n in names])
    row("MACs / image", [f"{sizes[n][0] / 1e6:.2f} M ({sizes[n][0] / base_macs:.2f}×)"
                         for n in names])
    row("conv channels", [f"{sizes[n][2]} ({sizes[n][2] / base_channels:.2f}×)" for n in names])
    row("accuracy", [_mean_std(accuracies[n]) for n in names])
    for t in timings:
        unit = "latency" if t.batch == 1 else f"batch {t.batch}"
        cells = []
        for n in names:
            median, low, high = t.ratio[n]
            ms = 1e3 * t.seconds[n]
            cell = f"{ms:.2f} ms" if t.batch == 1 else f"{t.batch / t.seconds[n]:,.0f} img/s"
            if n != names[0]:
                cell += f" (**{median:.2f}×** time, {low:.2f}–{high:.2f})"
            cells.append(cell)
        row(f"{unit}, {t.threads} thread{'s' if t.threads > 1 else ''}", cells)
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="training budget of every arm")
    parser.add_argument("--sparse-epochs", type=int, default=14,
                        help="epochs of sparse training before the cut (both pruning arms)")
    parser.add_argument("--target", type=float, default=0.5,
                        help="fraction of coupled channel groups to zero (regtorch arm)")
    parser.add_argument("--lam", type=float, default=LAMBDA_START,
                        help="initial λ of the regtorch arm's group lasso")
    parser.add_argument("--factor", type=float, default=LAMBDA_FACTOR,
                        help=f"λ is multiplied by this every {CONTROL_EVERY} steps below target")
    parser.add_argument("--roles", default="auto",
                        help="ChannelLasso roles of the regtorch arm (auto: the library default, "
                             "here the BatchNorm entries; out,bias,norm: the rows too)")
    parser.add_argument("--scale", default="sqrt", choices=("sqrt", "none"),
                        help="group weight of the regtorch arm: √|g| or 1")
    parser.add_argument("--every", type=int, default=CONTROL_EVERY,
                        help="proximal steps between two calls of the regtorch arm's controller")
    parser.add_argument("--warmup", type=int, default=0,
                        help="regtorch arm: plain steps (λ = 0) before the penalty starts "
                             "(counted in the sparse phase; Torch-Pruning regularizes in them)")
    parser.add_argument("--keep-scale", choices=("off", "exact", "all"), default="off",
                        help="regtorch arm: ChannelLasso(keep_scale=...): off (False), exact "
                             "(True: each scale-free family rescaled to its norm after every "
                             "step), all ('all': the families before the head too)")
    parser.add_argument("--continued", action="store_true",
                        help="regtorch arm: one cosine over the whole budget, the fine-tune "
                             "continuing it (default: a new cosine after the cut)")
    parser.add_argument("--fresh", action="store_true",
                        help="regtorch arm: fine-tune with a new optimizer, as Torch-Pruning's "
                             "arm does (default: the SGD state carried across the cut)")
    parser.add_argument("--fine-peak", type=float, default=1.0,
                        help="both arms: the fine-tune's peak learning rate, × the LR")
    parser.add_argument("--fine-warmup", type=int, default=0,
                        help="both arms: steps of linear learning-rate warm-up at the start of "
                             "the fine-tune")
    parser.add_argument("--hold", action="store_true",
                        help="regtorch arm: hold the target for the whole sparse phase, then cut "
                             "(default: cut as soon as it is reached)")
    parser.add_argument("--split", default="test", choices=("test", "val"),
                        help="the split accuracies are measured on (val: images of the training "
                             "base digits; choose recipes there, report test)")
    parser.add_argument("--val", type=int, default=1000, help="validation images (--split val)")
    parser.add_argument("--skip-original", action="store_true",
                        help="do not train the original (accuracy tuning runs; no timing)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--blocks", default="1,1,1", help="basic blocks per stage")
    parser.add_argument("--train", type=int, default=1500, help="training images")
    parser.add_argument("--test", type=int, default=1000, help="test images")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds (accuracy mean ± std)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--threads", default="1,2", help="thread counts to time")
    parser.add_argument("--batches", default="1,256", help="batch sizes to time")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-threads", type=int, default=1,
                        help="threads while training (1: on a busy machine 2 threads stall)")
    parser.add_argument("--local-pruning", action="store_true",
                        help="Torch-Pruning with a uniform ratio per layer (default: global)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: tiny model and data, 2 epochs, 3 rounds")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.sparse_epochs, args.width, args.blocks = 2, 1, 8, "1,1,1"
        args.train, args.test, args.rounds, args.seeds = 512, 256, 3, 1
    if not 0 < args.sparse_epochs < args.epochs:
        parser.error(f"--sparse-epochs {args.sparse_epochs} must be in 1..{args.epochs - 1}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_arguments(argv)
    try:
        import torch_pruning  # noqa: F401 (the Torch-Pruning arm imports it where it is used)
    except ImportError:
        sys.exit("bench_compact needs torch-pruning: pip install -c /work/constraints.txt "
                 "torch-pruning==1.6.1")
    torch.set_num_threads(args.train_threads)
    started = time.perf_counter()
    x_train, y_train, x_test, y_test, x_val, y_val = cluttered_digits(args.train, args.test,
                                                                      n_val=args.val)
    # The arms report accuracy on data.x_test: the test split, or the validation split in a
    # tuning run (the test split is then never looked at).
    if args.split == "val":
        x_test, y_test = x_val, y_val
    data = Data(x_train, y_train, x_test, y_test)
    recipe = Recipe(args.lam, args.factor, args.every,
                    "auto" if args.roles == "auto" else tuple(args.roles.split(",")),
                    args.scale, args.hold, args.warmup,
                    {'off': False, 'exact': True, 'all': 'all'}[args.keep_scale],
                    args.continued, args.fresh)
    fine_tune = FineTune(args.fine_peak, args.fine_warmup)
    blocks = tuple(int(b) for b in args.blocks.split(","))
    print(f"torch {torch.__version__}, torch-pruning {metadata.version('torch-pruning')}, "
          f"{os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; ResNet(width {args.width}, blocks {blocks}) on "
          f"cluttered digits ({args.train} train / {args.test} test, {IMAGE_SIZE}×{IMAGE_SIZE}); "
          f"{args.epochs} epochs, {args.sparse_epochs} of them sparse", flush=True)
    names = ("regtorch", "torch-pruning") if args.skip_original else (
        "original", "regtorch", "torch-pruning")
    accuracies: dict[str, list[float]] = {name: [] for name in names}
    notes: dict[str, list[dict]] = {"regtorch": [], "torch-pruning": []}
    first: dict[str, Arm] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        def make(seed: int = seed) -> nn.Module:
            torch.manual_seed(seed)
            return ResNet(args.width, blocks)

        arms = []
        if not args.skip_original:
            arms.append(run_original(make, data, args.epochs, seed))
            print(f"seed {seed}: original {arms[-1].accuracy:.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        ours = run_regtorch(make, data, args.epochs, args.sparse_epochs, args.target, seed,
                            recipe, fine_tune)
        print(f"seed {seed}: regtorch {ours.accuracy:.4f} {ours.notes} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        target_macs = count(ours.model, data.x_train[:1])[0]
        theirs = run_torch_pruning(make, data, args.epochs, ours.notes["sparse_steps"],
                                   target_macs, seed, not args.local_pruning, fine_tune)
        print(f"seed {seed}: torch-pruning {theirs.accuracy:.4f} {theirs.notes} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        arms += [ours, theirs]
        for arm in arms:
            accuracies[arm.name].append(arm.accuracy)
            if arm.name in notes:
                notes[arm.name].append(arm.notes)
            first.setdefault(arm.name, arm)
    models = {name: arm.model for name, arm in first.items()}
    example = data.x_train[:1]
    sizes = {name: (*count(m, example), conv_channels(m)) for name, m in models.items()}
    load_before = os.getloadavg()[0]
    timings = []
    for threads in (int(t) for t in args.threads.split(",") if t and not args.skip_original):
        for batch in (int(b) for b in args.batches.split(",")):
            calls = 20 if batch == 1 else 3
            timings.append(time_models(models, threads, batch, args.rounds, calls))
    print(f"\ntiming: load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"total {time.perf_counter() - started:.0f} s\n")
    print(table(first, accuracies, sizes, timings))
    test = paired(accuracies["regtorch"], accuracies["torch-pruning"])
    print(f"\n{args.split} accuracy, regtorch − torch-pruning, paired over seeds "
          f"{args.first_seed}..{args.first_seed + args.seeds - 1}: {test}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "accuracy": accuracies, "notes": notes,
                       "sizes": sizes, "timings": [asdict(t) for t in timings]}, f, indent=1,
                      default=str)


if __name__ == "__main__":
    main()

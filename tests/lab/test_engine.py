"""The engine's claims (``regtorch.lab.engine`` docstring), each against plain PyTorch written here.

"Vectorized equals sequential": every member of a study — stacked with its group, or trained in
the loop fallback — ends where an independent plain-PyTorch run of that one member ends, with
records equal to metrics computed by hand from the reference's parameters. The reference
(:func:`reference_run`) shares only the model builder (same seed → same init) and the data with
the engine; the rest is written out: the batch order (the ``e``-th ``randperm`` of a generator
seeded with ``data_seed``), batches by tensor indexing, the loss, a ``torch.optim`` optimizer with
the variant's ``weight_decay`` on the selected tensors, penalties as loss terms by autograd,
proximal steps as explicit soft-thresholding / shrinking with the optimizer's effective step, and
the learning rate of the schedule in closed form (or torch's own ``ReduceLROnPlateau``).

Everything runs in float64 (``train.dtype = "float64"``) unless a test says otherwise.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import regtorch
from regtorch.lab.analysis.summary import summarize
from regtorch.lab.schema import LOSS_KEYS, STOPPED_EPOCH
from regtorch.lab.study import ModelSpec, Study, Variant, parse_study
from regtorch.lab.study.data import make_data
from regtorch.lab.study.models import build_model
from regtorch.lab.train import members_of, run_study

# float64: a stacked member and its plain run differ only by the rounding order of a few
# reductions (batched vs single matmul, fused vs for-loop optimizer kernels, ∇R added to .grad
# vs by autograd); over a few dozen steps that stays ~1e-15. A modelling error (a missing ½, a
# penalized bias, the wrong batch, a prox step at the wrong step size) is orders of magnitude
# larger.
ATOL = 1e-10
# float32: the same rounding differences at float32's eps (1.2e-7 per op) compound over ~20
# steps to a few 1e-7 on O(1) values (measured max ~3e-7 here); 1e-5 keeps a margin of ~30 and is
# still far below the ~1e-3 that any modelling error above produces.
F32_ATOL = 1e-5

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------------------------


def linear_study(variants: list[dict], *, seeds: int = 2, **train: Any) -> Study:
    """8 features (3 true non-zeros), 26 training points: batches of 6, 6, 6, 6 and a last 2."""
    return parse_study({
        "name": "parity-linear", "seeds": seeds, "data_seed": 3,
        "data": {"kind": "linear", "features": 8, "train": 26, "val": 12, "test": 12,
                 "weights": 1.0, "nonzeros": 3, "bias": 0.5, "noise_std": 0.1},
        "model": {"kind": "linear"},
        "train": {"loss": "half-mse", "optimizer": "sgd", "lr": 0.05, "batch_size": 6,
                  "epochs": 4, "dtype": "float64", **train},
        "variants": variants,
    })


def mlp_study(variants: list[dict], *, seeds: int = 2, model: dict | None = None,
              **train: Any) -> Study:
    """A 5-7-4-1 MLP on 20 training points: batches of 8, 8 and 4."""
    return parse_study({
        "name": "parity-mlp", "seeds": seeds, "data_seed": 1,
        "data": {"kind": "linear", "features": 5, "train": 20, "val": 10, "test": 10,
                 "weights": [0.5, -1.0, 0.2, 0.0, 1.5], "bias": 0.3, "noise_std": 0.1},
        "model": {"kind": "mlp", "hidden": [7, 4], **(model or {})},
        "train": {"loss": "mse", "optimizer": "adam", "lr": 0.01, "batch_size": 8,
                  "epochs": 3, "dtype": "float64", **train},
        "variants": variants,
    })


def digits_study(variants: list[dict]) -> Study:
    """A small digits classifier 64-16-10 (60 train, 60 validation, the rest test)."""
    return parse_study({
        "name": "parity-digits", "seeds": 2, "data_seed": 0,
        "data": {"kind": "digits", "train": 60, "val": 60},
        "model": {"kind": "mlp", "hidden": [16]},
        "train": {"loss": "cross-entropy", "optimizer": "adam", "lr": 0.01, "batch_size": 20,
                  "epochs": 2, "dtype": "float64"},
        "variants": variants,
    })


# --------------------------------------------------------------------------------------------
# The plain-PyTorch reference
# --------------------------------------------------------------------------------------------


def selected(model: nn.Module, params: str) -> dict[str, Tensor]:
    """The variant's ``params``: "weights" is every ``ndim >= 2`` tensor (the Linear weights of
    these models: biases and BatchNorm gains are 1-D), "all" everything, else a name glob."""
    named = dict(model.named_parameters())
    if params == "weights":
        return {n: p for n, p in named.items() if p.ndim >= 2}
    if params == "all":
        return named
    return {n: p for n, p in named.items() if fnmatch.fnmatchcase(n, params)}


def penalty_value(v: Variant, lam: float, model: nn.Module) -> Tensor:
    """R(w) of the variant, written out (study docstring)."""
    ws = list(selected(model, v.params).values())
    squares = sum((w ** 2).sum() for w in ws)
    absolutes = sum(w.abs().sum() for w in ws)
    if v.penalty == "l2":
        return lam / 2 * squares
    if v.penalty == "l1":
        return lam * absolutes
    if v.penalty == "elasticnet":
        rho = v.l1_ratio
        return rho * lam * absolutes + (1 - rho) * lam / 2 * squares
    if v.penalty == "group":  # rows = slices along dim 0, each weighted by √(group size)
        rows = [w if v.groups == "rows" else w.T for w in ws]
        return lam * sum((math.sqrt(r.shape[1]) * r.norm(dim=1)).sum() for r in rows)
    if v.penalty == "blog":  # λ·Σ‖W‖₂, un-squared, one norm per tensor
        return lam * sum(w.norm() for w in ws)
    raise AssertionError(f"no reference for penalty {v.penalty!r}")


def recorded_penalty(v: Variant, lam: float, model: nn.Module) -> Tensor | float:
    """The record's penalty: the variant's own R(w), plus wd/2·Σw² over the decayed tensors."""
    total: Tensor | float = 0.0
    if v.penalty is not None:
        total = total + penalty_value(v, lam, model)
    if v.weight_decay:
        total = total + v.weight_decay / 2 * sum(
            (w ** 2).sum() for w in selected(model, v.params).values())
    return total


@torch.no_grad()
def prox_(v: Variant, lam: float, w: Tensor, step: float | Tensor) -> None:
    """The proximal step of R with step size ``step``, written out."""
    if v.penalty == "l1":
        w.copy_(torch.sign(w) * torch.clamp(w.abs() - step * lam, min=0))
    elif v.penalty == "l2":
        w.copy_(w / (1 + step * lam))
    else:
        raise AssertionError(f"no reference prox for penalty {v.penalty!r}")


def effective_step(optimizer: torch.optim.Optimizer, p: Tensor) -> float | Tensor:
    """The step the optimizer took along the gradient (DESIGN "Three ways"): lr for SGD,
    lr/(1−μ) with momentum μ, lr/(√v̂ + ε) per element for Adam."""
    group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
    if isinstance(optimizer, torch.optim.SGD):
        return group["lr"] / (1 - group["momentum"])
    state = optimizer.state[p]
    v_hat_sqrt = state["exp_avg_sq"].sqrt() / math.sqrt(1 - group["betas"][1] ** float(
        state["step"]))
    return group["lr"] / (v_hat_sqrt + group["eps"])


def criterion(study: Study) -> Callable[[Tensor, Tensor], Tensor]:
    if study.train.loss == "half-mse":
        return lambda out, y: ((out - y) ** 2 / 2).mean()
    if study.train.loss == "mse":
        return lambda out, y: ((out - y) ** 2).mean()
    return F.cross_entropy


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@torch.no_grad()
def hand_record(study: Study, data, model: nn.Module, v: Variant, lam: float, seed: int,
                epoch: int, lr: float) -> dict[str, Any]:
    """The record the engine should write, computed from ``model`` in eval mode."""
    model.eval()
    loss = criterion(study)
    row: dict[str, Any] = {"variant": v.name, "strength": lam if v.penalty else None,
                           "seed": seed, "epoch": epoch}
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        out = model(x)
        row[f"{split}_loss"] = finite(float(loss(out, y)))
        if study.classification:
            row[f"{split}_acc"] = float((out.argmax(1) == y).double().mean())
    weights = [p for p in model.parameters() if p.ndim >= 2]
    norm = math.sqrt(float(sum((w.double() ** 2).sum() for w in weights)))
    row["penalty"] = finite(float(recorded_penalty(v, lam, model)))
    row["weight_norm"] = finite(norm)
    row["sparsity"] = (float(sum((w == 0).sum() for w in weights))
                       / sum(w.numel() for w in weights))
    row["lr"] = lr
    row["diverged"] = row["train_loss"] is None or row["weight_norm"] is None
    model.train()
    return row


def reference_run(study: Study, v: Variant, lam: float, seed: int
                  ) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """One member trained alone in plain PyTorch: its records and final parameters."""
    dtype = DTYPES[study.train.dtype]
    recipe = study.train
    data = make_data(study.data, study.data_seed, dtype)
    model = build_model(study.model, data.features, data.outputs, dropout=v.dropout, seed=seed,
                        dtype=dtype)
    decayed = selected(model, v.params) if v.weight_decay else {}
    rest = [p for n, p in model.named_parameters() if n not in decayed]
    groups = [g for g in ({"params": list(decayed.values()), "weight_decay": v.weight_decay},
                          {"params": rest, "weight_decay": 0.0}) if g["params"]]
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    elif recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=recipe.lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
    schedule = study.schedule_of(v)
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, patience=schedule.patience, factor=schedule.factor)
        if schedule.kind == "plateau" else None)
    ticks = 0

    def tick(loss: float) -> None:
        nonlocal ticks
        ticks += 1
        if plateau is not None:
            plateau.step(loss)
        elif schedule.kind == "exponential":  # closed form: lr0 · max(rate^t, min_lr / lr0)
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * max(schedule.rate ** ticks, schedule.min_lr / recipe.lr)

    loss_fn = criterion(study)
    penalized = selected(model, v.params) if v.penalty else {}
    x_train, y_train = data.split("train")
    n = x_train.shape[0]
    batch = recipe.batch_size or n
    order = torch.Generator().manual_seed(study.data_seed)
    records = [hand_record(study, data, model, v, lam, seed, 0, recipe.lr)]
    stopper = None if v.early_stopping is None else regtorch.EarlyStopping(
        patience=v.early_stopping.patience, min_delta=v.early_stopping.min_delta,
        sink=lambda message: None)
    for epoch in range(1, recipe.epochs + 1):
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, batch):
            index = perm[start:start + batch]
            optimizer.zero_grad()
            data_loss = loss_fn(model(x_train[index]), y_train[index])
            loss = data_loss
            if v.penalty and v.apply == "gradient":
                loss = loss + penalty_value(v, lam, model)
            loss.backward()
            optimizer.step()
            if v.penalty and v.apply == "prox":
                for w in penalized.values():
                    prox_(v, lam, w, effective_step(optimizer, w))
            if schedule.per == "step" and schedule.kind != "constant":
                tick(float(data_loss.detach()))
        if schedule.per == "epoch" and schedule.kind != "constant":
            with torch.no_grad():
                model.eval()
                tick(float(loss_fn(model(x_train), y_train)))
                model.train()
        records.append(hand_record(study, data, model, v, lam, seed, epoch,
                                   optimizer.param_groups[0]["lr"]))
        if stopper is not None and (stopper.step(records[-1]["val_loss"], model)
                                    or epoch == recipe.epochs):
            # Stopped (best weights put back), or the last epoch: the best weights, recorded
            # again for this and every later epoch.
            stopper.restore(model)
            lr = optimizer.param_groups[0]["lr"]
            # Training ended at this epoch: every record from here on says so.
            records[-1:] = [{**hand_record(study, data, model, v, lam, seed, later, lr),
                             STOPPED_EPOCH: epoch}
                            for later in range(epoch, recipe.epochs + 1)]
            break
    return records, {n: t.detach().clone() for n, t in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------


def records_of(result, variant: str, strength: float | None, seed: int) -> list[dict]:
    rows = [r for r in result.records
            if (r["variant"], r["strength"], r["seed"]) == (variant, strength, seed)]
    return sorted(rows, key=lambda r: r["epoch"])


def assert_record_close(got: dict, want: dict, atol: float, context: str) -> None:
    assert set(got) == set(want), f"{context}: record keys {sorted(got)} != {sorted(want)}"
    for key, expected in want.items():
        value = got[key]
        if isinstance(expected, float) and value is not None:
            assert abs(value - expected) <= atol, (
                f"{context} epoch {want['epoch']}: {key} = {value!r}, reference {expected!r}")
        else:
            assert value == expected, (
                f"{context} epoch {want['epoch']}: {key} = {value!r}, reference {expected!r}")


def assert_member_matches(result, v: Variant, lam: float, seed: int, *,
                          atol: float = ATOL, epochs: slice = slice(None)) -> None:
    """Member (v, λ, seed) of ``result`` equals its plain reference run: every record (those in
    ``epochs``) and, when all epochs are compared, the final parameters."""
    context = f"{v.name} λ={lam} seed={seed}"
    want_records, want_params = reference_run(result.study, v, lam, seed)
    got_records = records_of(result, v.name, lam if v.penalty else None, seed)
    assert [r["epoch"] for r in got_records] == list(range(result.study.train.epochs + 1))
    for got, want in zip(got_records[epochs], want_records[epochs]):
        assert_record_close(got, want, atol, context)
    if epochs == slice(None):
        got_params = result.finals[(v.name, lam, seed)]  # parameters and buffers
        assert got_params.keys() == want_params.keys()
        for name, want in want_params.items():
            torch.testing.assert_close(got_params[name], want, rtol=0, atol=atol,
                                       msg=lambda m, name=name: f"{context} {name}: {m}")


def assert_all_match(result, *, atol: float = ATOL) -> None:
    """Every member equals its plain run; a dropout member only at epoch 0 (see "Dropout")."""
    for member in members_of(result.study):
        epochs = slice(0, 1) if member.variant.dropout else slice(None)
        assert_member_matches(result, member.variant, member.strength, member.seed, atol=atol,
                              epochs=epochs)


def variant(study: Study, name: str) -> Variant:
    return next(v for v in study.variants if v.name == name)


def final_record(result, name: str, strength: float | None = None, seed: int = 0) -> dict:
    return records_of(result, name, strength, seed)[-1]


# --------------------------------------------------------------------------------------------
# Vectorized equals sequential
# --------------------------------------------------------------------------------------------


LINEAR_SGD_VARIANTS = [
    {"name": "none"},
    {"name": "l2", "penalty": "l2", "strength": 0.5},
    {"name": "l1", "penalty": "l1", "strength": 0.3},
    {"name": "enet", "penalty": "elasticnet", "strength": 0.4, "l1_ratio": 0.25},
    {"name": "prox-l1", "penalty": "l1", "strength": 2.0, "apply": "prox"},
    {"name": "wd", "weight_decay": 0.5},
]


@pytest.fixture(scope="module")
def linear_run():
    """The linear SGD study, run once for several tests, with its progress calls."""
    calls: list[tuple[int, int]] = []
    result = run_study(linear_study(LINEAR_SGD_VARIANTS),
                       on_epoch=lambda done, total: calls.append((done, total)))
    return result, calls


def test_linear_sgd_members_equal_plain_runs(linear_run):
    result, _ = linear_run
    assert result.groups == [
        {"variants": ["enet", "l1", "l2", "none", "prox-l1"], "members": 10,
         "mode": "vectorized"},
        {"variants": ["wd"], "members": 2, "mode": "vectorized"},
    ]
    assert_all_match(result)
    # The comparison covered exact zeros: the prox member has some, the subgradient none.
    assert final_record(result, "prox-l1", 2.0)["sparsity"] > 0
    assert final_record(result, "l1", 0.3)["sparsity"] == 0
    # SGD's weight_decay on the weight is L2 on the weight by construction (d2l's wd-3 = l2-3),
    # though the two train in different groups.
    for name, want in result.finals[("l2", 0.5, 0)].items():
        torch.testing.assert_close(result.finals[("wd", 0.0, 0)][name], want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_mlp_adam_members_equal_plain_runs(optimizer):
    study = mlp_study([
        {"name": "none"},
        {"name": "l2", "penalty": "l2", "strength": 0.01},
        {"name": "group", "penalty": "group", "strength": 0.01},
        {"name": "blog", "penalty": "blog", "strength": 0.01},
        {"name": "prox-l1", "penalty": "l1", "strength": 0.05, "apply": "prox"},
        {"name": "wd-all", "weight_decay": 0.01, "params": "all"},
    ], optimizer=optimizer)
    result = run_study(study)
    assert [g["members"] for g in result.groups] == [10, 2]
    assert_all_match(result)
    # Adam's prox step is element-wise (lr/(√v̂+ε)): it still leaves exact zeros.
    assert final_record(result, "prox-l1", 0.05)["sparsity"] > 0


def test_sgd_momentum_members_equal_plain_runs():
    """With momentum μ, the prox step is lr/(1−μ) (DESIGN); gradient penalties go into the
    momentum buffer like the data gradient."""
    study = linear_study([
        {"name": "none"},
        {"name": "l2", "penalty": "l2", "strength": 0.5},
        {"name": "prox-l1", "penalty": "l1", "strength": 1.0, "apply": "prox"},
        {"name": "prox-l2", "penalty": "l2", "strength": 1.0, "apply": "prox"},
    ], momentum=0.9)
    result = run_study(study)
    assert_all_match(result)
    assert final_record(result, "prox-l1", 1.0)["sparsity"] > 0


@pytest.mark.parametrize("per", ["step", "epoch"])
def test_exponential_schedule_equals_closed_form(per):
    rate, min_lr = (0.9, 0.02) if per == "step" else (0.5, 0.01)
    study = linear_study([
        {"name": "none"},
        {"name": "l2", "penalty": "l2", "strength": 0.5},
    ], schedule={"kind": "exponential", "rate": rate, "min_lr": min_lr, "per": per})
    result = run_study(study)
    assert_all_match(result)
    lr0, ticks_per_epoch = 0.05, (5 if per == "step" else 1)  # 26 points in batches of 6
    lrs = [r["lr"] for r in records_of(result, "none", None, 0)]
    want = [lr0 * max(rate ** (epoch * ticks_per_epoch), min_lr / lr0) for epoch in range(5)]
    assert lrs == pytest.approx(want, rel=1e-12, abs=0)
    assert lrs[-1] == pytest.approx(min_lr, rel=1e-12)  # the floor was reached


@pytest.mark.parametrize("per", ["step", "epoch"])
def test_plateau_schedule_equals_torch_reduce_on_plateau(per):
    study = linear_study([
        {"name": "none"},
        {"name": "plateau", "schedule": {"kind": "plateau", "patience": 0, "factor": 0.5,
                                          "per": per}},
    ], lr=0.3, epochs=6)
    result = run_study(study)
    assert_all_match(result)
    lrs = [r["lr"] for r in records_of(result, "plateau", None, 0)]
    assert lrs[-1] < lrs[0]  # the plateau actually reduced the rate


def test_tuned_variant_trains_every_candidate():
    strengths = (0.01, 0.1, 1.0)
    study = linear_study([{"name": "none"},
                          {"name": "l2", "penalty": "l2", "strength": list(strengths)}])
    result = run_study(study)
    want = {("none", 0.0, s) for s in range(2)} | {("l2", lam, s) for lam in strengths
                                                    for s in range(2)}
    assert set(result.finals) == want
    assert len(result.records) == len(want) * (study.train.epochs + 1)
    assert result.groups == [{"variants": ["l2", "none"], "members": 8, "mode": "vectorized"}]
    assert_all_match(result)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: linear_study(LINEAR_SGD_VARIANTS, dtype="float32"), id="linear-sgd"),
    pytest.param(lambda: mlp_study([{"name": "none"},
                                    {"name": "l2", "penalty": "l2", "strength": 0.01},
                                    {"name": "wd-all", "weight_decay": 0.01, "params": "all"}],
                                   dtype="float32"), id="mlp-adam"),
])
def test_float32_members_equal_plain_float32_runs(make):
    result = run_study(make())
    assert result.data.x_train.dtype == torch.float32
    assert_all_match(result, atol=F32_ATOL)


def test_batchnorm_trains_vectorized_and_equals_plain_runs():
    """BatchNorm's running statistics are stacked per member: the group trains vectorized, and
    every member's parameters and running statistics (final state_dict) equal its plain run's.

    SGD, not Adam: a Linear bias right before BatchNorm has a zero gradient up to rounding
    noise (~1e-17), which Adam divides by √v ≈ that noise and turns into ~1e-11 moves per step
    whose sign depends on the kernel's rounding (fused vs for-loop), not on the engine."""
    study = mlp_study([
        {"name": "none"},
        {"name": "l2", "penalty": "l2", "strength": 0.01},
        {"name": "wd-all", "weight_decay": 0.01, "params": "all"},
    ], model={"norm": "batch"}, optimizer="sgd", lr=0.05, momentum=0.5)
    result = run_study(study)
    assert result.groups == [
        {"variants": ["l2", "none"], "members": 4, "mode": "vectorized"},
        {"variants": ["wd-all"], "members": 2, "mode": "vectorized"},
    ]
    assert_all_match(result)


def test_classification_records_accuracy():
    study = digits_study([{"name": "none"}, {"name": "l2", "penalty": "l2", "strength": 0.01}])
    result = run_study(study)
    assert_all_match(result)  # accuracies included
    last = final_record(result, "none")
    assert {"train_acc", "val_acc", "test_acc"} <= set(last)
    assert last["train_acc"] > 0.3  # trained past chance (0.1): accuracy is not trivially 0


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def test_epoch0_records_are_the_init_and_same_seed_means_same_init(linear_run):
    """Epoch 0 = before training: the losses of ``build_model(seed)``; every variant (in every
    group) starts member seed s from the same weights (common random numbers)."""
    result, _ = linear_run
    study = result.study
    data = make_data(study.data, study.data_seed, torch.float64)
    for seed in range(study.seeds):
        init = build_model(study.model, data.features, data.outputs, seed=seed,
                           dtype=torch.float64)
        firsts = [r for r in result.records if r["seed"] == seed and r["epoch"] == 0]
        assert len(firsts) == len(study.variants)
        for row in firsts:
            v = variant(study, row["variant"])
            want = hand_record(study, data, init, v, v.strengths[0], seed, 0, study.train.lr)
            assert_record_close(row, want, ATOL, f"{v.name} seed={seed}")
            for key in (*LOSS_KEYS, "weight_norm"):  # bit-identical across variants
                assert row[key] == firsts[0][key]
    zero = [r for r in result.records if r["epoch"] == 0]
    assert {r["train_loss"] for r in zero if r["seed"] == 0}.isdisjoint(
        {r["train_loss"] for r in zero if r["seed"] == 1})  # seeds do differ


def test_penalty_record_is_the_variants_own_penalty(linear_run):
    """Closed forms on the final weights: l2 λ/2·Σw², l1 λ·Σ|w|, weight decay wd/2·Σw² over
    the decayed tensors (the weight only here), none 0; weight_norm and sparsity over the weights
    (not the bias)."""
    result, _ = linear_run
    closed_forms = {
        "none": lambda w, b: 0.0,
        "l2": lambda w, b: 0.5 / 2 * (w ** 2).sum(),
        "l1": lambda w, b: 0.3 * w.abs().sum(),
        "enet": lambda w, b: 0.25 * 0.4 * w.abs().sum() + 0.75 * 0.4 / 2 * (w ** 2).sum(),
        "prox-l1": lambda w, b: 2.0 * w.abs().sum(),
        "wd": lambda w, b: 0.5 / 2 * (w ** 2).sum(),
    }
    for (name, lam, seed), params in result.finals.items():
        w, b = params["0.weight"], params["0.bias"]
        row = final_record(result, name, lam if name not in ("none", "wd") else None, seed)
        assert row["penalty"] == pytest.approx(float(closed_forms[name](w, b)), abs=ATOL)
        assert row["weight_norm"] == pytest.approx(float(w.norm()), abs=ATOL)
        assert row["sparsity"] == float((w == 0).sum()) / w.numel()
        assert row["diverged"] is False


# --------------------------------------------------------------------------------------------
# Grouping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "groups"), [
    pytest.param(lambda: linear_study([
        {"name": "none"}, {"name": "l2", "penalty": "l2", "strength": [0.1, 1.0]},
        {"name": "l1", "penalty": "l1", "strength": 0.1},
        {"name": "prox", "penalty": "l1", "strength": 0.1, "apply": "prox"},
        {"name": "prox-b", "penalty": "l1", "strength": 0.3, "apply": "prox"}], epochs=1),
        [(["l1", "l2", "none", "prox", "prox-b"], 12)], id="shared-recipe"),
    pytest.param(lambda: linear_study([
        {"name": "none"}, {"name": "wd-a", "weight_decay": 0.1},
        {"name": "wd-a-l2", "weight_decay": 0.1, "penalty": "l2", "strength": 0.1},
        {"name": "wd-b", "weight_decay": 0.2},
        {"name": "wd-a-all", "weight_decay": 0.1, "params": "all"}], epochs=1),
        [(["none"], 2), (["wd-a", "wd-a-l2"], 4), (["wd-b"], 2), (["wd-a-all"], 2)],
        id="weight-decay-splits"),
    pytest.param(lambda: mlp_study([
        {"name": "none"}, {"name": "drop-a", "dropout": 0.2},
        {"name": "drop-a-l2", "dropout": 0.2, "penalty": "l2", "strength": 0.1},
        {"name": "drop-b", "dropout": 0.5}], epochs=1, batch_size=0),
        [(["none"], 2), (["drop-a", "drop-a-l2"], 4), (["drop-b"], 2)], id="dropout-splits"),
    pytest.param(lambda: linear_study([
        {"name": "none"}, {"name": "l2", "penalty": "l2", "strength": 0.1},
        {"name": "plateau", "schedule": {"kind": "plateau"}}], epochs=1),
        [(["l2", "none"], 4), (["plateau"], 1), (["plateau"], 1)], id="plateau-per-member"),
    pytest.param(lambda: linear_study([
        {"name": "none"}, {"name": "prox-l1", "penalty": "l1", "strength": 0.1, "apply": "prox"},
        {"name": "prox-l2", "penalty": "l2", "strength": 0.1, "apply": "prox"}], epochs=1),
        [(["none", "prox-l1"], 4), (["prox-l2"], 2)], id="one-proximal-penalty-per-group"),
])
def test_groups(make, groups):
    result = run_study(make())
    assert [(g["variants"], g["members"]) for g in result.groups] == groups
    # A group of one trains as the plain module (stacking one member gains nothing).
    assert all(g["mode"] == ("vectorized" if g["members"] > 1 else "loop")
               for g in result.groups)
    assert_all_match(result)


def test_progress_counts_member_epochs(linear_run):
    result, calls = linear_run
    total = len(members_of(result.study)) * result.study.train.epochs
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})  # strictly increasing


# --------------------------------------------------------------------------------------------
# Dropout: same init and data order as the plain run, different masks
# --------------------------------------------------------------------------------------------
# What is identical: each member's init (seed s → build_model(seed=s)), the data and the batch
# order. What is not: dropout masks — drawn per member (vmap randomness="different") from the
# group's own RNG stream, not from the global stream a plain run would consume — so a dropout
# member matches its plain run at epoch 0 only; members without dropout match exactly.

DROPOUT_VARIANTS = [
    {"name": "none"},
    {"name": "drop-a", "dropout": 0.3},
    {"name": "drop-a-l2-0", "dropout": 0.3, "penalty": "l2", "strength": 0.0},
    {"name": "drop-b", "dropout": 0.5},
]


@pytest.fixture(scope="module")
def dropout_result():
    # Full batch: one batch shape, so one traced step per group (tracing dominates the cost).
    return run_study(mlp_study(DROPOUT_VARIANTS, batch_size=0, epochs=4))


def test_dropout_members_start_from_the_plain_init(dropout_result):
    for member in members_of(dropout_result.study):
        assert_member_matches(dropout_result, member.variant, member.strength, member.seed,
                              epochs=slice(0, 1))


def test_no_dropout_member_is_unaffected_by_dropout_groups(dropout_result):
    study = dropout_result.study
    for seed in range(study.seeds):
        assert_member_matches(dropout_result, variant(study, "none"), 0.0, seed)


def test_dropout_masks_differ_between_members(dropout_result):
    finals = dropout_result.finals

    def differ(a, b) -> bool:
        return any(not torch.equal(finals[a][n], finals[b][n]) for n in finals[a])

    for seed in range(dropout_result.study.seeds):
        assert differ(("drop-a", 0.0, seed), ("drop-b", 0.0, seed))  # other rate, other group
        # Same group, same init, same recipe (λ = 0): only the masks tell them apart.
        assert differ(("drop-a", 0.0, seed), ("drop-a-l2-0", 0.0, seed))
        assert differ(("drop-a", 0.0, seed), ("none", 0.0, seed))


def test_dropout_study_is_reproducible(dropout_result):
    again = run_study(dropout_result.study)
    assert again.records == dropout_result.records
    assert again.finals.keys() == dropout_result.finals.keys()
    for key, params in dropout_result.finals.items():
        for name, value in params.items():
            assert torch.equal(again.finals[key][name], value), (key, name)


# --------------------------------------------------------------------------------------------
# Divergence is recorded and isolated
# --------------------------------------------------------------------------------------------


def test_a_diverging_member_is_marked_and_leaves_the_others_untouched():
    """λ = 1e40 multiplies the weight by ≈ −lr·λ each SGD step: inf within a few steps, NaN
    after. It trains in the same group as the other members."""
    study = linear_study([{"name": "none"},
                          {"name": "l2", "penalty": "l2", "strength": [0.1, 1e40]}])
    result = run_study(study)
    assert len(result.groups) == 1
    for seed in range(study.seeds):
        rows = records_of(result, "l2", 1e40, seed)
        assert rows[0]["diverged"] is False
        assert rows[-1]["diverged"] is True
        assert all(rows[-1][key] is None for key in (*LOSS_KEYS, "penalty", "weight_norm"))
        # once diverged, it stays marked
        flags = [r["diverged"] for r in rows]
        assert flags == sorted(flags)
    healthy = [m for m in members_of(study) if m.strength != 1e40]
    for member in healthy:
        assert_member_matches(result, member.variant, member.strength, member.seed)
        assert not any(r["diverged"] for r in records_of(
            result, member.variant.name, member.strength if member.variant.penalty else None,
            member.seed))


def test_sparsity_is_the_exact_fraction():
    """67 weights (5·7 + 7·4 + 4·1) in the MLP: k/67 is not exact in float32."""
    study = mlp_study([{"name": "prox-l1", "penalty": "l1", "strength": 0.05, "apply": "prox"}],
                      seeds=1)
    result = run_study(study)
    weights = [p for p in result.finals[("prox-l1", 0.05, 0)].values() if p.ndim >= 2]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros > 0
    assert final_record(result, "prox-l1", 0.05)["sparsity"] == zeros / 67


class _CustomMLP(nn.Module):
    """A 5-7-1 MLP with its own forward: not a Sequential of known layers, so it trains under
    vmap (traced), not by the written-out forward."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(5, 7), nn.Linear(7, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(x)))


def _custom_mlp_study() -> Study:
    study = mlp_study([{"name": "none"}, {"name": "l2", "penalty": "l2", "strength": 0.1}])
    return dataclasses.replace(study, model=ModelSpec("python", factory=_CustomMLP))


def test_a_model_under_vmap_is_traced_and_equals_plain_runs():
    result = run_study(_custom_mlp_study())
    assert [g["mode"] for g in result.groups] == ["vectorized"]
    assert_all_match(result)


def test_a_model_that_cannot_be_traced_runs_the_transform_eagerly(monkeypatch):
    """If make_fx fails, the engine runs vmap(grad_and_value) eagerly: same plain-run results."""
    import torch.fx.experimental.proxy_tensor as proxy_tensor

    calls = []

    def failing_make_fx(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("cannot trace this model")

    monkeypatch.setattr(proxy_tensor, "make_fx", failing_make_fx)
    result = run_study(_custom_mlp_study())
    assert calls  # tracing was attempted, failed, and training went on
    assert_all_match(result)


def test_normal_init_draws_linear_weights_and_leaves_norm_layers_alone():
    """d2l's init: Linear weights ~ N(0, 1), Linear biases 0; BatchNorm keeps gain 1, shift 0."""
    spec = parse_study({"name": "n", "data": {"kind": "linear", "features": 64},
                        "model": {"kind": "mlp", "hidden": [200], "norm": "batch",
                                  "init": "normal"},
                        "variants": [{"name": "none"}]}).model
    model = build_model(spec, 64, 1, seed=3)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    assert torch.equal(norm.weight, torch.ones(200)) and torch.equal(norm.bias, torch.zeros(200))
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    first = linears[0].weight  # 12,800 draws: mean and std within 5 standard errors of N(0, 1)
    assert abs(first.mean().item()) < 5 / first.numel() ** 0.5
    assert abs(first.std().item() - 1) < 5 / (2 * first.numel()) ** 0.5
    assert torch.equal(build_model(spec, 64, 1, seed=3)[0].weight, first)  # the seed decides


# --------------------------------------------------------------------------------------------
# The user's own model (kind = "python"): vectorized, BatchNorm included
# --------------------------------------------------------------------------------------------


def small_cnn(channels: int = 4) -> nn.Module:
    """8×8 digits as one-channel images: conv → BatchNorm → ReLU → pool → linear head."""
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, channels, 3, padding=1),
                         nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(channels * 16, 10))


def factory_study(factory, variants: list[dict], *, seeds: int, **train: Any) -> Study:
    study = digits_study(variants)
    recipe = dataclasses.replace(study.train, **train)
    return dataclasses.replace(study, seeds=seeds, train=recipe,
                               model=ModelSpec("python", factory=factory))


def test_cnn_with_batchnorm_eight_members_vectorized_equal_plain_runs():
    """K = 8 members of a user's CNN with BatchNorm2d train as one stacked group and each equals
    its plain-PyTorch run to 1e-10 in float64: every record, the final parameters and the
    running statistics (mean, variance and batch count)."""
    study = factory_study(small_cnn, [{"name": "none"},
                                      {"name": "l2", "penalty": "l2", "strength": 0.01}],
                          seeds=4, optimizer="sgd", lr=0.1, momentum=0.5)
    result = run_study(study)
    assert result.groups == [{"variants": ["l2", "none"], "members": 8, "mode": "vectorized"}]
    assert_all_match(result)
    final = result.finals[("none", 0.0, 0)]
    assert {"2.running_mean", "2.running_var", "2.num_batches_tracked"} <= set(final)
    assert int(final["2.num_batches_tracked"]) == 2 * 3  # 2 epochs × 3 batches of 20


def test_the_factory_is_called_once_per_init_seed_under_that_seed():
    calls = []

    def factory() -> nn.Module:
        calls.append(torch.initial_seed())
        return small_cnn()

    study = factory_study(factory, [{"name": "none"},
                                    {"name": "l2", "penalty": "l2", "strength": 0.01}],
                          seeds=3, epochs=1)
    run_study(study)
    assert sorted(calls) == [0, 1, 2]


class _ItemGate(nn.Module):
    """A model vmap cannot run: ``.item()`` reads a value out of a (stacked) parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        scale = 1.0 if self.linear.weight.sum().item() > 0 else 2.0
        return self.linear(x) * scale


def test_a_model_vmap_cannot_run_trains_member_by_member_and_says_why_once(caplog):
    study = factory_study(_ItemGate, [{"name": "none"},
                                      {"name": "wd", "weight_decay": 0.1}], seeds=2)
    with caplog.at_level("WARNING", logger="regtorch.lab"):
        result = run_study(study)
    assert [g["mode"] for g in result.groups] == ["loop", "loop"]
    assert all("item" in g["reason"] for g in result.groups)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "vmap cannot run this model" in said[0]
    assert "\n" not in said[0]
    assert_all_match(result)


# --------------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------------


def test_early_stopping_in_a_group_equals_plain_runs_with_regtorch_early_stopping():
    """A stacked group whose members stop at different epochs (patience 1 and 3) or never:
    each equals K plain runs with ``regtorch.EarlyStopping`` — stopped members are frozen at
    their best epoch while the others train on, every record and final state included."""
    study = mlp_study([
        {"name": "none"},
        {"name": "es-1", "early_stopping": {"patience": 1}},
        {"name": "es-3", "early_stopping": {"patience": 3, "min_delta": 1e-3}},
        {"name": "l2-es", "penalty": "l2", "strength": 0.05, "early_stopping": {"patience": 2}},
    ], seeds=2, lr=0.05, epochs=12)
    result = run_study(study)
    assert [g["mode"] for g in result.groups] == ["vectorized"]
    assert_all_match(result)
    # The members did stop, at different epochs: their last records repeat the best state.
    stopped = set()
    for member in members_of(study):
        if member.variant.early_stopping is None:
            continue
        rows = records_of(result, member.variant.name,
                          member.strength if member.variant.penalty else None, member.seed)
        losses = [r["val_loss"] for r in rows]
        stopped.add(next(e for e in range(1, len(losses)) if losses[e:] == [losses[-1]] *
                         (len(losses) - e)))
    assert len(stopped) > 1 and min(stopped) < study.train.epochs
    # ... and the summary lists each seed's stopped epoch
    summary = summarize(result)
    for variant in study.variants:
        entry = summary["variants"][variant.name]
        if variant.early_stopping is None:
            assert "stopped_epochs" not in entry
            continue
        lam = entry["strength"]
        finals = sorted((r for r in result.records if r["variant"] == variant.name
                         and r["strength"] == lam and r["epoch"] == study.train.epochs),
                        key=lambda r: r["seed"])
        assert entry["stopped_epochs"] == [r[STOPPED_EPOCH] for r in finals]
    assert min(e for v in summary["variants"].values()
               for e in v.get("stopped_epochs", [])) < study.train.epochs

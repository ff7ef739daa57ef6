"""Training a study: every member (variant × λ × seed), grouped by recipe, a group in one pass.

**Members and groups.** A member is one variant at one strength λ with one init seed. Members
whose training recipe is the same — same optimizer settings and weight decay, same dropout rate,
same learning-rate schedule — form a *group*, whatever their penalties: the penalties of a group
become ``[K]``-shaped strengths on the members' stacked parameters (0 for a member without that
penalty), so ``none``, ``l2-3``, ``l1-1`` and ``prox-l1-1`` over five seeds train as one group of
20. A schedule that reacts to each member's own loss (``ReduceLROnPlateau``) gives each member a
group of its own.

**One vectorized pass per group.** The members' parameters are stacked with
:func:`torch.func.stack_module_state`; each member's loss and gradient come from
``vmap(grad_and_value(loss))`` over :func:`torch.func.functional_call` of one template model. That
is the gradient of the *sum* of the member losses — never the mean, which would rescale SGD's lr and
Adam's ε — and nothing couples the members (no global gradient clipping; a member that diverges
leaves the others untouched). The composed transform is traced once, for the full batch, into a
plain graph of batched ops (``make_fx``): the per-step cost is then that of the ops, not of the
transforms. One optimizer steps all members at once (torch's optimizers are element-wise); the
penalties are added with ``Regularizer.add_grad_`` and proximal steps run through
:class:`regtorch.Proximal`. Dropout draws a different mask per member (``randomness="different"``).
A model ``vmap`` cannot handle — one with buffers, such as BatchNorm's running statistics — trains
member by member in a plain loop with the same data, init and recipe; so does a group of one
member, which stacking would only slow down.

**Common random numbers.** Member seed ``s`` starts from the weights drawn from seed ``s`` in every
variant, and every member sees the batches in the same order: the order of epoch ``e`` is the
``e``-th permutation drawn from ``data_seed``. Differences between variants are then differences
of the regularization, not of the luck of the draw.

**Records.** After every epoch (and once before training, epoch 0), per member: the data loss on
the full train, validation and test sets in eval mode, the penalty R(w) of the member's own variant
(for optimizer weight decay, the L2 penalty ``wd/2·Σw²`` whose gradient it adds), accuracy for
classification, ‖w‖₂ and the fraction of exactly-zero entries of the ``WEIGHTS`` parameters, the
learning rate, and whether the member has diverged (a non-finite train loss or weight).

**Resuming.** Given :class:`regtorch.lab.store.Checkpoints`, a finished group is saved (records
and final parameters) and skipped when the study runs again; a group in progress saves its whole
training state after an epoch every ``checkpoints.interval`` seconds and continues from there:
the parameters, the optimizer and scheduler state, the random-number state that draws dropout
masks and the batch-order generator. The results equal an uninterrupted run's exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from regtorch import (
    ALL,
    L1,
    L2,
    WEIGHTS,
    ElasticNet,
    GroupLasso,
    Penalty,
    Proximal,
    Regularizer,
    exponential_decay,
    named,
)
from regtorch.lab.data import Datasets, make_data
from regtorch.lab.models import build_model
from regtorch.lab.store import Checkpoints
from regtorch.lab.study import Schedule, Study, StudyError, Variant

__all__ = ["Member", "StudyResult", "check_study", "group_members", "make_penalty", "members_of",
           "run_study"]

logger = logging.getLogger("regtorch.lab")

SPLITS = ("train", "val", "test")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Member:
    """One trained model: a variant at strength λ from init seed ``seed``."""

    variant: Variant
    strength: float
    seed: int

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.variant.name, self.strength, self.seed)


@dataclass
class StudyResult:
    """What :func:`run_study` returns: per-epoch records and each member's final parameters."""

    study: Study
    data: Datasets
    records: list[dict[str, Any]] = field(default_factory=list)
    finals: dict[tuple[str, float, int], dict[str, Tensor]] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    """What came from checkpoints, e.g. ``"group 1: finished"``, ``"group 2: from epoch 14"``."""


def members_of(study: Study) -> list[Member]:
    """Every member of the study: variants × candidate strengths × seeds ``0..seeds-1``."""
    return [Member(v, lam, seed) for v in study.variants for lam in v.strengths
            for seed in range(study.seeds)]


def group_members(study: Study, members: Sequence[Member]) -> list[list[Member]]:
    """Members sharing a training recipe, in first-seen order (see the module docstring).

    At most one proximal penalty acts in a group (``Proximal`` takes one regularizer): members
    with another proximal penalty form their own group.
    """
    groups: dict[tuple, list[Member]] = {}
    for member in members:
        groups.setdefault(_recipe_key(study, member), []).append(member)
    out: list[list[Member]] = []
    for group in groups.values():
        by_prox: dict[tuple | None, list[Member]] = {}
        for member in group:
            by_prox.setdefault(_prox_key(member.variant), []).append(member)
        proxes = [k for k in by_prox if k is not None]
        if len(proxes) <= 1:
            out.append(group)
            continue
        plain = by_prox.pop(None, [])
        first, *rest = proxes
        out.append(plain + by_prox[first])
        out.extend(by_prox[k] for k in rest)
    return out


def _recipe_key(study: Study, member: Member) -> tuple:
    v = member.variant
    schedule = study.schedule_of(v)
    key = (v.weight_decay, v.params if v.weight_decay else None, v.dropout, schedule)
    if schedule.reacts_to_loss:
        key += (member.key,)
    return key


def _penalty_key(v: Variant) -> tuple | None:
    if v.penalty is None:
        return None
    return (v.penalty, v.apply, v.params, v.groups if v.penalty == "group" else None)


def _prox_key(v: Variant) -> tuple | None:
    key = _penalty_key(v)
    return key if key is not None and v.apply == "prox" else None


def _selector(params: str):
    if params == "weights":
        return WEIGHTS
    if params == "all":
        return ALL
    return named(params)


def make_penalty(v: Variant, lam: float | Tensor, l1_ratio: float | Tensor | None = None
                 ) -> Penalty:
    """The regtorch penalty of variant ``v`` at strength ``lam`` (a float or a ``[K]`` tensor)."""
    if v.penalty == "l2":
        return L2(lam)
    if v.penalty == "l1":
        return L1(lam)
    if v.penalty == "elasticnet":
        rho = v.l1_ratio if l1_ratio is None else l1_ratio
        return ElasticNet(rho * lam, (1 - rho) * lam)
    if v.penalty == "group":
        return GroupLasso(lam, groups=v.groups)
    if v.penalty == "blog":
        return GroupLasso(lam, groups="tensor", scale="none")
    raise StudyError(f"variant {v.name!r}: unknown penalty {v.penalty!r}")


def check_study(study: Study) -> None:
    """Raise now what would stop :func:`run_study` when it builds a group: a ``params`` that
    selects no parameter of the model, for a penalty or for weight decay.

    Raises:
        StudyError: naming the variant and its ``params``.
    """
    data = make_data(study.data, study.data_seed, _DTYPES[study.train.dtype])
    template = build_model(study.model, inputs=data.features, outputs=data.outputs)
    for v in study.variants:
        if v.penalty is not None:
            try:
                Regularizer(template, {_selector(v.params): make_penalty(v, 0.0)})
            except ValueError as error:
                raise StudyError(f"variant {v.name!r}: params = {v.params!r}: {error}") from None
        if v.weight_decay:
            _names(template, _selector(v.params), what=v)


# -- running -----------------------------------------------------------------------------------
def run_study(study: Study, *, on_epoch: Callable[[int, int], None] | None = None,
              checkpoints: Checkpoints | None = None) -> StudyResult:
    """Train every member of ``study`` and record its metrics.

    Args:
        study: the study (seeds and epochs as given in it; see ``Study.with_overrides``).
        on_epoch: called after every group epoch with (member-epochs done, member-epochs in all).
        checkpoints: where finished groups and the state of the group in progress are saved,
            and found again when the same study runs a second time (see the module docstring).
            The caller makes sure they belong to this study
            (:func:`regtorch.lab.store.prepare_directory`).

    Returns:
        the records (one dict per member per epoch, epoch 0 = before training), each member's
        final parameters and a description of the groups.
    """
    dtype = _DTYPES[study.train.dtype]
    data = make_data(study.data, study.data_seed, dtype)
    result = StudyResult(study, data)
    groups = group_members(study, members_of(study))
    total = sum(len(g) for g in groups) * study.train.epochs
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        if on_epoch is not None:
            on_epoch(done, total)

    traces: dict[tuple, Callable] = {}  # traced steps, shared by groups of the same shapes
    for index, members in enumerate(groups):
        name = f"group-{index}"
        finished = checkpoints.load(name) if checkpoints is not None else None
        if finished is not None:
            result.records.extend(finished["records"])
            result.finals.update({(v, lam, seed): tensors
                                  for v, lam, seed, tensors in finished["finals"]})
            result.groups.append(finished["group"])
            result.resumed.append(f"group {index + 1}: finished")
            tick(len(members) * study.train.epochs)
            continue
        trainer = _GroupTrainer(study, data, members, dtype, seed=study.data_seed * 7919 + index,
                                traces=traces)
        group = {"variants": sorted({m.variant.name for m in members}), "members": len(members),
                 "mode": "vectorized" if trainer.vectorized else "loop"}
        records: list[dict[str, Any]] = []
        partial = None if checkpoints is None else (checkpoints, f"{name}-partial")
        first_epoch = trainer.run(records, tick, partial)
        if first_epoch > 1:
            result.resumed.append(f"group {index + 1}: from epoch {first_epoch}")
        finals = trainer.finals()
        if checkpoints is not None:
            checkpoints.save(name, {"records": records, "group": group, "finals": [
                [*key, tensors] for key, tensors in finals.items()]})
            checkpoints.remove(f"{name}-partial")
        result.records.extend(records)
        result.finals.update(finals)
        result.groups.append(group)
    return result


class _GroupTrainer:
    """Members sharing a recipe, trained together (stacked) or one by one (loop)."""

    def __init__(self, study: Study, data: Datasets, members: list[Member], dtype: torch.dtype,
                 seed: int, traces: dict[tuple, Callable]) -> None:
        self.study, self.data, self.members, self.seed = study, data, members, seed
        first = members[0].variant
        self.schedule = study.schedule_of(first)
        self.dropout = first.dropout
        build = dict(inputs=data.features, outputs=data.outputs, dropout=first.dropout,
                     dtype=dtype)
        self.template = build_model(study.model, **build)
        models = [build_model(study.model, seed=m.seed, **build) for m in members]
        # vmap cannot carry buffers (BatchNorm's running statistics); a lone member gains nothing
        # from stacking and trains faster as the plain module.
        self.vectorized = next(self.template.buffers(), None) is None and len(members) > 1
        self.loss = _criterion(study.train.loss)
        self.weight_names = _names(self.template, WEIGHTS)
        inputs = [data.split(split)[0] for split in SPLITS]
        self.x_all = torch.cat(inputs)
        self.split_sizes = [x.shape[0] for x in inputs]
        if self.vectorized:
            stacked, _ = stack_module_state(models)
            self.step_fn = _StackedStep(self.template, list(stacked), self.loss,
                                        random=bool(self.dropout), traces=traces)
            self.step_fn.bind(list(stacked.values()))
            self.units = [_Unit(self, members, stacked, stacked_members=True)]
        else:
            self.units = [_Unit(self, [m], dict(model.named_parameters()), module=model)
                          for m, model in zip(members, models)]

    # -- the loop over epochs ----------------------------------------------------------------
    def run(self, records: list[dict[str, Any]], tick: Callable[[int], None],
            partial: tuple[Checkpoints, str] | None = None) -> int:
        """Train every epoch, appending the records; return the first epoch trained here (> 1
        when the state saved as ``partial`` was resumed)."""
        recipe = self.study.train
        x_train, y_train = self.data.split("train")
        n = x_train.shape[0]
        batch = recipe.batch_size or n
        order = torch.Generator().manual_seed(self.study.data_seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # dropout masks
            state = partial[0].load(partial[1]) if partial is not None else None
            if state is None:
                first_epoch = 1
                self._record(records, 0)
            else:
                first_epoch = self._restore(state, records, order)
                tick(len(self.members) * (first_epoch - 1))
            saved = time.monotonic()
            for epoch in range(first_epoch, recipe.epochs + 1):
                perm = torch.randperm(n, generator=order)
                for start in range(0, n, batch):
                    index = perm[start:start + batch]
                    x, y = x_train[index], y_train[index]
                    for unit in self.units:
                        unit.train_step(x, y)
                for unit in self.units:
                    unit.end_epoch()
                self._record(records, epoch)
                tick(len(self.members))
                if partial is not None and epoch < recipe.epochs \
                        and time.monotonic() - saved >= partial[0].interval:
                    partial[0].save(partial[1], self._state(records, epoch, order))
                    saved = time.monotonic()
        return first_epoch

    def _state(self, records: list[dict[str, Any]], epoch: int, order: torch.Generator
               ) -> dict[str, Any]:
        """Everything the epochs after ``epoch`` depend on (see the module docstring)."""
        return {"epoch": epoch, "records": records, "order": order.get_state(),
                "rng": torch.get_rng_state(), "units": [unit.state() for unit in self.units]}

    def _restore(self, state: dict[str, Any], records: list[dict[str, Any]],
                 order: torch.Generator) -> int:
        records.extend(state["records"])
        order.set_state(state["order"])
        torch.set_rng_state(state["rng"])
        for unit, saved in zip(self.units, state["units"], strict=True):
            unit.load_state(saved)
        return state["epoch"] + 1

    def _record(self, records: list[dict[str, Any]], epoch: int) -> None:
        metrics: dict[str, list] = {}
        # One forward over the three splits at once: fewer, larger matrix products.
        outputs = torch.cat([unit.outputs(self.x_all) for unit in self.units])  # [K, n, out]
        for split, out in zip(SPLITS, outputs.split(self.split_sizes, dim=1)):
            y = self.data.split(split)[1]
            metrics[f"{split}_loss"] = _member_losses(self.study.train.loss, out, y).tolist()
            if self.study.classification:
                metrics[f"{split}_acc"] = (out.argmax(-1) == y).double().mean(1).tolist()
        norms, zeros, penalties, lrs = [], [], [], []
        for unit in self.units:
            size = len(unit.members)
            weights = [unit.tensors[name].detach().reshape(size, -1) for name in
                       self.weight_names]
            squares = sum(w.double().square().sum(1) for w in weights)
            count = sum(w.shape[1] for w in weights)
            norms.extend(squares.sqrt().tolist())
            zeros.extend((sum((w == 0).sum(1) for w in weights).double() / count).tolist())
            penalties.extend(unit.penalty_of(k) for k in range(size))
            lrs.extend([unit.optimizer.param_groups[0]["lr"]] * size)
        for k, member in enumerate(self.members):
            row: dict[str, Any] = {
                "variant": member.variant.name,
                "strength": member.strength if member.variant.penalty else None,
                "seed": member.seed,
                "epoch": epoch,
            }
            for key, values in metrics.items():
                row[key] = _finite(values[k])
            row.update(penalty=_finite(penalties[k]), weight_norm=_finite(norms[k]),
                       sparsity=zeros[k], lr=lrs[k])
            row["diverged"] = row["train_loss"] is None or row["weight_norm"] is None
            records.append(row)

    def finals(self) -> dict[tuple[str, float, int], dict[str, Tensor]]:
        out = {}
        for unit in self.units:
            for k, member in enumerate(unit.members):
                out[member.key] = {name: (t[k] if unit.stacked else t).detach().clone()
                                   for name, t in unit.tensors.items()}
        return out


class _Unit:
    """Tensors trained by one optimizer: all members stacked, or one member's module."""

    def __init__(self, group: _GroupTrainer, members: list[Member], tensors: dict[str, Tensor],
                 *, stacked_members: bool = False, module: nn.Module | None = None) -> None:
        self.group, self.members, self.tensors = group, members, tensors
        self.stacked, self.module = stacked_members, module
        study = group.study
        first = members[0].variant
        template = group.template

        # Penalties: one regularizer per (penalty, apply, params) in the group; [K] strengths.
        self.grad_regs: list[Regularizer] = []
        prox_reg: Regularizer | None = None
        self.own_penalties: list[list[tuple[Penalty, list[str]]]] = [[] for _ in members]
        for key in dict.fromkeys(_penalty_key(m.variant) for m in members):
            if key is None:
                continue
            _, apply, params, _ = key
            owners = [m for m in members if _penalty_key(m.variant) == key]
            lam = self._strength([m.strength if m in owners else 0.0 for m in members])
            rho = self._strength([m.variant.l1_ratio for m in members])
            reg = self._regularizer(owners[0].variant, {_selector(params):
                                    make_penalty(owners[0].variant, lam, rho)})
            names = [name for name, _ in reg.named_parameters()]
            for k, m in enumerate(members):
                if m in owners:
                    self.own_penalties[k].append((make_penalty(m.variant, m.strength), names))
            if apply == "prox":
                prox_reg = reg
            else:
                self.grad_regs.append(reg)

        # The optimizer, with torch's weight_decay on the selected tensors.
        wd_names: list[str] = []
        if first.weight_decay:
            wd_names = _names(template, _selector(first.params), what=first)
            for k in range(len(members)):
                self.own_penalties[k].append((L2(first.weight_decay), wd_names))
        decayed = [tensors[n] for n in wd_names]
        rest = [t for n, t in tensors.items() if n not in wd_names]
        param_groups = [{"params": ps, "weight_decay": wd} for ps, wd in
                        ((decayed, first.weight_decay), (rest, 0.0)) if ps]
        optimizer = _optimizer(study.train, param_groups)
        self.optimizer = optimizer if prox_reg is None else Proximal(optimizer, prox_reg)

        schedule: Schedule = group.schedule
        self.per_step = schedule.per == "step"
        self.scheduler: Any = None
        if schedule.kind == "exponential":
            self.scheduler = exponential_decay(self.optimizer, schedule.rate, schedule.min_lr)
        elif schedule.kind == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, patience=schedule.patience, factor=schedule.factor)

    def state(self) -> dict[str, Any]:
        """The parameters (and a loop member's buffers), optimizer and scheduler state."""
        tensors = (self.module.state_dict() if self.module is not None
                   else {name: t.detach() for name, t in self.tensors.items()})
        return {"tensors": tensors, "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    @torch.no_grad()
    def load_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state` returned, in place (the optimizer keeps its tensors)."""
        if self.module is not None:
            self.module.load_state_dict(state["tensors"])
        else:
            for name, tensor in self.tensors.items():
                tensor.copy_(state["tensors"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def _strength(self, values: list[float]) -> float | Tensor:
        if self.stacked:
            return torch.tensor(values, dtype=torch.float64)
        return float(values[0])

    def _regularizer(self, variant: Variant, rules: dict) -> Regularizer:
        template = self.group.template
        try:
            return Regularizer(template, rules, parameters=self.tensors)
        except ValueError as error:
            raise StudyError(f"variant {variant.name!r}: params = {variant.params!r}: "
                             f"{error}") from None

    # -- training ----------------------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor) -> None:
        if self.stacked:
            grads, losses = self.group.step_fn(x, y)
            for tensor, grad in zip(self.tensors.values(), grads):
                tensor.grad = grad
        else:
            self.optimizer.zero_grad(set_to_none=True)
            losses = self.group.loss(self.module(x), y)
            losses.backward()
        for reg in self.grad_regs:
            reg.add_grad_()
        self.optimizer.step()
        if self.scheduler is not None and self.per_step:
            self._schedule_step(losses)

    def end_epoch(self) -> None:
        if self.scheduler is not None and not self.per_step:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                x, y = self.group.data.split("train")
                self.scheduler.step(float(self.group.loss(self.outputs(x)[0], y)))
            else:
                self.scheduler.step()

    def _schedule_step(self, losses: Tensor) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(float(losses.detach().reshape(-1)[0]))  # one member per group
        else:
            self.scheduler.step()

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def outputs(self, x: Tensor) -> Tensor:
        """Eval-mode outputs of every member, ``[members, n, outputs]``."""
        if self.stacked:
            return self.group.step_fn.evaluate(x)
        self.module.eval()
        try:
            return self.module(x).unsqueeze(0)
        finally:
            self.module.train()

    @torch.no_grad()
    def penalty_of(self, k: int) -> float:
        total = 0.0
        for penalty, names in self.own_penalties[k]:
            own = [self.tensors[n][k] if self.stacked else self.tensors[n] for n in names]
            total += float(penalty.value(own))
        return total


class _StackedStep:
    """Per-member losses and gradients of stacked parameters: ``vmap(grad_and_value(loss))``
    over ``functional_call``, traced for the full batch shape into a graph of batched ops (an
    epoch's last, smaller batch runs the same transform eagerly)."""

    def __init__(self, template: nn.Module, names: list[str], loss: Callable,
                 *, random: bool, traces: dict[tuple, Callable]) -> None:
        self.template = template
        # A trace holds only batched ops on its inputs: it serves any group of the same model
        # structure (the template's repr), loss, stacked shapes and batch shape.
        self.signature: tuple = (repr(template), loss, random)
        self.params: tuple[Tensor, ...] = ()

        def member_loss(params: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
            return loss(functional_call(template, dict(zip(names, params)), (x,)), y)

        def member_output(params: tuple[Tensor, ...], x: Tensor) -> Tensor:
            return functional_call(template, dict(zip(names, params)), (x,))

        randomness = "different" if random else "error"
        self.grad = vmap(grad_and_value(member_loss), in_dims=(0, None, None),
                         randomness=randomness)
        self.forward = vmap(member_output, in_dims=(0, None), randomness="different")
        self.traced = traces
        self.batch_shape: torch.Size | None = None  # the first (full) batch's shape: traced
        self.step: Callable = self.grad

    def bind(self, tensors: Sequence[Tensor]) -> None:
        # Detached views share storage with the optimizer's tensors: in-place steps show.
        self.params = tuple(t.detach() for t in tensors)
        self.signature += (tuple((p.shape, p.dtype) for p in self.params),)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        if self.batch_shape is None:  # the first batch: trace it, or take another group's trace
            key = (*self.signature, x.shape, y.shape, x.dtype, y.dtype)
            if key not in self.traced:
                self.traced[key] = self._trace(x, y)
            self.step, self.batch_shape = self.traced[key], x.shape
        if x.shape != self.batch_shape:
            # An epoch's last, smaller batch: once per epoch, cheaper eagerly than a trace
            # (~0.2 s). Same ops, same results.
            return self.grad(self.params, x, y)
        return self.step(self.params, x, y)

    def _trace(self, x: Tensor, y: Tensor) -> Callable:
        from torch.fx.experimental.proxy_tensor import make_fx

        try:
            with torch.random.fork_rng(devices=[]):  # tracing must not consume dropout draws
                return make_fx(self.grad)(self.params, x, y)
        except Exception as error:  # any tracing failure: run the same transform eagerly
            logger.debug("regtorch.lab: tracing failed (%s); running vmap eagerly", error)
            return self.grad

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> Tensor:
        self.template.eval()
        try:
            return self.forward(self.params, x)
        finally:
            self.template.train()


def _optimizer(recipe, param_groups: list[dict]) -> torch.optim.Optimizer:
    """torch's optimizer for the recipe, with its fused CPU kernel where torch has one (the same
    update as the default implementation, in one pass), else the foreach one."""
    kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    options: dict[str, Any] = {"lr": recipe.lr}
    if recipe.optimizer == "sgd":
        options["momentum"] = recipe.momentum
    if recipe.optimizer == "adamw":
        options["weight_decay"] = 0.0  # only what the variant asks for (AdamW's default is 0.01)
    try:
        return kind[recipe.optimizer](param_groups, fused=True, **options)
    except (RuntimeError, ValueError, TypeError):
        return kind[recipe.optimizer](param_groups, foreach=True, **options)


def _criterion(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "mse":
        return F.mse_loss
    if name == "half-mse":
        return _half_mse
    return F.cross_entropy


def _member_losses(name: str, out: Tensor, y: Tensor) -> Tensor:
    """The loss of each member, ``[K]``, from stacked outputs ``[K, n, outputs]`` (the same
    reductions as :func:`_criterion`'s, without a vmap per call)."""
    if name == "cross-entropy":
        members, n = out.shape[:2]
        return F.cross_entropy(out.flatten(0, 1), y.repeat(members), reduction="none"
                               ).view(members, n).mean(1)
    squares = (out - y).square().flatten(1).mean(1)
    return 0.5 * squares if name == "half-mse" else squares


def _half_mse(out: Tensor, y: Tensor) -> Tensor:
    """d2l's squared loss ½(ŷ − y)², averaged over the batch."""
    return 0.5 * F.mse_loss(out, y)


def _names(template: nn.Module, selector, what: Variant | None = None) -> list[str]:
    """Names of the template's parameters the selector picks (through regtorch's selection)."""
    try:
        reg = Regularizer(template, {selector: L2(0.0)})
    except ValueError as error:
        if what is None:
            return []
        raise StudyError(f"variant {what.name!r}: params = {what.params!r}: {error}") from None
    return [name for name, _ in reg.named_parameters()]


def _finite(value: float) -> float | None:
    """JSON has no NaN/inf: a non-finite value is recorded as null (and marks divergence)."""
    return value if math.isfinite(value) else None

"""From the study vocabulary to torch and regtorch objects: penalties, parameter selections,
optimizers, schedules, losses.

Every object the engine trains with is made here, from the names a study file uses, so the
meaning of ``penalty = "l2"`` or ``optimizer = "adam"`` is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regtorch import (
    ALL,
    L1,
    L2,
    WEIGHTS,
    ChannelLasso,
    ElasticNet,
    GroupLasso,
    Penalty,
    Regularizer,
    channel_groups,
    exponential_decay,
    named,
    select,
)
from regtorch.lab.study.data import make_data
from regtorch.lab.study.models import build_model
from regtorch.lab.study.spec import Recipe, Schedule, Study, StudyError, Variant, shown

__all__ = ["CHANNEL_EXAMPLES", "DTYPES", "channel_penalty", "check_study", "criterion",
           "make_optimizer", "make_penalty", "make_scheduler", "member_losses",
           "parameter_names", "selector", "stacked_loss", "trace_channels"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
"""``train.dtype`` → the torch dtype of the data and the models."""


def selector(params: str):
    """The regtorch selector of a variant's ``params``: ``"weights"``, ``"all"`` or a glob."""
    if params == "weights":
        return WEIGHTS
    if params == "all":
        return ALL
    return named(params)


CHANNEL_EXAMPLES = 16
"""Training rows the channel groups are traced with (``penalty = "channels"``): the trace only
needs shapes, and compaction's check runs on the test split."""


def trace_channels(template: nn.Module, examples: Tensor, where: str = "penalty 'channels'"):
    """:func:`regtorch.channel_groups` of the template on ``examples``, or one line saying why
    the model has no channel to penalize.

    Raises:
        StudyError: torch.fx cannot trace the model (its first line), or the trace finds no
            removable channel (the first reason, naming the node).
    """
    try:
        groups = channel_groups(template, examples)
    except ValueError as error:
        raise StudyError(f"{where}: {error}") from None
    if not groups.groups:
        reason = "; ".join(f"{what}: {why}" for what, why in groups.left_out[:1])
        raise StudyError(f"{where}: channel_groups finds no removable channel in "
                         f"{type(template).__name__}" + (f" ({reason})" if reason else ""))
    return groups


def channel_penalty(groups, lam: float | Tensor,
                    parameters: Mapping[str, Tensor] | None = None) -> tuple[Any, Penalty]:
    """The rule ``(selector, ChannelLasso)`` of ``penalty = "channels"`` over ``groups``, on
    ``parameters`` (the unit's tensors by name: stacked ``[K, ...]`` with a ``[K]`` ``lam``)."""
    return groups.selector, ChannelLasso(lam, groups, parameters=parameters)


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
    raise StudyError(f"variant {shown(v.name)}: unknown penalty {shown(v.penalty)}")


def check_study(study: Study) -> None:
    """Raise now what would stop training when a group is built: data that cannot be loaded,
    a loss that does not fit the data's task, a model that does not fit its inputs, a
    ``params`` that selects no parameter of the model, for a penalty or for weight decay.

    Raises:
        StudyError: naming the key (the variant and its ``params``) and the value.
    """
    where = study.model.where  # "study.toml: model" from a file, "model" for a preset
    source = where[:-len("model")] if where.endswith("model") else ""  # "study.toml: " or ""
    data = make_data(study.data, study.data_seed, DTYPES[study.train.dtype])
    if data.classification != study.classification:
        task = "classification" if data.classification else "regression"
        raise StudyError(f"{source}train.loss: the data is {task} ({'; '.join(data.notes[:1])}"
                         f"): {shown(study.train.loss)} does not apply (use "
                         f"{shown('cross-entropy' if data.classification else 'mse')})")
    template = build_model(study.model, inputs=data.input_shape, outputs=data.outputs)
    for v in study.variants:
        if v.penalty == "channels":
            examples = data.split("train")[0][:CHANNEL_EXAMPLES]
            trace_channels(template.to(examples.dtype), examples,
                           f"{source}variant {shown(v.name)}: penalty 'channels'")
        elif v.penalty is not None:
            parameter_names(template, selector(v.params), what=v, source=source)
            try:
                Regularizer(template, {selector(v.params): make_penalty(v, 0.0)})
            except ValueError as error:
                raise StudyError(f"{source}variant {shown(v.name)}: params = "
                                 f"{shown(v.params)}: {error}") from None
        if v.weight_decay:
            parameter_names(template, selector(v.params), what=v, source=source)


def parameter_names(template: nn.Module, chosen, what: Variant | None = None,
                    source: str = "") -> list[str]:
    """Names of the template's parameters the selector ``chosen`` picks
    (:func:`regtorch.select`).

    Raises:
        StudyError: with ``what``, when the selector picks nothing (naming the variant, after
            ``source``, the study file's ``"study.toml: "``); without, nothing is raised and
            the list is empty.
    """
    names = [name for name, _ in select(template, chosen)]
    if not names and what is not None:
        have = [name for name, p in template.named_parameters() if p.requires_grad]
        listed = ", ".join(shown(name) for name in have[:3]) + (
            f", … ({len(have)} in all)" if len(have) > 3 else "")
        raise StudyError(f"{source}variant {shown(what.name)}: params = {shown(what.params)} "
                         f"selects no trainable parameter of the model (it has {listed})")
    return names


def make_optimizer(recipe: Recipe, param_groups: list[dict]) -> torch.optim.Optimizer:
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


def make_scheduler(schedule: Schedule, optimizer: Any) -> Any:
    """The learning-rate scheduler of ``schedule`` on ``optimizer``; None for a constant lr."""
    if schedule.kind == "exponential":
        return exponential_decay(optimizer, schedule.rate, schedule.min_lr)
    if schedule.kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, patience=schedule.patience, factor=schedule.factor)
    return None


def criterion(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss ``train.loss`` names, averaged over the batch."""
    if name == "mse":
        return F.mse_loss
    if name == "half-mse":
        return _half_mse
    return F.cross_entropy


def member_losses(name: str, out: Tensor, y: Tensor) -> Tensor:
    """The loss of each member, ``[K]``, from stacked outputs ``[K, n, outputs]`` (the same
    reductions as :func:`criterion`'s, without a vmap per call)."""
    if name == "cross-entropy":
        members, n = out.shape[:2]
        return F.cross_entropy(out.flatten(0, 1), y.repeat(members), reduction="none"
                               ).view(members, n).mean(1)
    squares = (out - y).square().flatten(1).mean(1)
    return 0.5 * squares if name == "half-mse" else squares


def stacked_loss(loss: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss(outputs, targets)`` of every member, ``[K]``, from stacked outputs ``[K, n, ...]``:
    :func:`member_losses` for the losses :func:`criterion` makes, else ``vmap(loss)``."""
    name = _CRITERIA.get(loss)
    if name is not None:
        return lambda out, y: member_losses(name, out, y)
    return torch.vmap(loss, in_dims=(0, None))


def _half_mse(out: Tensor, y: Tensor) -> Tensor:
    """d2l's squared loss ½(ŷ − y)², averaged over the batch."""
    return 0.5 * F.mse_loss(out, y)


_CRITERIA: dict[Callable, str] = {F.mse_loss: "mse", _half_mse: "half-mse",
                                  F.cross_entropy: "cross-entropy"}

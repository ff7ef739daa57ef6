"""Units: tensors trained by one optimizer — every member of a group stacked, or one member's
own module. Two types with one interface (:class:`Unit`), so the engine never asks which.

A unit holds its members' parameters by name (:attr:`Unit.tensors`; ``[K, ...]`` stacked, or the
module's own), the penalties of the group as regularizers with per-member strengths (0 for a member
without that penalty), the optimizer (with torch's ``weight_decay`` on the selected tensors, and
:class:`regtorch.Proximal` when a proximal penalty acts) and the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from regtorch import L2, Penalty, Proximal, Regularizer, param_groups
from regtorch.lab.study.spec import Schedule, Study, StudyError, Variant
from regtorch.lab.train.build import (
    CHANNEL_EXAMPLES,
    channel_penalty,
    make_optimizer,
    make_penalty,
    make_scheduler,
    parameter_names,
    selector,
    trace_channels,
)
from regtorch.lab.train.plan import Member, penalty_key
from regtorch.lab.train.step import StackedStep

__all__ = ["SingleUnit", "StackedUnit", "Unit"]

Loss = Callable[[Tensor, Tensor], Tensor]


class Unit:
    """What the engine trains: :meth:`train_step`, :meth:`end_epoch`, :meth:`outputs`, and the
    members' tensors :meth:`member_view` for the records.

    Args:
        study: the study (its recipe).
        template: the model structure every member shares.
        members: the unit's members, in order.
        tensors: their parameters by name.
        schedule: the group's learning-rate schedule.
        loss: the training loss.
        train_data: the training split (a plateau schedule per epoch reads its loss).
    """

    def __init__(self, study: Study, template: nn.Module, members: list[Member],
                 tensors: dict[str, Tensor], *, schedule: Schedule, loss: Loss,
                 train_data: tuple[Tensor, Tensor]) -> None:
        self.members, self.tensors, self.template = members, tensors, template
        self.loss, self.train_data = loss, train_data
        first = members[0].variant

        # Penalties: one regularizer per (penalty, apply, params) in the group; [K] strengths.
        self.grad_regs: list[Regularizer] = []
        prox_reg: Regularizer | None = None
        self.own_penalties: list[list[tuple[Penalty, list[str]]]] = [[] for _ in members]
        for key in dict.fromkeys(penalty_key(m.variant) for m in members):
            if key is None:
                continue
            _, apply, params, _ = key
            owners = [m for m in members if penalty_key(m.variant) == key]
            lam = self.strength([m.strength if m in owners else 0.0 for m in members])
            rho = self.strength([m.variant.l1_ratio for m in members])
            if key[0] == "channels":  # groups traced from the model, on the unit's tensors
                groups = trace_channels(template, train_data[0][:CHANNEL_EXAMPLES])
                reg = self._regularizer(owners[0].variant,
                                        dict([channel_penalty(groups, lam, tensors)]))
            else:
                groups = None
                reg = self._regularizer(owners[0].variant, {selector(params):
                                        make_penalty(owners[0].variant, lam, rho)})
            names = [name for name, _ in reg.named_parameters()]
            for k, m in enumerate(members):
                if m in owners:
                    own = (make_penalty(m.variant, m.strength) if groups is None
                           else _MemberChannels(groups, m.strength, names))
                    self.own_penalties[k].append((own, names))
            if apply == "prox":
                prox_reg = reg
            else:
                self.grad_regs.append(reg)

        # The optimizer, with torch's weight_decay on the selected tensors.
        groups: list[dict[str, Any]] = [{"params": list(tensors.values()), "weight_decay": 0.0}]
        if first.weight_decay:
            wd_names = parameter_names(template, selector(first.params), what=first)
            for k in range(len(members)):
                self.own_penalties[k].append((L2(first.weight_decay), wd_names))
            groups = param_groups(template, first.weight_decay, selector(first.params),
                                  parameters=tensors)
        optimizer = make_optimizer(study.train, groups)
        self.optimizer = optimizer if prox_reg is None else Proximal(optimizer, prox_reg)
        self.per_step = schedule.per == "step"
        self.scheduler = make_scheduler(schedule, self.optimizer)
        self.frozen: dict[int, dict[str, Tensor]] = {}
        """Members stopped early (index → the state they are held at)."""

    # -- what the two kinds do differently ---------------------------------------------------
    def strength(self, values: list[float]) -> float | Tensor:
        """Per-member strengths as the unit's penalties take them."""
        raise NotImplementedError

    def member_view(self, name: str) -> Tensor:
        """Parameter or buffer ``name`` of every member, ``[members, ...]`` (a view)."""
        raise NotImplementedError

    def member_state_names(self) -> list[str]:
        """The names of the members' parameters, then of their buffers."""
        raise NotImplementedError

    def compute_grads(self, x: Tensor, y: Tensor) -> Tensor:
        """Set every tensor's ``.grad`` to the gradient of its member's data loss on the batch;
        return the members' losses."""
        raise NotImplementedError

    def outputs(self, x: Tensor) -> Tensor:
        """Eval-mode outputs of every member, ``[members, n, outputs]``."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Tensor]:
        """The tensors a checkpoint keeps (parameters, and buffers where there are any)."""
        raise NotImplementedError

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Put back what :meth:`state_tensors` returned, in place."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor) -> None:
        """One optimizer step on the batch (penalty gradients added, proximal step taken); the
        members stopped early are held where they stopped."""
        if len(self.frozen) == len(self.members):
            return
        losses = self.compute_grads(x, y)
        for reg in self.grad_regs:
            reg.add_grad_()
        self.optimizer.step()
        self._hold_frozen()
        if self.scheduler is not None and self.per_step:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(float(losses.detach().reshape(-1)[0]))  # one member
            else:
                self.scheduler.step()

    def end_epoch(self) -> None:
        """Step a per-epoch schedule (a plateau one on the full training loss)."""
        if self.scheduler is not None and not self.per_step \
                and len(self.frozen) < len(self.members):
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                x, y = self.train_data
                self.scheduler.step(float(self.loss(self.outputs(x)[0], y)))
            else:
                self.scheduler.step()

    @torch.no_grad()
    def snapshot(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s parameters and buffers (copies)."""
        return {name: self.member_view(name)[k].clone() for name in self.member_state_names()}

    @torch.no_grad()
    def freeze(self, k: int, state: dict[str, Tensor]) -> None:
        """Put ``state`` (a :meth:`snapshot`) into member ``k`` and hold it there: a member
        stopped early is masked, not removed, from a stacked unit."""
        self.frozen[k] = state
        self._hold_frozen()

    @torch.no_grad()
    def _hold_frozen(self) -> None:
        for k, state in self.frozen.items():
            for name, value in state.items():
                self.member_view(name)[k].copy_(value)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def penalty_of(self, k: int) -> float:
        """R(w) of member ``k``'s own variant (weight decay as the L2 penalty it adds)."""
        total = 0.0
        for penalty, names in self.own_penalties[k]:
            total += float(penalty.value([self.member_view(n)[k] for n in names]))
        return total

    def finals(self) -> dict[tuple[str, float, int], dict[str, Tensor]]:
        """Each member's parameters and buffers (copies), by member key."""
        names = self.member_state_names()
        return {member.key: {name: self.member_view(name)[k].detach().clone() for name in names}
                for k, member in enumerate(self.members)}

    def state(self) -> dict[str, Any]:
        """The tensors, optimizer and scheduler state (a checkpoint's share of this unit)."""
        return {"tensors": self.state_tensors(), "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "frozen": self.frozen}

    @torch.no_grad()
    def load_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state` returned, in place (the optimizer keeps its tensors)."""
        self.load_tensors(state["tensors"])
        self.frozen = dict(state["frozen"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def _regularizer(self, variant: Variant, rules: dict) -> Regularizer:
        try:
            return Regularizer(self.template, rules, parameters=self.tensors)
        except ValueError as error:
            # A channel penalty binds its groups' tensors, not ``params``: name what it binds.
            what = ("penalty 'channels'" if variant.penalty == "channels"
                    else f"params = {variant.params!r}")
            raise StudyError(f"variant {variant.name!r}: {what}: {error}") from None


class StackedUnit(Unit):
    """Members as stacked ``[K, ...]`` parameters and buffers, stepped by :class:`StackedStep`.
    """

    def __init__(self, study: Study, template: nn.Module, members: list[Member],
                 tensors: dict[str, Tensor], step: StackedStep, *,
                 buffers: dict[str, Tensor] | None = None, **options: Any) -> None:
        self.step = step
        self.buffers = buffers or {}
        super().__init__(study, template, members, tensors, **options)
        step.bind(list(tensors.values()), list(self.buffers.values()))

    def strength(self, values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float64)

    def member_view(self, name: str) -> Tensor:
        return self.tensors[name] if name in self.tensors else self.buffers[name]

    def member_state_names(self) -> list[str]:
        return [*self.tensors, *self.buffers]

    def compute_grads(self, x: Tensor, y: Tensor) -> Tensor:
        grads, losses = self.step(x, y)
        for tensor, grad in zip(self.tensors.values(), grads):
            tensor.grad = grad
        return losses

    @torch.no_grad()
    def outputs(self, x: Tensor) -> Tensor:
        return self.step.evaluate(x)

    def state_tensors(self) -> dict[str, Tensor]:
        return {name: self.member_view(name).detach() for name in self.member_state_names()}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        for name in self.member_state_names():
            self.member_view(name).detach().copy_(tensors[name])


class SingleUnit(Unit):
    """One member as its plain module, trained by autograd."""

    def __init__(self, study: Study, template: nn.Module, member: Member, module: nn.Module,
                 **options: Any) -> None:
        self.module = module
        super().__init__(study, template, [member], dict(module.named_parameters()), **options)

    def strength(self, values: list[float]) -> float:
        return float(values[0])

    def member_view(self, name: str) -> Tensor:
        return self.module.get_parameter(name).unsqueeze(0) if name in self.tensors \
            else self.module.get_buffer(name).unsqueeze(0)

    def member_state_names(self) -> list[str]:
        return [name for name, _ in self.module.named_parameters()] + \
            [name for name, _ in self.module.named_buffers()]

    def compute_grads(self, x: Tensor, y: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.loss(self.module(x), y)
        losses.backward()
        return losses

    @torch.no_grad()
    def outputs(self, x: Tensor) -> Tensor:
        self.module.eval()
        try:
            return self.module(x).unsqueeze(0)
        finally:
            self.module.train()

    def state_tensors(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.module.load_state_dict(tensors)


class _MemberChannels:
    """One member's channel penalty, evaluated on views of its tensors (``penalty_of``): a
    :class:`regtorch.ChannelLasso` knows its tensors by identity, so it is bound to the views."""

    def __init__(self, groups: Any, lam: float, names: list[str]) -> None:
        self.groups, self.lam, self.names = groups, lam, names

    def value(self, tensors: list[Tensor]) -> Tensor:
        views = dict(zip(self.names, tensors))
        return channel_penalty(self.groups, self.lam, views)[1].value(tensors)

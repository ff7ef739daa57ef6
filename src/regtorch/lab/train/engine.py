"""Training a study: every member (variant × λ × seed), grouped by recipe, a group in one pass.

**Members and groups** are planned by :mod:`regtorch.lab.train.plan`: members sharing a training
recipe form a group, whatever their penalties, which become ``[K]``-shaped strengths.

**One vectorized pass per group.** The members' parameters are stacked with
:func:`torch.func.stack_module_state` and stepped by :class:`~regtorch.lab.train.step.StackedStep`
(``vmap(grad_and_value(loss))``, traced once into a graph of batched ops). One optimizer steps all
members at once (torch's optimizers are element-wise); the penalties are added with
``Regularizer.add_grad_`` and proximal steps run through :class:`regtorch.Proximal`
(:mod:`regtorch.lab.train.units`). Nothing couples the members (no global gradient clipping; a
member that diverges leaves the others untouched). A model ``vmap`` cannot handle — one with
buffers, such as BatchNorm's running statistics — trains member by member in a plain loop with the
same data, init and recipe; so does a group of one member, which stacking would only slow down.

**Threads.** A group trains with one torch thread unless its step is large enough for a second
to pay (:mod:`regtorch.lab.train.threads`), else with the process's thread count; the count is
given back after the group.

**Common random numbers.** Member seed ``s`` starts from the weights drawn from seed ``s`` in every
variant, and every member sees the batches in the same order: the order of epoch ``e`` is the
``e``-th permutation drawn from ``data_seed``. Differences between variants are then differences
of the regularization, not of the luck of the draw.

**Records** (:mod:`regtorch.lab.train.records`): after every epoch and once before training
(epoch 0), one :class:`regtorch.lab.schema.Record` per member.

**Resuming.** Given :class:`~regtorch.lab.train.checkpoints.Checkpoints`, a finished group is
saved (records and final parameters) and skipped when the study runs again; a group in progress
saves its whole training state after an epoch every ``checkpoints.interval`` seconds and continues
from there: the parameters, the optimizer and scheduler state, the random-number state that draws
dropout masks and the batch-order generator. The results equal an uninterrupted run's exactly.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import stack_module_state

from regtorch import WEIGHTS, EarlyStopping
from regtorch.lab.caught import caught_warnings
from regtorch.lab.schema import STOPPED_EPOCH, VAL_LOSS, WARNINGS_KEY, GroupInfo, Record
from regtorch.lab.study.data import Datasets, make_data
from regtorch.lab.study.models import build_model
from regtorch.lab.study.spec import Study
from regtorch.lab.train.build import DTYPES, criterion, parameter_names
from regtorch.lab.train.checkpoints import Checkpoints
from regtorch.lab.train.memory import chunk_sizes, default_memory, member_bytes, state_bytes
from regtorch.lab.train.plan import Member, group_members, members_of
from regtorch.lab.train.records import EvaluationSet, record_epoch
from regtorch.lab.train.step import StackedStep, vectorizable
from regtorch.lab.train.threads import group_threads, step_work
from regtorch.lab.train.units import SingleUnit, StackedUnit, Unit

__all__ = ["StudyResult", "run_study"]

logger = logging.getLogger("regtorch.lab")

MemberKey = tuple[str, float, int]


@dataclass
class StudyResult:
    """What :func:`run_study` returns: per-epoch records and each member's final parameters."""

    study: Study
    data: Datasets
    records: list[Record] = field(default_factory=list)
    finals: dict[MemberKey, dict[str, Tensor]] = field(default_factory=dict)
    groups: list[GroupInfo] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    """What came from checkpoints, each named as its file is on disk (numbered from 0), e.g.
    ``"group-0: finished"``, ``"group-1: from epoch 14"`` (``group-1-partial.pt``)."""


def run_study(study: Study, *, on_epoch: Callable[[int, int], None] | None = None,
              checkpoints: Checkpoints | None = None, memory: int | None = None,
              data: Datasets | None = None) -> StudyResult:
    """Train every member of ``study`` and record its metrics.

    Args:
        study: the study (seeds and epochs as given in it; see ``Study.with_overrides``).
        on_epoch: called after every group epoch with (member-epochs done, member-epochs in all).
        checkpoints: where finished groups and the state of the group in progress are saved,
            and found again when the same study runs a second time (see the module docstring).
            The caller makes sure they belong to this study
            (:func:`regtorch.lab.present.rundir.prepare_directory`).
        memory: the budget in bytes of what a stacked group holds at once (see
            :mod:`regtorch.lab.train.memory`; default: ``default_memory()``).
        data: the data, when it is not made from ``study.data`` (the Python API's arrays).

    Returns:
        the records (one per member per epoch, epoch 0 = before training), each member's
        final parameters and a description of the groups.
    """
    dtype = DTYPES[study.train.dtype]
    if data is None:
        data = make_data(study.data, study.data_seed, dtype)
    budget = default_memory() if memory is None else memory
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
    initial = _InitialModels(study, data, dtype)
    said: set[str] = set()
    for index, members in enumerate(groups):
        plan = _plan(study, data, members, initial, budget)
        group: GroupInfo = {"variants": sorted({m.variant.name for m in members}),
                            "members": len(members),
                            "mode": "vectorized" if plan.stacked else "loop"}
        if len(plan.sizes) > 1 and plan.stacked:
            group["chunks"] = plan.sizes
        if plan.reason is not None:
            group["reason"] = plan.reason
            if plan.reason not in said:  # once per study, however many groups it stops
                said.add(plan.reason)
                logger.warning("regtorch.lab: %s: members train one by one (same results, "
                               "slower): %s", study.name, plan.reason)
        # The chunks of a group train one after the other, each over every epoch (one by one:
        # chunks of one member, as plain modules): only one chunk's tensors are alive at a time.
        # A checkpoint's name says which members it holds (a run with another --memory does not
        # pick up another plan's state).
        start = 0
        for size in plan.sizes:
            chunk = members[start:start + size]
            name = f"group-{index}"
            if size < len(members):
                name += f"-members-{start}-{start + size}"
            start += size
            finished = checkpoints.load(name) if checkpoints is not None else None
            if finished is not None:
                result.records.extend(finished["records"])
                result.finals.update({(v, lam, seed): tensors
                                      for v, lam, seed, tensors in finished["finals"]})
                result.resumed.append(f"{name}: finished")  # the checkpoint's own name
                _add_warnings(group, finished["group"].get(WARNINGS_KEY, []))
                tick(len(chunk) * study.train.epochs)
                continue
            # A warning (group lasso with Adam...) is kept as one line of the group's, saved
            # with it: a resumed run that skips the group reports it all the same.
            with caught_warnings() as warned:
                trainer = _Group(study, data, chunk, initial,
                                 seed=study.data_seed * 7919 + index, traces=traces,
                                 stacked=plan.stacked)
                records: list[Record] = []
                partial = None if checkpoints is None else (checkpoints, f"{name}-partial")
                with _threads(plan.threads):
                    first_epoch = trainer.run(records, tick, partial)
            _add_warnings(group, warned)
            if first_epoch > 1:
                result.resumed.append(f"{name}: from epoch {first_epoch}")
            finals = trainer.finals()
            if checkpoints is not None:
                checkpoints.save(name, {"records": records, "group": group, "finals": [
                    [*key, tensors] for key, tensors in finals.items()]})
                checkpoints.remove(f"{name}-partial")
            result.records.extend(records)
            result.finals.update(finals)
        result.groups.append(group)
    return result


def _add_warnings(group: GroupInfo, lines: list[str]) -> None:
    """Add the warning ``lines`` to the group's (``GroupInfo.warnings``), each once."""
    for line in lines:
        if line not in group.setdefault(WARNINGS_KEY, []):
            group[WARNINGS_KEY].append(line)


@dataclass(frozen=True)
class _Plan:
    """How a group trains: stacked in chunks of ``sizes`` (one chunk: the whole group), or
    member by member (``stacked`` false, with the ``reason`` when the group has several)."""

    stacked: bool
    sizes: list[int]
    reason: str | None = None
    threads: int = 1


def _plan(study: Study, data: Datasets, members: list[Member], initial: _InitialModels,
          budget: int) -> _Plan:
    template = initial(members[0].seed, members[0].variant.dropout)
    x, y = data.split("train")
    batch = study.train.batch_size or x.shape[0]
    if len(members) == 1:  # a lone member gains nothing from stacking: the plain module
        return _Plan(False, [1], threads=group_threads(step_work(template, x[:batch], 1)))
    loss = criterion(study.train.loss)
    why = vectorizable(template, x, y, loss, random=bool(members[0].variant.dropout))
    if why is not None:
        return _Plan(False, [1] * len(members), f"vmap cannot run this model ({why})",
                     threads=group_threads(step_work(template, x[:batch], 1)))
    rows = sum(data.split(split)[0].shape[0] for split in ("train", "val", "test"))
    cost = member_bytes(template, x[:batch], rows, study.train.optimizer)
    sizes = chunk_sizes(len(members), cost, budget, kept=state_bytes(template))
    if len(sizes) == len(members):
        return _Plan(False, sizes, f"the memory budget ({_mib(budget)}) holds one member "
                                   f"(about {_mib(cost)}), not two",
                     threads=group_threads(step_work(template, x[:batch], 1)))
    return _Plan(True, sizes, threads=group_threads(step_work(template, x[:batch], max(sizes))))


class _InitialModels:
    """Each member's initial model: built once per (init seed, dropout rate) — a Python factory
    is called once per seed — and copied for every member that starts from it."""

    def __init__(self, study: Study, data: Datasets, dtype: torch.dtype) -> None:
        self.study, self.data, self.dtype = study, data, dtype
        self.built: dict[tuple[int, float], nn.Module] = {}

    def __call__(self, seed: int, dropout: float) -> nn.Module:
        key = (seed, dropout)
        if key not in self.built:
            self.built[key] = build_model(self.study.model, inputs=self.data.input_shape,
                                          outputs=self.data.outputs, dropout=dropout,
                                          seed=seed, dtype=self.dtype)
        return copy.deepcopy(self.built[key])


class _Group:
    """Members sharing a recipe, trained together (one stacked unit) or one by one (a single
    unit each)."""

    def __init__(self, study: Study, data: Datasets, members: list[Member],
                 initial: _InitialModels, seed: int, traces: dict[tuple, Callable],
                 stacked: bool) -> None:
        self.study, self.data, self.members, self.seed = study, data, members, seed
        first = members[0].variant
        models = [initial(m.seed, first.dropout) for m in members]
        template = copy.deepcopy(models[0])  # the structure; functional_call supplies tensors
        loss = criterion(study.train.loss)
        self.vectorized = stacked
        self.weight_names = parameter_names(template, WEIGHTS)
        self.evaluation = EvaluationSet(data)
        options = dict(schedule=study.schedule_of(first), loss=loss,
                       train_data=data.split("train"))
        self.units: list[Unit]
        if self.vectorized:
            stacked_params, buffers = stack_module_state(models)
            step = StackedStep(template, list(stacked_params), loss, random=bool(first.dropout),
                               traces=traces, buffer_names=list(buffers))
            self.units = [StackedUnit(study, template, members, stacked_params, step,
                                      buffers=buffers, **options)]
        else:
            self.units = [SingleUnit(study, template, m, model, **options)
                          for m, model in zip(members, models)]
        self.early = _EarlyStops(members, self.units)

    def run(self, records: list[Record], tick: Callable[[int], None],
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
                records.extend(self._record(0))
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
                rows = self._record(epoch)
                if self.early.update(rows, epoch=epoch, last=epoch == recipe.epochs):
                    rows = self._record(epoch)  # the stopped members, at their best epoch
                records.extend(self.early.mark(rows))
                tick(len(self.members))
                if partial is not None and epoch < recipe.epochs \
                        and time.monotonic() - saved >= partial[0].interval:
                    partial[0].save(partial[1], self._state(records, epoch, order))
                    saved = time.monotonic()
        return first_epoch

    def _record(self, epoch: int) -> list[Record]:
        return record_epoch(self.units, self.members, epoch, self.evaluation,
                            loss=self.study.train.loss,
                            classification=self.study.classification,
                            weight_names=self.weight_names)

    def _state(self, records: list[Record], epoch: int, order: torch.Generator
               ) -> dict[str, Any]:
        """Everything the epochs after ``epoch`` depend on (see the module docstring)."""
        return {"epoch": epoch, "records": records, "order": order.get_state(),
                "rng": torch.get_rng_state(), "units": [unit.state() for unit in self.units],
                "early": self.early.state()}

    def _restore(self, state: dict[str, Any], records: list[Record],
                 order: torch.Generator) -> int:
        records.extend(state["records"])
        order.set_state(state["order"])
        torch.set_rng_state(state["rng"])
        for unit, saved in zip(self.units, state["units"], strict=True):
            unit.load_state(saved)
        self.early.load_state(state["early"])
        return state["epoch"] + 1

    def finals(self) -> dict[MemberKey, dict[str, Tensor]]:
        out: dict[MemberKey, dict[str, Tensor]] = {}
        for unit in self.units:
            out.update(unit.finals())
        return out


class _EarlyStops:
    """Early stopping of a group's members: one :class:`regtorch.EarlyStopping` per member
    whose variant asks for it, on the member's validation data loss after every epoch.

    At an improvement the member's state is copied; when its stopper says stop — or at the last
    epoch, for a member that never stopped — that best state is put back and the member is frozen
    in its unit (:meth:`Unit.freeze`): the records from then on are those of its best epoch.
    """

    def __init__(self, members: list[Member], units: list[Unit]) -> None:
        self.stoppers = [None if m.variant.early_stopping is None else EarlyStopping(
            patience=m.variant.early_stopping.patience,
            min_delta=m.variant.early_stopping.min_delta, restore_best=False,
            sink=lambda message: None)  # the record says it: no log line per member
            for m in members]
        self.where = [(unit, k) for unit in units for k in range(len(unit.members))]
        self.best: dict[int, dict[str, Tensor]] = {}
        self.stopped: set[int] = set()
        self.stopped_at: dict[int, int] = {}  # member → the epoch its training ended

    def update(self, rows: list[Record], *, epoch: int, last: bool) -> bool:
        """Step every running stopper with its member's row of ``epoch``; return whether a
        member was put back to its best state."""
        restored = False
        for i, stopper in enumerate(self.stoppers):
            if stopper is None or i in self.stopped:
                continue
            unit, k = self.where[i]
            value = rows[i][VAL_LOSS]
            stop = stopper.step(math.nan if value is None else value)
            if stopper.best_epoch_ is not None and stopper.best_epoch_ == stopper.epoch_ - 1:
                self.best[i] = unit.snapshot(k)
            if stop or last:
                unit.freeze(k, self.best[i] if i in self.best else unit.snapshot(k))
                self.stopped.add(i)
                self.stopped_at[i] = epoch
                restored = True
        return restored

    def mark(self, rows: list[Record]) -> list[Record]:
        """``rows``, each of a stopped member with its ``stopped_epoch``: the epoch its stopper
        stopped it, or the last epoch when it never did (from then on its records are those
        of its best epoch)."""
        for i, epoch in self.stopped_at.items():
            rows[i][STOPPED_EPOCH] = epoch
        return rows

    def state(self) -> dict[str, Any]:
        return {"stoppers": [None if s is None else s.state_dict() for s in self.stoppers],
                "best": self.best, "stopped": sorted(self.stopped),
                "stopped_at": sorted(self.stopped_at.items())}

    def load_state(self, state: dict[str, Any]) -> None:
        for stopper, saved in zip(self.stoppers, state["stoppers"], strict=True):
            if stopper is not None:
                stopper.load_state_dict(saved)
        self.best = dict(state["best"])
        self.stopped = set(state["stopped"])
        self.stopped_at = dict(state.get("stopped_at", []))


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Train with ``count`` torch threads, then give the process its own count back."""
    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _mib(size: float) -> str:
    return f"{size / 2**20:.3g} MiB"

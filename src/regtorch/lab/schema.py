"""The one schema of the lab's records and summaries: what ``metrics.jsonl`` and
``summary.json`` hold, as :class:`~typing.TypedDict` s, and the metric names, defined once.

Every module that writes or reads a record or a summary — the engine, the analysis, the plots,
tables and reports, the tests — uses these types and names. A value that JSON cannot hold (NaN,
infinity) is ``None`` (a diverged member).

* :class:`Record`: one member (variant × λ × seed) after one epoch (epoch 0: before training).
* :class:`Stats`: means and standard deviations over the seeds of a variant's final records.
* :class:`VariantSummary` and :class:`StudySummary`: a study's ``summary.json``.
* :class:`PathEntry`, :class:`SearchPoint` and :class:`SweepSummary`: a sweep's ``summary.json``.
* :class:`PruningEntry` and :class:`PruningSummary`: the ``"pruning"`` key of either summary when
  a variant has ``penalty = "channels"`` (:mod:`regtorch.lab.analysis.pruning`).
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

__all__ = [
    "ACC_KEYS",
    "LOSS_KEYS",
    "SPARSITY",
    "SPLITS",
    "STAT_KEYS",
    "STOPPED_EPOCH",
    "TEST_ACC",
    "TEST_ACC_STD",
    "TEST_LOSS",
    "TEST_LOSS_STD",
    "TEST_TRAIN_RATIO",
    "TRAIN_ACC",
    "TRAIN_ACC_STD",
    "TRAIN_LOSS",
    "TRAIN_LOSS_STD",
    "VAL_ACC",
    "VAL_ACC_STD",
    "VAL_LOSS",
    "VAL_LOSS_SE",
    "VAL_LOSS_STD",
    "WARNINGS_KEY",
    "WEIGHT_NORM",
    "Candidate",
    "Entry",
    "GroupInfo",
    "PathEntry",
    "PruningEntry",
    "PruningSummary",
    "Record",
    "SearchPoint",
    "Stats",
    "StudySummary",
    "SweepSummary",
    "VariantSummary",
    "acc_key",
    "loss_key",
    "std_key",
]

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
"""The data splits, in the order the records and tables show them."""


def loss_key(split: Split) -> str:
    """The record key of a split's data loss: ``"train_loss"``, ``"val_loss"``, ``"test_loss"``."""
    return f"{split}_loss"


def acc_key(split: Split) -> str:
    """The record key of a split's accuracy (classification): ``"test_acc"``..."""
    return f"{split}_acc"


LOSS_KEYS = tuple(loss_key(s) for s in SPLITS)
ACC_KEYS = tuple(acc_key(s) for s in SPLITS)
TRAIN_LOSS, VAL_LOSS, TEST_LOSS = LOSS_KEYS
TRAIN_ACC, VAL_ACC, TEST_ACC = ACC_KEYS
WEIGHT_NORM = "weight_norm"
SPARSITY = "sparsity"
TEST_TRAIN_RATIO = "test_train_ratio"
"""A summary's test/train ratio of the mean final losses (:class:`Stats`)."""


def std_key(key: str) -> str:
    """The summary key of a statistic's standard deviation over seeds: ``"test_loss_std"``."""
    return f"{key}_std"


TRAIN_LOSS_STD, VAL_LOSS_STD, TEST_LOSS_STD = (std_key(k) for k in LOSS_KEYS)
TRAIN_ACC_STD, VAL_ACC_STD, TEST_ACC_STD = (std_key(k) for k in ACC_KEYS)
VAL_LOSS_SE = "val_loss_se"
"""A sweep entry's standard error of the mean validation loss (:class:`Entry`)."""
STAT_KEYS = ("penalty", "weight_norm", "sparsity", "lr")
"""The record's other per-member numbers, summarized like the losses."""
STOPPED_EPOCH = "stopped_epoch"
"""A record's epoch at which early stopping ended its member's training (see :class:`Record`);
a variant's summary lists them as ``stopped_epochs``, one per seed."""
WARNINGS_KEY = "warnings"
"""The summary's (and a group's) list of warnings raised while training, each one line
``"<Category>: <message>"`` (:func:`regtorch.lab.caught.warning_line`), each once, in the order
first raised; empty when nothing warned. A variant's verdict ends with those of its groups."""


class _RecordBase(TypedDict):
    variant: str
    strength: float | None  # None for a variant without a penalty
    seed: int
    epoch: int
    train_loss: float | None
    val_loss: float | None
    test_loss: float | None
    penalty: float | None  # R(w) of the member's own variant
    weight_norm: float | None  # ‖w‖₂ of the WEIGHTS parameters
    sparsity: float  # fraction of exactly-zero WEIGHTS entries
    lr: float
    diverged: bool


class Record(_RecordBase, total=False):
    """One line of ``metrics.jsonl``; the accuracies only for classification; ``stopped_epoch``
    only for a member of a variant with early stopping, once it has stopped."""

    train_acc: float | None
    val_acc: float | None
    test_acc: float | None
    stopped_epoch: int  # STOPPED_EPOCH: when early stopping ended the member's training (the
    #                     last epoch when it never stopped); its records are its best epoch's


class _GroupBase(TypedDict):
    variants: list[str]
    members: int
    mode: str  # "vectorized" or "loop"


class GroupInfo(_GroupBase, total=False):
    """How a group of members was trained (``config.json``'s ``run.groups``)."""

    reason: str  # why the members train one by one (vmap cannot run the model, or memory)
    chunks: list[int]  # members per stacked unit, when the memory budget split the group
    warnings: list[str]  # warnings raised while the group trained, one line each


class Stats(TypedDict, total=False):
    """Final-epoch statistics over the members that did not diverge: for every key ``k`` of
    :data:`LOSS_KEYS`, :data:`STAT_KEYS` (and :data:`ACC_KEYS` for classification), ``k`` is the
    mean and ``k_std`` the standard deviation (``ddof=1``; 0 for one member)."""

    train_loss: float | None
    train_loss_std: float | None
    val_loss: float | None
    val_loss_std: float | None
    test_loss: float | None
    test_loss_std: float | None
    train_acc: float | None
    train_acc_std: float | None
    val_acc: float | None
    val_acc_std: float | None
    test_acc: float | None
    test_acc_std: float | None
    penalty: float | None
    penalty_std: float | None
    weight_norm: float | None
    weight_norm_std: float | None
    sparsity: float | None
    sparsity_std: float | None
    lr: float | None
    lr_std: float | None
    test_train_ratio: float | None
    diverged: int  # how many members diverged


class Candidate(TypedDict):
    strength: float | None
    val_loss: float | None
    val_loss_std: float | None
    test_loss: float | None
    diverged: int


class VariantSummary(Stats, total=False):
    """A variant of a study: its :class:`Stats` at the chosen strength, and the words."""

    strength: float | None
    candidates: list[Candidate]  # a tuned variant's strengths
    stopped_epochs: list[int]  # early stopping: each seed's stopped_epoch, in seed order
    not_converged: bool
    verdict: str
    # linear models: slope, intercept, lambda_max, at_or_above_lambda_max, optimum_distance,
    # optimum_slope, optimum_intercept, support_precision, support_recall, exact_zeros
    slope: float
    intercept: float
    lambda_max: float
    at_or_above_lambda_max: bool
    optimum_distance: float
    optimum_slope: float
    optimum_intercept: float
    support_precision: float
    support_recall: float
    exact_zeros: float


class StudySummary(TypedDict):
    """A study's ``summary.json``."""

    study: str
    seeds: int
    epochs: int
    baseline: str
    variants: dict[str, VariantSummary]
    notes: list[str]
    warnings: list[str]  # WARNINGS_KEY: what Python warned while training, one line each
    pruning: NotRequired[PruningSummary]  # a variant with penalty = "channels"


# "lambda" is a Python keyword: keys spelled so use TypedDict's functional form.
SearchPoint = TypedDict("SearchPoint", {
    "lambda": float, "val_loss": "float | None", "weight_norm": "float | None",
    "sparsity": float, "diverged": bool})
"""A λ tried by the λ_max search (one seed, final epoch)."""


class Entry(Stats, total=False):
    """:class:`Stats` of the members at one λ, with ``val_loss_se`` (the standard error of the
    mean validation loss) and how many ``members`` there were."""

    val_loss_se: float | None
    members: int


_Lambda = TypedDict("_Lambda", {"lambda": float})


class PathEntry(_Lambda, Entry, total=False):
    """A λ of a sweep's path: ``lambda`` and its :class:`Entry`."""


class SweepSummary(TypedDict):
    """A sweep's ``summary.json`` (see :mod:`regtorch.lab.analysis.sweep`)."""

    kind: Literal["sweep"]
    study: str
    base: str
    penalty: str
    apply: str
    params: str
    l1_ratio: float | None
    groups: str | None
    seeds: int
    epochs: int
    grid: Literal["given", "searched"]
    lambda_max: float | None
    lambda_max_rule: str | None
    search: list[SearchPoint]
    path: list[PathEntry]
    unregularized: Entry
    best_lambda: float | None
    lambda_1se: float | None
    best: PathEntry | None
    one_se: PathEntry | None
    notes: list[str]
    warnings: list[str]  # WARNINGS_KEY, as a study's
    pruning: NotRequired[PruningSummary]  # as a study's


_Point = TypedDict("_Point", {"variant": str, "lambda": "float | None"})


class PruningEntry(_Point, total=False):
    """One (variant, λ) of a channel-pruning summary: means over its members (``_std``: the
    standard deviation) of what compacting each member gave (``lambda`` None: a reference
    variant without a penalty)."""

    members: int
    channels: int
    reference: bool
    zero_fraction: float | None
    zero_fraction_std: float | None
    channels_kept: float | None
    channels_kept_std: float | None
    parameters: float | None
    parameters_std: float | None
    parameters_compact: float | None
    parameters_compact_std: float | None
    macs: float | None
    macs_std: float | None
    macs_compact: float | None
    macs_compact_std: float | None
    latency_ms: float | None
    latency_ms_std: float | None
    latency_compact_ms: float | None
    latency_compact_ms_std: float | None
    speedup: float | None
    speedup_std: float | None
    test_acc: float | None
    test_acc_std: float | None
    test_loss: float | None
    test_loss_std: float | None


class PruningSummary(TypedDict):
    """The ``"pruning"`` key of a summary: the entries, and how latency was measured."""

    latency_batch: int
    threads: int
    timed: bool
    entries: list[PruningEntry]

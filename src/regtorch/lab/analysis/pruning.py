"""What a channel penalty bought: every member compacted, counted and timed.

For a study or a sweep with a ``penalty = "channels"`` variant, after training, each member is
unstacked into the user's own module (its final parameters and buffers loaded into a fresh
:func:`~regtorch.lab.study.models.build_model` of the member's seed) and compacted with
:func:`regtorch.compact` on the test inputs (which checks the compact model's outputs against the
member's). Per member:

* ``zero_fraction``: the fraction of the model's channel groups
  (:func:`regtorch.channel_groups`) whose penalized slices are all exactly zero — those
  :class:`regtorch.ChannelLasso` penalizes by default (``roles="auto"``): the normalization
  entries where a norm follows the producer, the producer's rows and bias elsewhere;
* ``channels_kept``: the groups the compact model still has (groups − removed);
* ``parameters`` and ``macs``: of the original and of the compact model; MACs are counted simply,
  per example, from the ``Linear`` and ``Conv`` layers alone (a ``Linear``: in × out; a ``Conv``:
  output positions × out channels × in channels / groups × kernel size), nothing else;
* ``latency_ms``: the median wall time of :data:`LATENCY_ROUNDS` eval-mode calls on
  :data:`LATENCY_BATCH` test rows (after one warm-up), original and compact interleaved (the
  order reversed every round), with the torch threads of the run; ``speedup`` is the original's
  median over the compact one's. On a shared machine a model that did not change reads between
  about 0.8× and 1.2×: the reference row shows that noise.

Members are summarized per (variant, λ) as means over their seeds (``_std``: the standard
deviation, ``ddof=1``; 0 for one seed), next to the test accuracy (classification) or test loss
of the final epoch. The variants without a penalty are the reference. Timings are measurements,
not part of any test.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from regtorch import channel_groups, compact, compaction_of
from regtorch.lab.schema import TEST_ACC, TEST_LOSS, PruningEntry, PruningSummary, Record
from regtorch.lab.study.data import Datasets
from regtorch.lab.study.models import build_model
from regtorch.lab.study.spec import Study, StudyError
from regtorch.lab.train.build import DTYPES
from regtorch.lab.train.engine import StudyResult

__all__ = ["LATENCY_BATCH", "LATENCY_ROUNDS", "count_macs", "has_channels", "member_module",
           "prune_member", "summarize_pruning", "with_pruning"]

LATENCY_BATCH = 256   # test rows per timed call: a batch that keeps a small CPU model busy
LATENCY_ROUNDS = 9    # timed calls per model; the median is kept (the machine may be shared)
PENALIZED = "auto"  # ChannelLasso's default roles: what "exactly zero" means


def has_channels(study: Study) -> bool:
    """True when a variant of ``study`` has ``penalty = "channels"``."""
    return any(v.penalty == "channels" for v in study.variants)


def member_module(study: Study, data: Datasets, key: tuple[str, float, int],
                  tensors: dict[str, Tensor]) -> nn.Module:
    """Member ``key``'s own module: the model built from its seed, with its final parameters and
    buffers (``StudyResult.finals[key]``; from a stacked group, that member's slices)."""
    variant = next(v for v in study.variants if v.name == key[0])
    module = build_model(study.model, inputs=data.input_shape, outputs=data.outputs,
                         dropout=variant.dropout, seed=key[2], dtype=DTYPES[study.train.dtype])
    module.load_state_dict(tensors)
    return module.eval()


def count_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates per example of the ``Linear`` and ``Conv`` layers of ``model`` on
    ``x`` (module docstring); the model runs once, in eval mode, without gradients."""
    total = 0

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        nonlocal total
        per_example = output[0].numel() if output.ndim > 1 else output.numel()
        if isinstance(module, nn.Linear):
            total += per_example * module.in_features
        else:
            kernel = math.prod(module.kernel_size)
            total += per_example * module.in_channels // module.groups * kernel

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


def _median_ms(models: list[nn.Module], x: Tensor) -> list[float]:
    """Median eval-mode wall time (ms) of each model on ``x``, the models interleaved and their
    order reversed every round (the first call of a round is not always the same model's)."""
    times: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    with torch.no_grad():
        for model in models:
            model(x)  # warm-up
        for _ in range(LATENCY_ROUNDS):
            for i in order:
                start = time.perf_counter()
                models[i](x)
                times[i].append(1e3 * (time.perf_counter() - start))
            order.reverse()
    return [statistics.median(t) for t in times]


def prune_member(module: nn.Module, x: Tensor, *, timed: bool = True) -> dict[str, Any]:
    """Compact one member's module on ``x`` and measure both (module docstring).

    Returns:
        ``channels``, ``zero_fraction``, ``channels_kept``, ``parameters``,
        ``parameters_compact``, ``macs``, ``macs_compact``, ``max_difference`` and (``timed``)
        ``latency_ms``, ``latency_compact_ms``, ``speedup``; and the compact model under
        ``"model"``.

    Raises:
        StudyError: the model cannot be traced or compacted (one line, naming the reason).
    """
    module = module.eval()
    try:
        groups = channel_groups(module, x)
        small = compact(module, x)
    except ValueError as error:
        raise StudyError(f"penalty 'channels': {str(error).splitlines()[0]}") from None
    record = compaction_of(small)
    count = len(groups.groups)
    out: dict[str, Any] = {
        "channels": count,
        "zero_fraction": groups.zero_fraction(PENALIZED),
        "channels_kept": count - len(record.removed),
        "parameters": record.parameters_before, "parameters_compact": record.parameters_after,
        "macs": count_macs(module, x), "macs_compact": count_macs(small, x),
        "max_difference": record.max_difference, "model": small}
    if timed:
        before, after = _median_ms([module, small], x[:LATENCY_BATCH])
        out.update(latency_ms=before, latency_compact_ms=after,
                   speedup=before / after if after > 0 else None)
    return out


_MEASURES = ("zero_fraction", "channels_kept", "parameters", "parameters_compact", "macs",
             "macs_compact", "latency_ms", "latency_compact_ms", "speedup")


def summarize_pruning(result: StudyResult, *, timed: bool = True) -> PruningSummary:
    """Every member compacted and measured, summarized per (variant, λ) (module docstring).

    Raises:
        StudyError: a member cannot be compacted (the model's trace refuses).
    """
    study, data = result.study, result.data
    x = data.split("test")[0]
    finals: dict[tuple[str, float | None, int], Record] = {}
    for row in result.records:
        if row["epoch"] == study.train.epochs:
            finals[(row["variant"], row["strength"], row["seed"])] = row
    by_point: dict[tuple[str, float | None], list[dict[str, Any]]] = defaultdict(list)
    for key, tensors in result.finals.items():
        variant = next(v for v in study.variants if v.name == key[0])
        measured = prune_member(member_module(study, data, key, tensors), x[:LATENCY_BATCH],
                                timed=timed)
        del measured["model"]
        strength = None if variant.penalty is None else key[1]
        row = finals.get((key[0], strength, key[2]))
        if row is not None:
            measured[TEST_ACC] = row.get(TEST_ACC)
            measured[TEST_LOSS] = row[TEST_LOSS]
        by_point[(key[0], strength)].append(measured)
    entries: list[PruningEntry] = []
    for (variant_name, strength), rows in by_point.items():
        entry: dict[str, Any] = {"variant": variant_name, "lambda": strength,
                                 "members": len(rows), "channels": rows[0]["channels"],
                                 "reference": strength is None}
        for key in (*_MEASURES, TEST_ACC, TEST_LOSS):
            values = [r[key] for r in rows if r.get(key) is not None]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}_std"] = (statistics.stdev(values) if len(values) > 1 else 0.0
                                   ) if values else None
        entries.append(entry)  # type: ignore[arg-type]
    entries.sort(key=lambda e: (not e["reference"], e["variant"], e["lambda"] or 0.0))
    return {"latency_batch": min(LATENCY_BATCH, x.shape[0]),
            "threads": torch.get_num_threads(), "timed": timed, "entries": entries}



def with_pruning(summary: Any, result: StudyResult) -> Any:
    """``summary`` (a study's or a sweep's) with its ``"pruning"`` key when a variant of the
    result's study has ``penalty = "channels"``; otherwise unchanged."""
    if has_channels(result.study):
        summary["pruning"] = summarize_pruning(result)
    return summary

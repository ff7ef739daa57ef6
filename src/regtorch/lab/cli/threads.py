"""How many torch threads the ``regtorch`` command trains one study with (``--threads``).

A lab model is small: one optimizer step of a group is a few matrix products of at most a few
million multiply-adds, too short to split across cores — a second thread mostly waits for the
first, and on a shared machine it waits for whoever else holds the other core (measured: ``run
sparse-recovery`` 41 s with torch's default threads on a loaded 2-core machine, 9.7 s with one).
So the default is one thread below :data:`MIN_STEP_SIZE` and the available CPUs above it — a
bound chosen for shared machines, far above the per-group crossover measured on an idle one
(:data:`regtorch.lab.train.threads.MIN_STEP_WORK`, 10⁷): a second thread gains at most ~1.8× on
an idle core and costs 8–11× on a busy one. That is the most any group of the study uses: with
``--threads 2`` each group whose own step reaches ``MIN_STEP_WORK`` trains with both, smaller
ones with one (:mod:`regtorch.lab.train.threads`).
"""

from __future__ import annotations

import itertools

from regtorch.lab.cli._process import available_cpus
from regtorch.lab.study.spec import DataSpec, Study

__all__ = ["MIN_STEP_SIZE", "default_threads", "step_size"]

MIN_STEP_SIZE = 2e9
"""Per-step multiply-adds (:func:`step_size`) from which the default is every available CPU (no
preset comes near; ``--threads`` overrides it)."""

_DIGITS_CLASSES, _DIGITS_PIXELS = 10, 64  # scikit-learn's 8×8 digits
_UNKNOWN_ROWS, _UNKNOWN_INPUTS = 1000, 64  # the user's data: its size is known once loaded


def step_size(study: Study) -> float:
    """A rough size of one optimizer step of the whole study's group: members × batch rows ×
    multiply-adds per example (an MLP's ``Σ widthᵢ·widthᵢ₊₁``; a CNN's ``Σ cᵢ·cᵢ₊₁·k²`` over
    the 8×8 pixels, an upper bound as pooling shrinks the maps)."""
    members = sum(len(v.strengths) for v in study.variants) * study.seeds
    data = study.data
    if isinstance(data, DataSpec):
        rows = data.train
        inputs = _DIGITS_PIXELS if data.kind == "digits" else data.features
    else:
        rows, inputs = _UNKNOWN_ROWS, _UNKNOWN_INPUTS
    batch = study.train.batch_size or rows
    model = study.model
    if model.kind == "cnn":
        channels = (1, *model.channels)
        per_example = _DIGITS_PIXELS * model.kernel ** 2 * sum(
            a * b for a, b in itertools.pairwise(channels))
        widths = [channels[-1], *model.hidden, _DIGITS_CLASSES]
    else:
        per_example = 0
        widths = [inputs, *model.hidden, _DIGITS_CLASSES if study.classification else 1]
    per_example += sum(a * b for a, b in itertools.pairwise(widths))
    return float(members * batch * per_example)


def default_threads(study: Study, cpus: int | None = None) -> int:
    """1 for a study whose :func:`step_size` is below :data:`MIN_STEP_SIZE`, else ``cpus``
    (default: the CPUs this process may run on)."""
    if step_size(study) < MIN_STEP_SIZE:
        return 1
    return cpus if cpus is not None else available_cpus()

"""EarlyStopping: scripted sequences, best-weight restore, divergence, reset, checkpoints, errors.

Every expected value below is worked out by hand from the Keras rule (improvement: ``v < best −
min_delta`` in min mode, ``v > best + min_delta`` in max mode; stop when ``wait >= patience``;
NaN/inf stops at once). Values are binary fractions where an equality edge is tested, so that
``best − min_delta`` is exact.
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import regtorch
from regtorch import EarlyStopping

NAN, INF = math.nan, math.inf


def run(stopper, values, model=None):
    """Feed ``values`` to ``stopper`` until it says stop; the list of what ``step`` returned."""
    model = nn.Linear(2, 1) if model is None else model
    returned = []
    for value in values:
        returned.append(stopper.step(value, model))
        if returned[-1]:
            break
    return returned


def snapshot(model):
    """Our own copy of every parameter and buffer, to compare against later."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model, expected):
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))


def train(model, optimizer, steps=3):
    """A few SGD steps in train mode: parameters move and BatchNorm running stats update."""
    model.train()
    for _ in range(steps):
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        x = torch.randn(8, first.in_features)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# --------------------------------------------------------------------------------------------
# Scripted sequences.
# --------------------------------------------------------------------------------------------

F, T = False, True

# (config, values, returned, best_, best_epoch_, wait_, stopped_epoch_, diverged_)
SEQUENCES = {
    "steady-improvement-never-stops": (
        dict(patience=2), [5.0, 4.0, 3.0, 2.0, 1.0], [F, F, F, F, F], 1.0, 4, 0, None, F),
    "plateau-stops-after-patience": (
        dict(patience=3), [1.0, 2.0, 2.0, 2.0, 2.0], [F, F, F, T], 1.0, 0, 3, 3, F),
    "equal-value-is-not-an-improvement": (
        dict(patience=2), [1.0, 1.0, 1.0], [F, F, T], 1.0, 0, 2, 2, F),
    "improvement-resets-wait": (
        dict(patience=2), [1.0, 1.5, 0.9, 1.2, 1.3], [F, F, F, F, T], 0.9, 2, 2, 4, F),
    "min-delta-small-gain-does-not-count": (
        dict(patience=2, min_delta=0.1), [1.0, 0.95, 0.92], [F, F, T], 1.0, 0, 2, 2, F),
    "min-delta-large-gain-counts": (
        dict(patience=2, min_delta=0.1), [1.0, 0.8, 0.85], [F, F, F], 0.8, 1, 1, None, F),
    # 0.5 < 1.0 − 0.5 is false: a gain of exactly min_delta does not count; 0.25 < 0.5 does.
    "min-delta-exactly-equal-does-not-count": (
        dict(patience=2, min_delta=0.5), [1.0, 0.5, 0.25], [F, F, F], 0.25, 2, 0, None, F),
    "min-delta-exactly-equal-stops": (
        dict(patience=1, min_delta=0.5), [1.0, 0.5], [F, T], 1.0, 0, 1, 1, F),
    "max-mode": (
        dict(mode="max", patience=2), [0.5, 0.7, 0.6, 0.7, 0.65], [F, F, F, T], 0.7, 1, 2, 3, F),
    "max-mode-steady-improvement": (
        dict(mode="max", patience=1), [0.1, 0.2, 0.3], [F, F, F], 0.3, 2, 0, None, F),
    # 0.75 > 0.5 + 0.25 is false; 1.0 > 0.75 is true.
    "max-mode-min-delta-exactly-equal": (
        dict(mode="max", patience=5, min_delta=0.25), [0.5, 0.75, 1.0], [F, F, F],
        1.0, 2, 0, None, F),
    "patience-0-stops-at-first-non-improvement": (
        dict(patience=0), [1.0, 0.5, 0.6], [F, F, T], 0.5, 1, 1, 2, F),
    "patience-0-equal-value": (
        dict(patience=0), [1.0, 1.0], [F, T], 1.0, 0, 1, 1, F),
    "start-from-epoch-ignores-early-good-values": (
        dict(patience=2, start_from_epoch=2), [0.1, 0.2, 1.0, 1.1, 1.2], [F, F, F, F, T],
        1.0, 2, 2, 4, F),
    "warm-up-does-not-count-as-waiting": (
        dict(patience=1, start_from_epoch=3), [5.0, 6.0, 7.0, 8.0], [F, F, F, F],
        8.0, 3, 0, None, F),
    "nan-stops-at-once": (
        dict(patience=10), [1.0, 0.5, NAN, 0.1], [F, F, T], 0.5, 1, 0, 2, T),
    "nan-after-waiting-keeps-wait": (
        dict(patience=10), [1.0, 2.0, NAN], [F, F, T], 1.0, 0, 1, 2, T),
    "plus-inf-stops-at-once": (
        dict(patience=10), [1.0, INF], [F, T], 1.0, 0, 0, 1, T),
    "minus-inf-stops-at-once": (
        dict(patience=10), [1.0, -INF], [F, T], 1.0, 0, 0, 1, T),
    "nan-first-value": (
        dict(), [NAN], [T], INF, None, 0, 0, T),
    "nan-during-warm-up": (
        dict(start_from_epoch=5), [1.0, NAN], [F, T], INF, None, 0, 1, T),
    "inf-during-warm-up": (
        dict(start_from_epoch=5), [1.0, 0.5, INF], [F, F, T], INF, None, 0, 2, T),
    "max-mode-nan": (
        dict(mode="max"), [0.5, NAN], [F, T], 0.5, 0, 0, 1, T),
}


@pytest.mark.parametrize("restore_best", [True, False], ids=["restore", "no-restore"])
@pytest.mark.parametrize(
    ("config", "values", "returned", "best", "best_epoch", "wait", "stopped", "diverged"),
    list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_scripted_sequence(config, values, returned, best, best_epoch, wait, stopped, diverged,
                           restore_best):
    stopper = EarlyStopping(**config, restore_best=restore_best, sink=lambda message: None)
    assert run(stopper, values) == returned
    assert stopper.best_ == best
    assert stopper.best_epoch_ == best_epoch
    assert stopper.wait_ == wait
    assert stopper.epoch_ == len(returned)
    assert stopper.stopped_epoch_ == stopped
    assert stopper.diverged_ is diverged


def test_max_mode_starts_from_minus_inf():
    assert EarlyStopping(mode="max").best_ == -INF
    assert EarlyStopping(mode="min").best_ == INF


@pytest.mark.parametrize("value", [
    torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64), torch.tensor(3),
    np.float32(0.5), np.float64(0.5), 1,
], ids=["tensor-float32", "tensor-float64", "tensor-int", "numpy-float32", "numpy-float64", "int"])
def test_accepts_numbers_and_0d_tensors(value):
    stopper = EarlyStopping(restore_best=False)
    assert stopper.step(value) is False
    assert stopper.best_ == float(value) and isinstance(stopper.best_, float)


def test_tensor_that_requires_grad_is_read_without_warning():
    loss = torch.tensor(0.25, requires_grad=True) * 2
    stopper = EarlyStopping()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stopper.step(loss, nn.Linear(2, 1))
    assert stopper.best_ == 0.5


def test_nan_tensor_diverges():
    stopper = EarlyStopping(sink=lambda message: None)
    assert stopper.step(torch.tensor(NAN), nn.Linear(2, 1)) is True
    assert stopper.diverged_ is True


def test_stepping_after_a_stop_keeps_counting():
    """Documented: nothing is reset by a stop; an improvement resumes, a plateau stops again."""
    messages = []
    stopper = EarlyStopping(patience=1, sink=messages.append)
    model = nn.Linear(2, 1)
    assert [stopper.step(v, model) for v in [1.0, 2.0, 3.0, 0.5, 0.75]] == [F, T, T, F, T]
    assert stopper.wait_ == 1 and stopper.best_ == 0.5 and stopper.best_epoch_ == 3
    assert stopper.stopped_epoch_ == 4 and len(messages) == 3


def test_divergence_then_finite_values_are_monitored_again():
    stopper = EarlyStopping(patience=2, sink=lambda message: None)
    model = nn.Linear(2, 1)
    assert [stopper.step(v, model) for v in [1.0, NAN, 0.5]] == [F, T, F]
    assert stopper.best_ == 0.5 and stopper.best_epoch_ == 2
    # diverged_ and stopped_epoch_ describe the latest stop until the next one.
    assert stopper.diverged_ is True and stopper.stopped_epoch_ == 1
    assert [stopper.step(v, model) for v in [0.6, 0.7]] == [F, T]
    assert stopper.diverged_ is False and stopper.stopped_epoch_ == 4


# --------------------------------------------------------------------------------------------
# Messages through the sink.
# --------------------------------------------------------------------------------------------

MESSAGES = {
    "patience": (
        dict(patience=2), [0.5, 0.25, 0.75, 1.0],
        "EarlyStopping: stopped at epoch 3 (no improvement for 2 epochs); best 0.25 at epoch 1; "
        "weights restored"),
    "patience-1-singular": (
        dict(patience=1), [0.125, 2.0],
        "EarlyStopping: stopped at epoch 1 (no improvement for 1 epoch); best 0.125 at epoch 0; "
        "weights restored"),
    "patience-0": (
        dict(patience=0), [0.5, 0.5],
        "EarlyStopping: stopped at epoch 1 (no improvement for 1 epoch); best 0.5 at epoch 0; "
        "weights restored"),
    "best-rounded-to-6-significant-digits": (
        dict(patience=1), [0.123456789, 1.0],
        "EarlyStopping: stopped at epoch 1 (no improvement for 1 epoch); best 0.123457 at epoch "
        "0; weights restored"),
    "max-mode": (
        dict(mode="max", patience=1), [0.75, 0.5],
        "EarlyStopping: stopped at epoch 1 (no improvement for 1 epoch); best 0.75 at epoch 0; "
        "weights restored"),
    "nan": (
        dict(), [0.5, NAN],
        "EarlyStopping: stopped at epoch 1: monitored value is nan (diverged); best 0.5 at epoch "
        "0; weights restored"),
    "inf": (
        dict(), [0.5, 0.25, INF],
        "EarlyStopping: stopped at epoch 2: monitored value is inf (diverged); best 0.25 at epoch "
        "1; weights restored"),
    "minus-inf": (
        dict(), [-INF],
        "EarlyStopping: stopped at epoch 0: monitored value is -inf (diverged); no best value "
        "yet; no best weights to restore"),
    "inf-during-warm-up": (
        dict(start_from_epoch=3), [0.5, INF],
        "EarlyStopping: stopped at epoch 1: monitored value is inf (diverged); no best value "
        "yet; no best weights to restore"),
    "no-restore": (
        dict(patience=1, restore_best=False), [0.5, 0.75],
        "EarlyStopping: stopped at epoch 1 (no improvement for 1 epoch); best 0.5 at epoch 0; "
        "weights not restored (restore_best=False)"),
    "no-restore-nan": (
        dict(restore_best=False), [0.5, NAN],
        "EarlyStopping: stopped at epoch 1: monitored value is nan (diverged); best 0.5 at epoch "
        "0; weights not restored (restore_best=False)"),
}


@pytest.mark.parametrize(("config", "values", "message"), list(MESSAGES.values()),
                         ids=list(MESSAGES))
def test_sink_receives_exactly_one_message_per_stop(config, values, message):
    messages = []
    stopper = EarlyStopping(**config, sink=messages.append)
    returned = run(stopper, values)
    assert returned[-1] is True and len(returned) == len(values)
    assert messages == [message]


def test_no_message_while_training_goes_on():
    messages = []
    run(EarlyStopping(patience=3, sink=messages.append), [3.0, 2.0, 2.5, 2.5])
    assert messages == []


def test_default_sink_logs_to_regtorch_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="regtorch"):
        run(EarlyStopping(patience=0), [0.5, 0.5])
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("regtorch", logging.INFO,
         "EarlyStopping: stopped at epoch 1 (no improvement for 1 epoch); best 0.5 at epoch 0; "
         "weights restored")]


# --------------------------------------------------------------------------------------------
# Best weights.
# --------------------------------------------------------------------------------------------


def test_stop_restores_the_weights_and_buffers_of_the_best_epoch():
    model = bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stopper = EarlyStopping(patience=3, sink=lambda message: None)
    values = [3.0, 2.0, 1.0, 1.5, 1.2, 1.1]  # best at epoch 2, stop at epoch 5
    snapshots = []
    for value in values:
        train(model, optimizer)
        snapshots.append(snapshot(model))
        if stopper.step(value, model):
            break
    assert stopper.stopped_epoch_ == 5 and stopper.best_epoch_ == 2
    # The run moved on after epoch 2 (parameters and running stats), so restoring is visible.
    for key in ("0.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert not torch.equal(snapshots[5][key], snapshots[2][key]), key
    assert_state_equal(model, snapshots[2])
    assert model.state_dict()["1.num_batches_tracked"].item() == 9  # 3 epochs × 3 steps


def test_restore_after_training_to_the_end():
    model = bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stopper = EarlyStopping(patience=10)
    snapshots = []
    for value in [3.0, 1.0, 2.0, 1.5]:  # best at epoch 1, never stops
        train(model, optimizer)
        snapshots.append(snapshot(model))
        assert stopper.step(value, model) is False
    assert_state_equal(model, snapshots[3])  # no stop: the model keeps its last weights
    stopper.restore(model)
    assert_state_equal(model, snapshots[1])


def test_stored_copy_does_not_alias_the_model():
    """Training after an improvement (in place) and after a restore leaves the copy unchanged."""
    model = bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stopper = EarlyStopping(patience=10)
    train(model, optimizer)
    best = snapshot(model)
    stopper.step(1.0, model)
    train(model, optimizer)
    stopper.step(2.0, model)
    stopper.restore(model)
    assert_state_equal(model, best)
    train(model, optimizer)  # the model must not share memory with the stored copy
    stopper.restore(model)
    assert_state_equal(model, best)


def test_later_improvements_overwrite_the_copy_in_place():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stopper = EarlyStopping(patience=10)
    stopper.step(3.0, model)
    # Private look: the design reuses the copy's memory instead of cloning the model each epoch.
    pointers = {k: v.data_ptr() for k, v in stopper._best_weights.items()}
    train(model, optimizer)
    best = snapshot(model)
    stopper.step(2.0, model)
    assert {k: v.data_ptr() for k, v in stopper._best_weights.items()} == pointers
    train(model, optimizer)
    stopper.step(2.5, model)
    stopper.restore(model)
    assert_state_equal(model, best)


def test_a_model_with_other_shapes_is_copied_afresh():
    small, large = nn.Linear(2, 1), nn.Linear(5, 3)
    stopper = EarlyStopping(patience=10)
    stopper.step(2.0, small)
    best = snapshot(large)
    stopper.step(1.0, large)
    with torch.no_grad():
        large.weight.zero_()
    stopper.restore(large)
    assert_state_equal(large, best)


def test_no_restore_leaves_the_model_untouched_and_copies_nothing():
    model = bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stopper = EarlyStopping(patience=1, restore_best=False, sink=lambda message: None)
    tensors = dict(model.state_dict(keep_vars=True))
    for value in [1.0, 2.0]:
        train(model, optimizer)
        last = snapshot(model)
        stopped = stopper.step(value, model)
    assert stopped is True
    assert_state_equal(model, last)
    assert all(v is tensors[k] for k, v in model.state_dict(keep_vars=True).items())
    assert stopper.state_dict()["best_weights"] is None
    with pytest.raises(ValueError, match=re.escape("no best weights to restore "
                                                   "(restore_best=False)")):
        stopper.restore(model)


def test_no_restore_needs_no_model():
    stopper = EarlyStopping(patience=0, restore_best=False, sink=lambda message: None)
    assert [stopper.step(v) for v in [1.0, 1.0]] == [F, T]


def test_divergence_restores_the_best_weights():
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(sink=lambda message: None)
    best = snapshot(model)
    stopper.step(0.5, model)
    with torch.no_grad():
        model.weight.fill_(NAN)
    assert stopper.step(NAN, model) is True
    assert stopper.diverged_ is True
    assert_state_equal(model, best)


def test_divergence_before_any_best_leaves_the_model_alone():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(NAN)
    stopper = EarlyStopping(start_from_epoch=2, sink=lambda message: None)
    assert run(stopper, [0.5, INF], model) == [F, T]
    assert torch.isnan(model.weight).all()


def test_restore_without_stored_weights_raises():
    with pytest.raises(ValueError, match=re.escape("no epoch has been monitored yet")):
        EarlyStopping().restore(nn.Linear(2, 1))
    stopper = EarlyStopping(start_from_epoch=3)
    stopper.step(0.5, nn.Linear(2, 1))  # warm-up: nothing stored
    with pytest.raises(ValueError, match="no best weights to restore"):
        stopper.restore(nn.Linear(2, 1))


# --------------------------------------------------------------------------------------------
# reset, state_dict.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "start"), [("min", INF), ("max", -INF)], ids=["min", "max"])
def test_reset_clears_everything(mode, start):
    stopper = EarlyStopping(mode=mode, patience=1, sink=lambda message: None)
    model = nn.Linear(2, 1)
    assert run(stopper, [1.0, 1.0, NAN], model) == [F, T]
    stopper.step(NAN, model)
    assert stopper.diverged_ is True
    stopper.reset()
    assert stopper.best_ == start
    assert stopper.best_epoch_ is None
    assert stopper.wait_ == 0 and stopper.epoch_ == 0
    assert stopper.stopped_epoch_ is None and stopper.diverged_ is False
    assert stopper.state_dict()["best_weights"] is None
    with pytest.raises(ValueError, match="no best weights"):
        stopper.restore(model)
    # A new run behaves like a fresh stopper.
    assert run(stopper, [3.0, 3.0, 5.0], model) == [F, T]
    assert (stopper.best_, stopper.best_epoch_, stopper.stopped_epoch_) == (3.0, 0, 1)


RESUME = {
    # epochs 0-3 before the checkpoint: warm-up, best 3.0, best 2.0 (epoch 2), waiting 1.
    # After it: a new best at epoch 4, then 3 epochs without improvement.
    "improves-after-resume": ([9.0, 3.0, 2.0, 2.5, 1.0, 1.5, 1.2, 1.1], [F, F, F, T], 4, 7),
    # 1.995 is not below 2.0 − 0.01: the checkpointed best (epoch 2) is the one restored.
    "restores-the-checkpointed-best": ([9.0, 3.0, 2.0, 2.5, 1.995, 2.2], [F, T], 2, 5),
}


@pytest.mark.parametrize("through_disk", [False, True], ids=["in-memory", "torch-save"])
@pytest.mark.parametrize(("values", "returned", "best_epoch", "stopped"), list(RESUME.values()),
                         ids=list(RESUME))
def test_state_dict_round_trip_continues_identically(values, returned, best_epoch, stopped,
                                                     through_disk):
    config = dict(patience=3, start_from_epoch=1, min_delta=0.01, sink=lambda message: None)
    model = bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshots = []  # the model's state at the end of each epoch
    for _ in values:
        train(model, optimizer)
        snapshots.append(snapshot(model))

    def feed(stopper, model, epochs):
        out = []
        for epoch in epochs:
            model.load_state_dict(snapshots[epoch])
            out.append(stopper.step(values[epoch], model))
            if out[-1]:
                break
        return out

    original, original_model = EarlyStopping(**config), bn_model(seed=1)
    assert feed(original, original_model, range(4)) == [F, F, F, F]
    state = original.state_dict()
    assert {k: v for k, v in state.items() if k != "best_weights"} == dict(
        best=2.0, best_epoch=2, wait=1, epoch=4, stopped_epoch=None, diverged=False)
    if through_disk:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer)
    resumed, resumed_model = EarlyStopping(**config), bn_model(seed=2)
    resumed.load_state_dict(state)

    rest = range(4, len(values))
    assert feed(original, original_model, rest) == returned
    assert feed(resumed, resumed_model, rest) == returned
    for stopper in (original, resumed):
        assert stopper.best_epoch_ == best_epoch and stopper.best_ == values[best_epoch]
        assert stopper.stopped_epoch_ == stopped and stopper.epoch_ == stopped + 1
    assert_state_equal(original_model, snapshots[best_epoch])
    assert_state_equal(resumed_model, snapshots[best_epoch])


def test_state_dict_is_a_copy():
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(patience=5)
    best = snapshot(model)
    stopper.step(2.0, model)
    state = stopper.state_dict()
    with torch.no_grad():
        model.weight.add_(1.0)
    stopper.step(1.0, model)  # overwrites the stopper's copy in place, not the saved one
    other = EarlyStopping(patience=5)
    other.load_state_dict(state)
    other.restore(model)
    assert_state_equal(model, best)


def test_load_state_dict_missing_key_raises():
    state = EarlyStopping().state_dict()
    del state["wait"]
    with pytest.raises(ValueError, match="missing wait"):
        EarlyStopping().load_state_dict(state)


# --------------------------------------------------------------------------------------------
# Bad input, repr, export.
# --------------------------------------------------------------------------------------------

BAD_CONFIG = {
    "mode-unknown": (dict(mode="mean"), ValueError, "Invalid mode value: 'mean'"),
    "mode-uppercase": (dict(mode="MIN"), ValueError, "Invalid mode value: 'MIN'"),
    "mode-none": (dict(mode=None), ValueError, "Invalid mode value: None"),
    "patience-negative": (dict(patience=-1), ValueError, "Invalid patience value: -1"),
    "patience-float": (dict(patience=2.5), TypeError, "Invalid patience value: 2.5"),
    "patience-bool": (dict(patience=True), TypeError, "Invalid patience value: True"),
    "min-delta-negative": (dict(min_delta=-0.1), ValueError, "Invalid min_delta value: -0.1"),
    "min-delta-nan": (dict(min_delta=NAN), ValueError, "Invalid min_delta value: nan"),
    "min-delta-inf": (dict(min_delta=INF), ValueError, "Invalid min_delta value: inf"),
    "min-delta-str": (dict(min_delta="0.1"), TypeError, "Invalid min_delta value: '0.1'"),
    "start-negative": (dict(start_from_epoch=-2), ValueError,
                       "Invalid start_from_epoch value: -2"),
    "start-float": (dict(start_from_epoch=1.0), TypeError, "Invalid start_from_epoch value: 1.0"),
    "restore-best-str": (dict(restore_best="yes"), TypeError,
                         "Invalid restore_best value: 'yes'"),
    "sink-not-callable": (dict(sink="log"), TypeError, "Invalid sink value: 'log'"),
    "baseline-nan": (dict(baseline=NAN), ValueError, "Invalid baseline value: nan"),
    "baseline-inf": (dict(baseline=-INF), ValueError, "Invalid baseline value: -inf"),
    "baseline-str": (dict(baseline="0.5"), TypeError, "Invalid baseline value: '0.5'"),
    "baseline-bool": (dict(baseline=True), TypeError, "Invalid baseline value: True"),
}


@pytest.mark.parametrize(("config", "error", "message"), list(BAD_CONFIG.values()),
                         ids=list(BAD_CONFIG))
def test_bad_configuration_raises_naming_the_value(config, error, message):
    with pytest.raises(error, match=re.escape(message)):
        EarlyStopping(**config)


BAD_VALUES = {
    "str": ("0.5", "Invalid value: '0.5'"),
    "none": (None, "Invalid value: None"),
    "bool": (True, "Invalid value: True"),
    "list": ([0.5], "Invalid value: [0.5]"),
    "tensor-1d": (torch.tensor([0.5, 0.6]), "tensor of shape (2,)"),
    "tensor-bool": (torch.tensor(True), "dtype torch.bool"),
}


@pytest.mark.parametrize(("value", "message"), list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_bad_value_raises_type_error_and_does_not_count(value, message):
    stopper = EarlyStopping()
    with pytest.raises(TypeError, match=re.escape(message)):
        stopper.step(value, nn.Linear(2, 1))
    assert stopper.epoch_ == 0


def test_restore_best_needs_the_model():
    stopper = EarlyStopping()
    with pytest.raises(ValueError, match=r"Invalid model value: None .*needs the model"):
        stopper.step(0.5)
    assert stopper.epoch_ == 0


# --------------------------------------------------------------------------------------------
# baseline: Keras's rule (keras/src/callbacks/early_stopping.py, on_epoch_end: an improvement
# restarts the count only if it also beats the baseline; the stop check runs on epochs that do
# not improve).
# --------------------------------------------------------------------------------------------


def test_baseline_keras_test_case():
    """Keras' own test (callbacks_test, baseline): losses 0.9, 0.8, 0.7, 0.71, 0.72, 0.73 with
    patience 5 and baseline 0.5 stop after 5 epochs and restore epoch 2."""
    model = nn.Linear(2, 1)
    messages = []
    stopper = EarlyStopping(patience=5, baseline=0.5, sink=messages.append)
    weights = {}
    returned = []
    for epoch, value in enumerate([0.9, 0.8, 0.7, 0.71, 0.72, 0.73]):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        weights[epoch] = model.weight.detach().clone()
        returned.append(stopper.step(value, model))
        if returned[-1]:
            break
    assert returned == [False, False, False, False, True]
    assert (stopper.stopped_epoch_, stopper.best_epoch_, stopper.best_) == (4, 2, 0.7)
    assert torch.equal(model.weight, weights[2])
    assert messages == ["EarlyStopping: stopped at epoch 4 (baseline 0.5 not beaten for 5 "
                        "epochs); best 0.7 at epoch 2; weights restored"]


@pytest.mark.parametrize(("config", "values", "returned", "wait"), [
    # Once beaten, the baseline no longer matters: the usual patience from the last best.
    (dict(patience=2, baseline=0.5), [0.9, 0.4, 0.45, 0.46], [False] * 3 + [True], 2),
    # Improving but above the baseline: counted, never stopped on an improving epoch...
    (dict(patience=2, baseline=0.5), [0.9, 0.8, 0.7, 0.6], [False] * 4, 4),
    # ... and stopped at the first epoch that does not improve.
    (dict(patience=2, baseline=0.5), [0.9, 0.8, 0.7, 0.6, 0.6], [False] * 4 + [True], 5),
    # Beating the baseline takes min_delta too: 0.5 - 0.25 is not < 0.5 - 0.25.
    (dict(patience=1, baseline=0.5, min_delta=0.25), [0.75, 0.25, 0.5], [False, False, True],
     3),
    (dict(patience=1, baseline=0.5, min_delta=0.25), [0.75, 0.125, 0.5], [False, False, True],
     1),
    # max mode: the baseline is a value to exceed.
    (dict(mode="max", patience=1, baseline=0.9), [0.5, 0.6, 0.6], [False, False, True], 3),
    (dict(mode="max", patience=1, baseline=0.9), [0.5, 0.95, 0.9], [False, False, True], 1),
], ids=["beaten", "improving-above", "stalls-above", "min-delta-edge", "min-delta-beaten",
        "max-not-reached", "max-reached"])
def test_baseline_counts_like_keras(config, values, returned, wait):
    stopper = EarlyStopping(restore_best=False, **config)
    assert [stopper.step(v) for v in values] == returned
    assert stopper.wait_ == wait


def test_repr_shows_the_configuration():
    stopper = EarlyStopping(mode="max", patience=3, min_delta=0.01, start_from_epoch=2,
                            restore_best=False)
    assert repr(stopper) == ("EarlyStopping(mode='max', patience=3, min_delta=0.01, "
                             "start_from_epoch=2, baseline=None, restore_best=False)")
    assert repr(EarlyStopping()) == ("EarlyStopping(mode='min', patience=10, min_delta=0.0, "
                                     "start_from_epoch=0, baseline=None, restore_best=True)")


def test_public_export():
    assert "EarlyStopping" in regtorch.__all__
    assert regtorch.EarlyStopping is regtorch.callbacks.EarlyStopping

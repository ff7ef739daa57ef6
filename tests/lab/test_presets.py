"""The presets reproduce the seed posts' findings, asserted from the summary.json `regtorch run`
writes (5 seeds, the presets' own epochs: the numbers a user gets from `regtorch demo`)."""

from __future__ import annotations

import json

import pytest

from regtorch.lab.cli import main


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cache: dict[str, dict] = {}

    def summary(name: str) -> dict:
        if name not in cache:
            assert main(["run", name, "--out", str(out)]) == 0
            cache[name] = json.loads((out / name / "summary.json").read_text())
        return cache[name]

    return summary


def test_d2l_highdim(summaries):
    s = summaries("d2l-highdim")["variants"]
    # Without a penalty, n=50 < d=200 overfits massively (the d2l plot's gap).
    assert s["none"]["test_loss"] / s["none"]["train_loss"] > 100
    assert s["l2-3"]["test_loss"] < 0.05
    # Built-in SGD weight_decay=3 on the weight is L2(3) on the weight, by construction.
    for key in ("train_loss", "val_loss", "test_loss", "weight_norm"):
        assert s["wd-3"][key] == pytest.approx(s["l2-3"][key], rel=1e-6)
    # A proximal step makes exact zeros; a subgradient never does.
    assert s["prox-l1-1"]["sparsity"] > 0
    assert s["prox-l1-0.1"]["sparsity"] > 0
    assert s["l1-1"]["sparsity"] == 0
    # λ = 1 is above λ_max: the exact answer is w = 0, a constant predictor; the verdict says so.
    assert s["prox-l1-1"]["sparsity"] == 1.0
    assert s["prox-l1-1"]["lambda_max"] < 1
    assert "constant" in s["prox-l1-1"]["verdict"]
    assert any("wd-3 and l2-3" in note for note in summaries("d2l-highdim")["notes"])


def test_digits(summaries):
    s = summaries("digits")["variants"]
    assert s["wd-10000"]["test_acc"] <= 0.2  # the seed's collapse: chance level
    assert "chance" in s["wd-10000"]["verdict"]
    assert s["none"]["test_acc"] > 0.85


def test_mlp_synthetic(summaries):
    s = summaries("mlp-synthetic")["variants"]
    for name in ("dropout-0.3", "wd-0.01"):
        assert s[name]["test_train_ratio"] < s["none"]["test_train_ratio"], name
    grid = [c["strength"] for c in s["l2"]["candidates"]]
    assert grid == [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
    best = min(s["l2"]["candidates"], key=lambda c: c["val_loss"])  # validation chooses
    assert s["l2"]["strength"] == best["strength"]


def test_linear_1d_says_whether_it_converged(summaries):
    s = summaries("linear-1d")["variants"]
    for name in ("none", "wd-0.01"):
        # 100 full-batch steps of lr 0.01 shrink the error by 0.98^100 ≈ 0.13: not converged.
        assert s[name]["optimum_distance"] > 0.01
        assert "not converged" in s[name]["verdict"]
        assert "slope" in s[name]["verdict"] and "intercept" in s[name]["verdict"]
        assert s[name]["slope"] == pytest.approx(3.0, abs=0.5)


def test_sparse_recovery(summaries):
    s = summaries("sparse-recovery")["variants"]
    assert s["prox-l1"]["support_recall"] == 1.0
    assert s["prox-l1"]["support_precision"] > s["l1"]["support_precision"]
    assert s["l1"]["exact_zeros"] == 0 and s["l2"]["exact_zeros"] == 0
    assert s["prox-l1"]["test_loss"] < s["l2"]["test_loss"]


def test_lr_decay(summaries):
    s = summaries("lr-decay")["variants"]
    # Per step: 0.2 · 0.995^600 ≈ 0.0099 after 60 epochs of 10 batches (above the 1e-6 floor).
    assert s["exp-0.995"]["lr"] == pytest.approx(0.2 * 0.995 ** 600, rel=1e-6)
    assert s["constant"]["lr"] == 0.2

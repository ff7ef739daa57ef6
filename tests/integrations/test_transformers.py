"""regtorch.integrations.transformers against plain PyTorch loops written here, on a real Hugging
Face Trainer (CPU, offline: the models are built here, from code or from a config)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="the transformers extra is not "
                                                          "installed")

from regtorch import L1, param_groups  # noqa: E402
from regtorch.integrations.transformers import (  # noqa: E402
    Regularization,
    decay_parameter_names,
)

# The Trainer and the plain loop run the same float64 operations; the Trainer shuffles the
# samples inside the (full) batch, which only changes the summation order of the loss.
RTOL, ATOL = 1e-10, 1e-12
# The Trainer accumulates its logged ``loss`` in a float32 tensor, whatever the model's dtype.
TRAINER_LOSS_RTOL = 1e-6
LAM, LR, MOMENTUM, STEPS, N = 0.02, 0.05, 0.5, 30, 64


def data(n: int = N, d: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :3].sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g,
                                                                      dtype=torch.float64)
    return x, y


class Samples(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y = data()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Net(nn.Module):
    """A plain module with the Trainer's interface: keyword inputs, a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 1)).double()

    def forward(self, x, labels=None):
        out = self.body(x)
        if labels is None:
            return {"logits": out}
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def weights(model: Net) -> list[torch.Tensor]:
    return [model.body[0].weight, model.body[2].weight]


def l1(model: Net) -> torch.Tensor:
    return LAM * sum(w.abs().sum() for w in weights(model))


def make_optimizer(kind: str, params) -> torch.optim.Optimizer:
    if kind == "sgd-momentum":
        return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.0)


def summed_mse(outputs, labels, num_items_in_batch=None):
    """A ``compute_loss_func`` normalized over the accumulated batch, as the Trainer expects."""
    return ((outputs["logits"] - labels) ** 2).sum() / num_items_in_batch


def train(model: Net, callback: Regularization, tmp_path, *, optimizer: str = "sgd-momentum",
          accumulate: int = 1, clip: float = 0.0, steps: int = STEPS, logging_steps: int = 1,
          **trainer_kwargs: Any) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        str(tmp_path), per_device_train_batch_size=N // accumulate,
        gradient_accumulation_steps=accumulate, max_steps=steps, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=clip, weight_decay=0.0,
        optim="adamw_torch", logging_steps=logging_steps, report_to="none", save_strategy="no",
        use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False)
    if optimizer == "sgd-momentum":  # the Trainer builds its AdamW from args otherwise
        trainer_kwargs["optimizers"] = (make_optimizer(optimizer, model.parameters()), None)
    trainer = transformers.Trainer(model, args, train_dataset=Samples(), callbacks=[callback],
                                   **trainer_kwargs)
    trainer.train()
    return trainer


def soft_threshold_(w: torch.Tensor, tau: Any) -> None:
    w.copy_(torch.sign(w) * torch.clamp(w.abs() - tau, min=0.0))


def plain_loop(kind: str = "sgd-momentum", *, mode: str, clip: float = 0.0,
               steps: int = STEPS) -> tuple[Net, list[dict[str, float]]]:
    """Full-batch training by hand. ``mode="prox"``: soft-thresholding by the effective step
    (lr/(1−μ), or AdamW's lr/(√v̂ + ε) from its own state); ``"loss"``: λ‖W‖₁ in the loss, then
    clipping; ``"grad"``: the data gradient clipped, then λ·sign(W) added (torch's weight_decay
    order). Returns the model and, per step, the data loss and penalty at the step's weights."""
    model = Net()
    x, y = data()
    optimizer = make_optimizer(kind, model.parameters())
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x)["logits"], y)
        penalty = l1(model)
        history.append({"data_loss": loss.item(), "penalty": penalty.item()})
        (loss + penalty if mode == "loss" else loss).backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if mode == "grad":
            with torch.no_grad():
                for w in weights(model):
                    w.grad.add_(LAM * torch.sign(w))
        optimizer.step()
        if mode == "prox":
            with torch.no_grad():
                for w in weights(model):
                    if kind == "sgd-momentum":
                        t: Any = LR / (1 - MOMENTUM)
                    else:
                        state, group = optimizer.state[w], optimizer.param_groups[0]
                        bias_correction = 1 - group["betas"][1] ** float(state["step"])
                        v_hat = state["exp_avg_sq"] / bias_correction
                        t = LR / (v_hat.sqrt() + group["eps"])
                    soft_threshold_(w, t * LAM)
    return model, history


def assert_same_weights(actual: Net, expected: Net) -> None:
    for (name, a), b in zip(actual.named_parameters(), expected.parameters()):
        assert torch.equal(a == 0, b == 0), f"zero pattern of {name} differs"
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=f"{name} differs")


def train_records(trainer: transformers.Trainer) -> list[dict[str, float]]:
    return [r for r in trainer.state.log_history if "loss" in r]


@pytest.mark.parametrize("kind", ["sgd-momentum", "adamw"])
def test_prox_mode_matches_a_plain_proximal_loop(kind, tmp_path):
    model = Net()
    train(model, Regularization(L1(LAM), mode="prox"), tmp_path, optimizer=kind)
    expected, _ = plain_loop(kind, mode="prox")
    assert_same_weights(model, expected)
    assert sum(int((w == 0).sum()) for w in weights(model)) > 0, "no exact zero: proves nothing"


@pytest.mark.parametrize("clip", [0.0, 0.5], ids=["no-clip", "clip-0.5"])
@pytest.mark.parametrize("mode", ["grad", "loss"])
def test_grad_and_loss_modes_match_plain_loops(mode, clip, tmp_path):
    """Two micro-batches per step. Without clipping both modes are one run; with clipping the
    loss term is clipped with the data gradient and the fused gradient is not."""
    model = Net()
    callback = Regularization(L1(LAM), mode=mode)
    extra = {"compute_loss_func": callback.compute_loss_func(summed_mse)} if mode == "loss" else {}
    train(model, callback, tmp_path, accumulate=2, clip=clip, **extra)
    expected, _ = plain_loop(mode=mode, clip=clip)
    assert_same_weights(model, expected)
    if not clip:
        assert_same_weights(model, plain_loop(mode="grad" if mode == "loss" else "loss")[0])


@pytest.mark.parametrize("mode", ["grad", "loss", "prox"])
def test_logs_the_penalty_apart_from_the_loss(mode, tmp_path):
    steps = 4
    model = Net()
    callback = Regularization(L1(LAM), mode=mode)
    extra = {"compute_loss_func": callback.compute_loss_func(summed_mse)} if mode == "loss" else {}
    trainer = train(model, callback, tmp_path, steps=steps, logging_steps=2, **extra)
    _, history = plain_loop(mode=mode, steps=steps)
    # Each record averages the optimizer steps since the previous one, as the Trainer's loss does.
    windows = [history[0:2], history[2:4]]
    records = train_records(trainer)
    assert len(records) == len(windows)
    for record, window in zip(records, windows):
        penalty = sum(h["penalty"] for h in window) / 2
        data_loss = sum(h["data_loss"] for h in window) / 2
        assert record["penalty"] == pytest.approx(penalty, rel=RTOL)
        if mode == "loss":
            assert record["data_loss"] == pytest.approx(data_loss, rel=RTOL)
            assert record["loss"] == pytest.approx(data_loss + penalty, rel=TRAINER_LOSS_RTOL)
        else:
            assert "data_loss" not in record
            assert record["loss"] == pytest.approx(data_loss, rel=TRAINER_LOSS_RTOL)


def test_hooks_are_removed_when_training_ends(tmp_path):
    model = Net()
    trainer = train(model, Regularization(L1(LAM), mode="prox"), tmp_path, steps=2)
    optimizer = trainer.optimizer.optimizer
    assert not optimizer._optimizer_step_pre_hooks
    assert not optimizer._optimizer_step_post_hooks


def test_loss_mode_needs_its_compute_loss_func(tmp_path):
    with pytest.raises(RuntimeError, match="compute_loss_func"):
        train(Net(), Regularization(L1(LAM), mode="loss"), tmp_path, steps=1)
    callback = Regularization(L1(LAM), mode="grad")
    with pytest.raises(ValueError, match="compute_loss_func is for mode='loss'"):
        train(Net(), callback, tmp_path, steps=1,
              compute_loss_func=callback.compute_loss_func(summed_mse))


def tiny_bert() -> nn.Module:
    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16,
                                     max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def test_decay_parameter_names_become_the_trainers_decay_group(tmp_path):
    class RegtorchTrainer(transformers.Trainer):
        def get_decay_parameter_names(self, model):
            return decay_parameter_names(model)

    model = tiny_bert()
    args = transformers.TrainingArguments(str(tmp_path), weight_decay=0.01, report_to="none",
                                          use_cpu=True)
    optimizer = RegtorchTrainer(model, args).create_optimizer()
    decayed = [{id(p) for p in g["params"]} for g in optimizer.param_groups
               if g["weight_decay"] == 0.01]
    expected = param_groups(model, 0.01)
    assert decayed == [{id(p) for p in expected[0]["params"]}]
    assert expected[0]["weight_decay"] == 0.01
    names = decay_parameter_names(model)
    assert "classifier.weight" in names and "classifier.bias" not in names
    assert not any("LayerNorm" in n for n in names)


class Recorder(transformers.TrainerCallback):
    """Stands for a report_to integration: keeps the logs it is given."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_callbacks_placed_before_it_see_the_penalty_once_it_is_moved_first(tmp_path):
    model = Net()
    callback, recorder = Regularization(L1(LAM), mode="prox"), Recorder()
    args = transformers.TrainingArguments(
        str(tmp_path), per_device_train_batch_size=N, max_steps=2, learning_rate=LR,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model, args, train_dataset=Samples(),
                                   callbacks=[recorder, callback])
    trainer.callback_handler.callbacks.insert(0, trainer.pop_callback(callback))
    trainer.train()
    train_logs = [logs for logs in recorder.logs if "loss" in logs]
    assert len(train_logs) == 2
    assert all("penalty" in logs for logs in train_logs)


def test_prox_mode_on_a_bert_built_from_a_config(tmp_path):
    """A transformers model with the Trainer's own AdamW (two param groups, built from args):
    the same weights and zeros as AdamW plus soft-thresholding by lr/(√v̂ + ε), by hand."""
    rules = {"classifier.weight": L1(LAM), "bert.pooler.dense.weight": L1(LAM)}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (16, 8), generator=g)
    labels = torch.randint(0, 2, (16,), generator=g)
    samples = [{"input_ids": i, "labels": t} for i, t in zip(ids, labels)]

    def model() -> nn.Module:
        torch.manual_seed(2)
        config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=16,
                                         max_position_embeddings=16, num_labels=2,
                                         hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0)
        return transformers.BertForSequenceClassification(config).double()

    trained = model()
    args = transformers.TrainingArguments(
        str(tmp_path), per_device_train_batch_size=16, max_steps=10, learning_rate=LR,
        lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, optim="adamw_torch",
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
    transformers.Trainer(trained, args, train_dataset=samples,
                         callbacks=[Regularization(rules, mode="prox")]).train()

    expected = model()
    optimizer = torch.optim.AdamW(expected.parameters(), lr=LR, weight_decay=0.0)
    penalized = [expected.get_parameter(name) for name in rules]
    for _ in range(10):
        optimizer.zero_grad()
        expected(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        with torch.no_grad():
            for w in penalized:
                state, group = optimizer.state[w], optimizer.param_groups[0]
                bias_correction = 1 - group["betas"][1] ** float(state["step"])
                soft_threshold_(w, LR / ((state["exp_avg_sq"] / bias_correction).sqrt()
                                         + group["eps"]) * LAM)
    for name in rules:
        a, b = trained.get_parameter(name), expected.get_parameter(name)
        assert torch.equal(a == 0, b == 0), f"zero pattern of {name} differs"
        assert int((a == 0).sum()) > 0, f"no exact zero in {name}: proves nothing"
    for (name, a), b in zip(trained.named_parameters(), expected.parameters()):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=f"{name} differs")

"""regtorch.integrations.lightning against plain PyTorch loops written here (float64 throughout:
Lightning's ``precision="64-true"``), on a real Lightning Trainer (CPU, one process)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")

from regtorch import L1, Orthogonal  # noqa: E402
from regtorch.integrations.lightning import Regularization  # noqa: E402

# Most fits here train without validation data, although the module can validate.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no")

# Lightning and the plain loop run the same float64 operations in the same order; what differs is
# the summation order of a few reductions (e.g. a loss divided by accumulate_grad_batches).
RTOL, ATOL = 1e-10, 1e-12
LAM, LR, MOMENTUM, STEPS = 0.02, 0.05, 0.5, 30


def data(n: int = 64, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :3].sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g,
                                                                      dtype=torch.float64)
    return x, y


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def make_optimizer(kind: str, params) -> torch.optim.Optimizer:
    if kind == "sgd-momentum":
        return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    return torch.optim.Adam(params, lr=LR)


class Module(pl.LightningModule):
    def __init__(self, optimizer: str = "sgd-momentum") -> None:
        super().__init__()
        self.model = make_model()
        self.optimizer_kind = optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def configure_optimizers(self):
        return make_optimizer(self.optimizer_kind, self.parameters())


class MemoryLogger(pl.loggers.Logger):
    """Lightning's logger interface, keeping every record in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def series(self, key: str) -> list[float]:
        return [m[key] for _, m in self.records if key in m]


def fit(module: pl.LightningModule, callback: Regularization, *, batch_size: int = 64,
        epochs: int = STEPS, val: bool = False, **trainer_kwargs: Any) -> MemoryLogger:
    logger = MemoryLogger()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, precision="64-true",
                         logger=logger, callbacks=[callback], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, log_every_n_steps=1, **trainer_kwargs)
    loader = DataLoader(TensorDataset(*data()), batch_size=batch_size)
    val_loader = DataLoader(TensorDataset(*data(seed=1)), batch_size=32) if val else None
    trainer.fit(module, loader, val_loader)
    return logger


def soft_threshold_(w: torch.Tensor, tau: torch.Tensor | float) -> None:
    w.copy_(torch.sign(w) * torch.clamp(w.abs() - tau, min=0.0))


def plain_prox_loop(kind: str, steps: int = STEPS) -> nn.Module:
    """Proximal gradient with the optimizer's effective step, by hand: lr/(1−μ) for heavy-ball
    SGD, lr/(√v̂ + ε) per element for Adam (v̂ from Adam's own state)."""
    model = make_model()
    x, y = data()
    optimizer = make_optimizer(kind, model.parameters())
    weights = [model[0].weight, model[2].weight]
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        with torch.no_grad():
            for w in weights:
                if kind == "sgd-momentum":
                    t: Any = LR / (1 - MOMENTUM)
                else:
                    state, (_, beta2) = optimizer.state[w], optimizer.param_groups[0]["betas"]
                    v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
                    t = LR / (v_hat.sqrt() + optimizer.param_groups[0]["eps"])
                soft_threshold_(w, t * LAM)
    return model


def l1(model: nn.Module) -> torch.Tensor:
    return LAM * (model[0].weight.abs().sum() + model[2].weight.abs().sum())


def plain_subgradient_loop(accumulate: int = 1, clip: float | None = None) -> nn.Module:
    """``loss + λ‖W‖₁`` by autograd, micro-batches averaged as Lightning does, optional clipping."""
    model = make_model()
    x, y = data()
    optimizer = make_optimizer("sgd-momentum", model.parameters())
    for _ in range(STEPS):
        optimizer.zero_grad()
        for xb, yb in zip(x.chunk(accumulate), y.chunk(accumulate)):
            ((nn.functional.mse_loss(model(xb), yb) + l1(model)) / accumulate).backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return model


def assert_same_weights(actual: nn.Module, expected: nn.Module) -> None:
    for (name, a), b in zip(actual.named_parameters(), expected.parameters()):
        assert torch.equal(a == 0, b == 0), f"zero pattern of {name} differs"
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=f"{name} differs")


@pytest.mark.parametrize("kind", ["sgd-momentum", "adam"])
def test_prox_mode_matches_a_plain_proximal_loop(kind):
    module = Module(kind)
    fit(module, Regularization(L1(LAM), mode="prox"))
    expected = plain_prox_loop(kind)
    assert_same_weights(module.model, expected)
    zeros = sum(int((w == 0).sum()) for w in (module.model[0].weight, module.model[2].weight))
    assert zeros > 0, "the proximal steps made no exact zero: the test proves nothing"


@pytest.mark.parametrize(("accumulate", "clip"), [(1, None), (2, None), (2, 0.5)],
                         ids=["plain", "accumulate-2", "accumulate-2-clip-0.5"])
@pytest.mark.parametrize("mode", ["grad", "loss"])
def test_grad_and_loss_modes_match_the_penalty_in_the_loss(mode, accumulate, clip):
    module = Module()
    fit(module, Regularization(L1(LAM), mode=mode), batch_size=64 // accumulate,
        accumulate_grad_batches=accumulate, gradient_clip_val=clip)
    expected = plain_subgradient_loop(accumulate, clip)
    assert_same_weights(module.model, expected)


@pytest.mark.parametrize("mode", ["grad", "loss", "prox"])
def test_logs_data_loss_and_penalty_apart(mode):
    epochs = 3
    module = Module()
    logger = fit(module, Regularization(L1(LAM), mode=mode), epochs=epochs, val=True)
    # Independent: a plain loop recording, at each step, the loss and λ‖W‖₁ at the weights the
    # step starts from, and the validation loss after each epoch (one batch per epoch).
    model = make_model()
    x, y = data()
    xv, yv = data(seed=1)
    optimizer = make_optimizer("sgd-momentum", model.parameters())
    losses, penalties, val_losses = [], [], []
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        penalties.append(l1(model).item())
        if mode == "prox":
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for w in (model[0].weight, model[2].weight):
                    soft_threshold_(w, LR / (1 - MOMENTUM) * LAM)
        else:
            (loss + l1(model)).backward()
            optimizer.step()
        with torch.no_grad():
            val_losses.append(sum(nn.functional.mse_loss(model(a), b).item()
                                  for a, b in zip(xv.split(32), yv.split(32))) / 2)
    assert logger.series("train/data_loss") == pytest.approx(losses, rel=RTOL)
    assert logger.series("train/penalty") == pytest.approx(penalties, rel=RTOL)
    assert logger.series("val/data_loss") == pytest.approx(val_losses, rel=RTOL)


def test_fit_leaves_the_module_and_optimizer_as_they_were():
    module = Module()
    callback = Regularization(L1(LAM), mode="prox")
    fit(module, callback, epochs=1)
    assert "training_step" not in vars(module)
    optimizer = module.trainer.optimizers[0]
    assert not optimizer._optimizer_step_post_hooks
    assert [n for n, _ in callback.regularizer_.named_parameters()] == ["model.0.weight",
                                                                        "model.2.weight"]


def test_an_instance_training_step_is_used_and_put_back():
    module = Module()
    calls = []

    def training_step(batch, batch_idx):
        calls.append(batch_idx)
        return Module.training_step(module, batch, batch_idx)

    module.training_step = training_step
    fit(module, Regularization(L1(LAM), mode="loss"), epochs=2)
    assert calls == [0, 0]
    assert vars(module)["training_step"] is training_step


def test_strengths_go_into_checkpoints():
    callback = Regularization(L1(LAM))
    fit(Module(), callback, epochs=1)
    state = callback.state_dict()
    restored = Regularization(L1(1.0))
    restored.load_state_dict(state)
    fit(Module(), restored, epochs=1)
    assert math.isclose(restored.regularizer_.rules[0][1].lam, LAM)


class ManualModule(Module):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        optimizer.step()
        return loss


def test_manual_optimization_grad_mode_matches_the_penalty_in_the_loss():
    module = ManualModule()
    fit(module, Regularization(L1(LAM), mode="grad"))
    assert_same_weights(module.model, plain_subgradient_loop())


def test_invalid_configurations_raise():
    with pytest.raises(ValueError, match="Invalid mode value: 'decay'"):
        Regularization(L1(LAM), mode="decay")
    with pytest.raises(ValueError, match="'loss' needs automatic optimization"):
        fit(ManualModule(), Regularization(L1(LAM), mode="loss"), epochs=1)
    with pytest.raises(TypeError, match="has no proximal step"):
        fit(Module(), Regularization(Orthogonal(LAM), mode="prox"), epochs=1)

    class Ascending(Module):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, maximize=True)

    with pytest.raises(ValueError, match="maximize=True"):
        fit(Ascending(), Regularization(L1(LAM), mode="grad"), epochs=1)
    with pytest.raises(ValueError, match="maximize"):
        fit(Ascending(), Regularization(L1(LAM), mode="prox"), epochs=1)


# float16 autocast: the same float32 weights and operations as the plain loop below, rounded the
# same way; kept apart from the float64 RTOL because it is another precision.
FLOAT16_AMP_RTOL, FLOAT16_AMP_ATOL = 1e-6, 1e-7


@pytest.mark.parametrize("mode", ["grad", "loss"])
def test_grad_and_loss_modes_under_a_gradient_scaler(mode):
    """Lightning's 16-mixed plugin with a GradScaler (on CPU, passed explicitly): the fused
    gradient is added after unscaling, so it is the true ∇R (added before, it would be 2¹⁶×
    too small), and both modes equal a plain autocast + GradScaler loop."""
    module = Module()
    module.model.float()
    scaler = torch.amp.GradScaler("cpu")
    precision = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = pl.Trainer(max_epochs=STEPS, accelerator="cpu", devices=1, plugins=[precision],
                         logger=False, callbacks=[Regularization(L1(LAM), mode=mode)],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    x, y = (t.float() for t in data())
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=64))
    assert scaler.get_scale() > 1.0, "no loss scaling happened: the test proves nothing"

    model = make_model().float()
    optimizer = make_optimizer("sgd-momentum", model.parameters())
    plain_scaler = torch.amp.GradScaler("cpu")
    for _ in range(STEPS):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x), y)
        plain_scaler.scale(loss + l1(model)).backward()
        plain_scaler.step(optimizer)
        plain_scaler.update()
    for (name, a), b in zip(module.model.named_parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=FLOAT16_AMP_RTOL, atol=FLOAT16_AMP_ATOL,
                                   msg=f"{name} differs")

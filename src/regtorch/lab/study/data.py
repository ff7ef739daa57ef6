"""The studies' data, generated or shipped offline: train / validation / test tensors.

* ``linear``: y = x·w + b + ε, x ~ N(x_mean, x_std²) per feature, ε ~ N(noise_mean, noise_std²),
  all three splits drawn from the same generator (the validation set is fresh data, as the test
  set is). With ``nonzeros = k``, k features chosen at random get weight ±``weights`` (random
  signs) and the rest 0: the true support is known.
* ``digits``: scikit-learn's bundled 8×8 digits (1797 images, no download), pixels / 16, split
  stratified into train / validation / the rest as test.

The user's own data (``csv``, ``npz``, ``python``, ``sklearn``) is loaded by
:mod:`regtorch.lab.study.sources`. Everything is drawn from ``data_seed`` alone: every member of a
study sees the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from regtorch.lab.study.spec import DataSpec, Source

__all__ = ["Datasets", "make_data"]


@dataclass(frozen=True)
class Datasets:
    """Inputs ``x_*`` (n, features) or (n, C, H, W) and targets ``y_*``: (n, outputs) floats, or
    (n,) class indices.

    ``classes`` names the classes of a classification target (index i is ``classes[i]``);
    ``notes`` are lines for the console and the report (how the task was inferred, what was
    encoded or dropped).
    """

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    true_weights: Tensor | None = None  # linear data: the generating w (features,)
    true_bias: float | None = None
    classes: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()

    @property
    def features(self) -> int:
        """Input values per example (the size of a flat example; C·H·W for images)."""
        return math.prod(self.input_shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: (features,), or (C, H, W) for images."""
        return tuple(self.x_train.shape[1:])

    @property
    def classification(self) -> bool:
        return not self.y_train.is_floating_point()

    @property
    def outputs(self) -> int:
        """Model outputs: the target's columns for regression, the classes for classification."""
        if self.y_train.is_floating_point():
            return self.y_train.shape[1] if self.y_train.ndim == 2 else 1
        if self.classes is not None:
            return len(self.classes)
        return int(torch.cat([self.y_train, self.y_val, self.y_test]).max()) + 1

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def make_data(spec: DataSpec | Source, seed: int, dtype: torch.dtype = torch.float32
              ) -> Datasets:
    """The study's data, drawn from ``seed`` (a private generator: global RNG state untouched).

    Raises:
        StudyError: the user's data (csv, npz, python, sklearn) cannot be loaded; the message
            names the key and the value.
    """
    if not isinstance(spec, DataSpec):
        # the user's data needs pandas and scikit-learn: imported when a study uses it
        from regtorch.lab.study.sources import load_source

        return load_source(spec, seed, dtype)
    if spec.kind == "digits":
        return _digits(spec, seed, dtype)
    return _linear(spec, seed, dtype)


def _linear(spec: DataSpec, seed: int, dtype: torch.dtype) -> Datasets:
    gen = torch.Generator().manual_seed(seed)
    d = spec.features
    if spec.nonzeros is not None:
        w = torch.zeros(d, dtype=torch.float64)
        support = torch.randperm(d, generator=gen)[:spec.nonzeros]
        signs = torch.randint(0, 2, (spec.nonzeros,), generator=gen) * 2 - 1
        w[support] = float(spec.weights) * signs.to(torch.float64)  # type: ignore[arg-type]
    elif isinstance(spec.weights, tuple):
        w = torch.tensor(spec.weights, dtype=torch.float64)
    else:
        w = torch.full((d,), float(spec.weights), dtype=torch.float64)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, d, generator=gen, dtype=torch.float64) * spec.x_std + spec.x_mean
        noise = torch.randn(n, generator=gen, dtype=torch.float64) * spec.noise_std
        y = x @ w + spec.bias + noise + spec.noise_mean
        return x.to(dtype), y.to(dtype).unsqueeze(1)

    x_train, y_train = draw(spec.train)
    x_val, y_val = draw(spec.val)
    x_test, y_test = draw(spec.test)
    return Datasets(x_train, y_train, x_val, y_val, x_test, y_test, true_weights=w.to(dtype),
                    true_bias=spec.bias)


def _digits(spec: DataSpec, seed: int, dtype: torch.dtype) -> Datasets:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, train_size=spec.train, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, train_size=spec.val, stratify=y_rest, random_state=seed)

    def features(a) -> Tensor:
        return torch.as_tensor(a, dtype=dtype) / 16.0

    def labels(a) -> Tensor:
        return torch.as_tensor(a, dtype=torch.long)

    return Datasets(features(x_train), labels(y_train), features(x_val), labels(y_val),
                    features(x_test), labels(y_test))

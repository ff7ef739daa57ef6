"""How the lab writes a number, defined once: the tables, the verdicts and the notes call these,
so a value reads the same in the comparison table and in the sentence about it.

>>> loss_text(0.0123456), ratio_text(1.23456), fraction_text(0.5), strength_text(1e-3)
('0.01235', '1.23', '50.0%', '0.001')
>>> mean_std_text(0.0123456, 0.00123), mean_std_text(0.5, 0.0), mean_std_text(None, None)
('0.01235 ± 0.0012', '0.5', '—')
"""

from __future__ import annotations

__all__ = ["fraction_text", "lambda_text", "loss_text", "mean_std_text", "ratio_text",
           "strength_text"]


def loss_text(value: float) -> str:
    """A mean over seeds — a loss, an accuracy, a norm: 4 significant digits."""
    return f"{value:.4g}"


def ratio_text(value: float) -> str:
    """A ratio of two means (test/train): 3 significant digits."""
    return f"{value:.3g}"


def fraction_text(value: float) -> str:
    """A fraction (sparsity) as a percentage with one decimal: ``"12.5%"``."""
    return f"{value:.1%}"


def strength_text(value: float) -> str:
    """A strength the user wrote in the study (``1e-3`` → ``"0.001"``): as Python's ``g``."""
    return f"{value:g}"


def lambda_text(value: float) -> str:
    """A λ of a sweep's grid (log-spaced, so rarely round): 4 significant digits."""
    return f"{value:.4g}"


def mean_std_text(mean: float | None, std: float | None) -> str:
    """``"0.01234 ± 0.0012"`` (the mean as :func:`loss_text`, the spread with 2 significant
    digits), ``"0.01234"`` without a spread, ``"—"`` without a value: how every table of the
    lab shows a mean over seeds."""
    if mean is None:
        return "—"
    return f"{loss_text(mean)} ± {std:.2g}" if std else loss_text(mean)

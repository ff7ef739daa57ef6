"""Optimizer companions: parameter groups for built-in ``weight_decay``, learning-rate decay with a
floor, and :class:`Proximal`, which adds a regularizer's proximal step to any supported optimizer
with the optimizer's effective step size."""

from regtorch.optim.groups import param_groups
from regtorch.optim.proximal import Proximal
from regtorch.optim.schedule import exponential_decay

__all__ = ["Proximal", "exponential_decay", "param_groups"]

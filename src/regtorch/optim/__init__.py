"""Optimizer companions: parameter groups for built-in ``weight_decay``, learning-rate decay with a
floor, and :func:`attach_prox` (with its one-object form :class:`Proximal`), which adds a
regularizer's proximal step to the user's own optimizer at the optimizer's effective step size."""

from regtorch.optim.groups import param_groups
from regtorch.optim.proximal import ProxHandle, Proximal, attach_prox
from regtorch.optim.schedule import exponential_decay

__all__ = ["ProxHandle", "Proximal", "attach_prox", "exponential_decay", "param_groups"]

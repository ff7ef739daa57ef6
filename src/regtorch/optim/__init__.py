"""Optimizer companions: parameter groups for built-in ``weight_decay``, learning-rate decay with a
floor, :func:`attach_prox` (with its one-object form :class:`Proximal`), which adds a
regularizer's proximal step to the user's own optimizer at the optimizer's effective step size, and
:func:`attach_grad`, which adds its fused gradient before each step (right under ``maximize``)."""

from regtorch.optim.grad import GradHandle, attach_grad
from regtorch.optim.groups import param_groups
from regtorch.optim.proximal import ProxHandle, Proximal, attach_prox
from regtorch.optim.schedule import exponential_decay

__all__ = [
    "GradHandle",
    "ProxHandle",
    "Proximal",
    "attach_grad",
    "attach_prox",
    "exponential_decay",
    "param_groups",
]

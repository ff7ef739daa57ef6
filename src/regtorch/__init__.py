"""regtorch: explicit, correct and fast regularization for PyTorch.

Penalties (:class:`L1`, :class:`L2`, :class:`ElasticNet`, :class:`GroupLasso`, :class:`Orthogonal`)
bound to a model's parameters by a :class:`Regularizer`, applied as a loss term (``reg()``), a fused
gradient (``reg.add_grad_()``) or a proximal step (``reg.prox_(step)``); :func:`param_groups` gives
torch's built-in ``weight_decay`` the same selection.
"""

from regtorch.optim import param_groups
from regtorch.penalties import L1, L2, ElasticNet, GroupLasso, Orthogonal, Penalty, Sum
from regtorch.regularizer import Regularizer
from regtorch.selection import ALL, NORM_LAYERS, WEIGHTS, Selector, inside, named, where

__version__ = "0.1.0"

__all__ = [
    "ALL",
    "L1",
    "L2",
    "NORM_LAYERS",
    "WEIGHTS",
    "ElasticNet",
    "GroupLasso",
    "Orthogonal",
    "Penalty",
    "Regularizer",
    "Selector",
    "Sum",
    "inside",
    "named",
    "param_groups",
    "where",
]

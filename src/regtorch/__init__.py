"""regtorch: explicit, correct and fast regularization for PyTorch.

Penalties (:class:`L1`, :class:`L2`, :class:`ElasticNet`, :class:`GroupLasso`, :class:`Orthogonal`)
bound to a model's parameters by a :class:`Regularizer`, applied as a loss term (``reg()``), a fused
gradient (``reg.add_grad_()``, or :func:`attach_grad` before each step of the user's optimizer) or
a proximal step (``reg.prox_(step)``, or :func:`attach_prox` after each step, :class:`Proximal`
around the optimizer); :func:`select` lists what a selector picks and :func:`param_groups` gives
torch's built-in ``weight_decay`` the same selection. Training companions:
:func:`exponential_decay`, :class:`EarlyStopping`, :class:`ActivityRegularizer`, the constraints
(:class:`MaxNorm`, :class:`UnitNorm`, :class:`MinMaxNorm`, :class:`NonNeg`, :class:`Constraints`)
and the dropout helpers (:func:`set_dropout`, :func:`dropout_modules`).
Structured sparsity: :func:`channel_groups`, :class:`ChannelLasso`, :class:`ChannelSparsity`,
:func:`compact`, :func:`carry_optimizer` (:mod:`regtorch.structure`).
"""

from regtorch.activity import ActivityRegularizer
from regtorch.callbacks import EarlyStopping
from regtorch.constraints import Constraint, Constraints, MaxNorm, MinMaxNorm, NonNeg, UnitNorm
from regtorch.dropout import dropout_modules, set_dropout
from regtorch.optim import (
    GradHandle,
    ProxHandle,
    Proximal,
    attach_grad,
    attach_prox,
    exponential_decay,
    param_groups,
)
from regtorch.penalties import L1, L2, ElasticNet, GroupLasso, Orthogonal, Penalty, Sum
from regtorch.regularizer import Regularizer
from regtorch.selection import (
    ALL,
    NORM_LAYERS,
    POSITION_NAMES,
    POSITION_TABLES,
    WEIGHTS,
    Selector,
    inside,
    named,
    select,
    weights,
    where,
)
from regtorch.structure import (
    ChannelGroups,
    ChannelLasso,
    ChannelSparsity,
    Compaction,
    carry_optimizer,
    channel_groups,
    compact,
    compaction_of,
)

__version__ = "0.1.0"

__all__ = [
    "ALL",
    "L1",
    "L2",
    "NORM_LAYERS",
    "POSITION_NAMES",
    "POSITION_TABLES",
    "WEIGHTS",
    "ActivityRegularizer",
    "ChannelGroups",
    "ChannelLasso",
    "ChannelSparsity",
    "Compaction",
    "Constraint",
    "Constraints",
    "EarlyStopping",
    "ElasticNet",
    "GradHandle",
    "GroupLasso",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Orthogonal",
    "Penalty",
    "ProxHandle",
    "Proximal",
    "Regularizer",
    "Selector",
    "Sum",
    "UnitNorm",
    "attach_grad",
    "attach_prox",
    "carry_optimizer",
    "channel_groups",
    "compact",
    "compaction_of",
    "dropout_modules",
    "exponential_decay",
    "inside",
    "named",
    "param_groups",
    "select",
    "set_dropout",
    "weights",
    "where",
]

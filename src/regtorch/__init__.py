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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names, for type checkers; at run time they come from __getattr__
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

# Imported on first use (PEP 562): ``import regtorch`` does not import torch, so the ``regtorch``
# command's ``list``, ``--help`` and ``--version`` start at once.
_MODULES: dict[str, tuple[str, ...]] = {
    "regtorch.activity": ("ActivityRegularizer",),
    "regtorch.callbacks": ("EarlyStopping",),
    "regtorch.constraints": ("Constraint", "Constraints", "MaxNorm", "MinMaxNorm", "NonNeg",
        "UnitNorm"),
    "regtorch.dropout": ("dropout_modules", "set_dropout"),
    "regtorch.optim": ("GradHandle", "ProxHandle", "Proximal", "attach_grad", "attach_prox",
        "exponential_decay", "param_groups"),
    "regtorch.penalties": ("L1", "L2", "ElasticNet", "GroupLasso", "Orthogonal", "Penalty", "Sum"),
    "regtorch.regularizer": ("Regularizer",),
    "regtorch.selection": ("ALL", "NORM_LAYERS", "POSITION_NAMES", "POSITION_TABLES", "WEIGHTS",
        "Selector", "inside", "named", "select", "weights", "where"),
    "regtorch.structure": ("ChannelGroups", "ChannelLasso", "ChannelSparsity", "Compaction",
        "carry_optimizer", "channel_groups", "compact", "compaction_of"),
}
_HOMES = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'regtorch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

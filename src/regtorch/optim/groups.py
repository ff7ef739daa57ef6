"""Parameter groups for torch's built-in ``weight_decay``.

``torch.optim``'s ``weight_decay`` decays every parameter it is given, biases and normalization
gains included. :func:`param_groups` splits a model's trainable parameters the way a
:class:`~regtorch.Regularizer` selects them, so the built-in (and AdamW's decoupled) decay acts on
exactly what a regtorch penalty would.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from regtorch._strength import validate_strength
from regtorch.selection import WEIGHTS, as_selector, assign, collect, is_rules, parse_rules

__all__ = ["param_groups"]


def param_groups(model: nn.Module, weight_decay: float, rules: Any = None) -> list[dict[str, Any]]:
    """``[decay group, no-decay group]`` for any torch optimizer (empty groups dropped).

    Args:
        model: the model (``DistributedDataParallel``/``torch.compile`` wrappers looked through).
        weight_decay: the decay of the first group (≥ 0); the second group gets 0.
        rules: what to decay: ``None`` for :data:`~regtorch.WEIGHTS`; a selector spec (glob, module
            type or instance, predicate, Selector); or the rules of a
            :class:`~regtorch.Regularizer` (a dict or list of ``(selector, penalty or None)``
            pairs), in which case exactly the parameters that Regularizer would penalize decay.

    Returns:
        ``[{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``
        without the empty ones. Frozen parameters are left out; tied weights appear once.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        >>> groups = param_groups(model, weight_decay=0.05)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.05), (3, 0.0)]
        >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
    """
    weight_decay = validate_strength(weight_decay, "weight_decay")
    if not isinstance(weight_decay, float):
        raise TypeError(f"Invalid weight_decay value: {weight_decay!r} (expected a float)")
    default = rules is None
    if default:
        rules = [(WEIGHTS, True)]
    elif is_rules(rules):
        rules = [(s, v is not None) for s, v in parse_rules(rules, lambda v: True, "a penalty")]
    else:
        rules = [(as_selector(rules), True)]
    infos = collect(model)
    # The default finds nothing to decay in e.g. a norm-only or bias-only (BitFit) model: that is
    # an empty group, not an error; a rule the caller wrote that matches nothing is.
    claimed = assign(infos, rules, require_match=not default)
    chosen = {id(i.param) for (_, decays), got in zip(rules, claimed) if decays for i in got}
    decay = [i.param for i in infos if id(i.param) in chosen]
    rest = [i.param for i in infos if id(i.param) not in chosen]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]

"""Parameter groups for torch's built-in ``weight_decay``.

``torch.optim``'s ``weight_decay`` decays every parameter it is given, biases and normalization
gains included. :func:`param_groups` splits a model's trainable parameters the way a
:class:`~regtorch.Regularizer` selects them, so the built-in (and AdamW's decoupled) decay acts on
exactly what a regtorch penalty would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from regtorch._strength import validate_strength
from regtorch.selection import (
    WEIGHTS,
    as_selector,
    assign,
    bound_tensor,
    collect,
    is_rules,
    parse_rules,
    unwrap,
)

__all__ = ["param_groups"]


def param_groups(model: nn.Module, weight_decay: float, rules: Any = None, *,
                 parameters: Mapping[str, Tensor] | None = None) -> list[dict[str, Any]]:
    """``[decay group, no-decay group]`` for any torch optimizer (empty groups dropped).

    Args:
        model: the model (``DistributedDataParallel``/``torch.compile`` wrappers looked through).
        weight_decay: the decay of the first group (≥ 0); the second group gets 0.
        rules: what to decay: ``None`` for :data:`~regtorch.WEIGHTS`; a selector spec (glob, module
            type or instance, predicate, Selector); or the rules of a
            :class:`~regtorch.Regularizer` (a dict or list of ``(selector, penalty or None)``
            pairs), in which case exactly the parameters that Regularizer would penalize decay.
        parameters: tensors to group *instead of* the model's own, by the model's parameter
            names (``module.``/``_orig_mod.`` prefixes accepted) — e.g. the stacked ``[K, ...]``
            tensors of K copies of the model from :func:`torch.func.stack_module_state`. The
            model then only decides the split: the decay group holds the tensors of the
            selected names, the other group every other tensor of the mapping, in its order
            (those that require grad). Every selected name must be in the mapping, and every key
            must name a parameter of the model.

    Returns:
        ``[{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``
        without the empty ones. Frozen parameters are left out; tied weights appear once.

    Raises:
        ValueError: a negative or NaN ``weight_decay``; a rule the caller wrote that matches
            nothing; with ``parameters``, a selected name missing from it or a key that is no
            parameter of the model.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        >>> groups = param_groups(model, weight_decay=0.05)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.05), (3, 0.0)]
        >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)

        Stacked copies (K = 5) grouped by the model's selection:

        >>> from torch.func import stack_module_state
        >>> copies = [nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)) for _ in range(5)]
        >>> stacked, _ = stack_module_state(copies)
        >>> groups = param_groups(copies[0], 0.05, parameters=stacked)
        >>> [[tuple(t.shape) for t in g["params"]] for g in groups]
        [[(5, 3, 4)], [(5, 3), (5, 3), (5, 3)]]
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
    if parameters is None:
        decay = [i.param for i in infos if id(i.param) in chosen]
        rest = [i.param for i in infos if id(i.param) not in chosen]
    else:
        decay = [bound_tensor(i.name, parameters) for i in infos if id(i.param) in chosen]
        known = {name for name, _ in unwrap(model).named_parameters(remove_duplicate=False)}
        unknown = [key for key in parameters
                   if key not in known and key.removeprefix("module.") not in known
                   and key.removeprefix("_orig_mod.") not in known]
        if unknown:
            raise ValueError(f"parameters= has tensors for names that are no parameter of the "
                             f"model: {', '.join(unknown[:8])}")
        taken = {id(t) for t in decay}
        rest = [t for t in parameters.values() if id(t) not in taken and t.requires_grad]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]

r"""``rescale_families_``: give the scale-free families of a normalized model their scale back,
without changing the function it computes.

Under BatchNorm some families of channels have a joint scale that the next normalizations undo
(:meth:`~regtorch.structure.ChannelGroups.scale_free`): the channels between a block's two
convolutions, a residual stream that feeds only normalized convolutions. A group lasso on their
BatchNorm weights γ and biases β that is strong enough to zero some of the channels shrinks all of
them together (mean :math:`|γ|` 0.02–0.16 from 1 in ``benchmarks/bench_compact.py``): the model's
function does not care, but a weight whose scale the loss ignores gets an effective learning rate
:math:`\propto 1/\lVert w \rVert^2`, so training such a model afterwards takes huge steps on those
entries. :func:`rescale_families_` multiplies each family's γ and β by

.. math::  s_f = \frac{\text{target}}{\operatorname{mean}_{c \in f} |γ_c|}

(the mean over every BatchNorm weight entry of the family) and compensates exactly where the
family is consumed. A family's channels reach its consumers (``Linear``/``Conv`` layers, each fed
only by the family and followed directly by an affine BatchNorm) through positively homogeneous
operations (ReLU, pooling, additions within the family), so each consumer's output is multiplied by
:math:`s_f` (its bias too: the bias is multiplied by :math:`s_f`), and its BatchNorm is given

.. math::  μ \leftarrow s_f\,μ, \qquad σ^2 \leftarrow s_f^2\,σ^2, \qquad ε \leftarrow s_f^2\,ε

(running mean, running variance, and the module's ``eps``): then
:math:`(s_f z - s_f μ)/\sqrt{s_f^2 σ^2 + s_f^2 ε} = (z - μ)/\sqrt{σ^2 + ε}`, so the norm's output
is unchanged in eval mode (running statistics) and in training mode (batch statistics, which are
multiplied the same way; the running averages it updates stay :math:`s_f` and :math:`s_f^2` times
the unrescaled ones). Without the ε factor the function would change by a relative
:math:`O(ε/σ^2)` — small, but not zero, and it is largest exactly where the family had shrunk.
The model then computes the same function up to rounding; the function checks it on the example
inputs (eval mode, :data:`~regtorch.structure.FLOAT64_TOLERANCE` /
:data:`~regtorch.structure.FLOAT32_TOLERANCE`, as :func:`~regtorch.compact`) and restores the model
and raises if not (e.g. with an activation that is not positively homogeneous, such as GELU, which
:meth:`~regtorch.structure.ChannelGroups.scale_free` does not check).

Families whose consumers are not normalized (``scale_free(exact=False)``, e.g. the channels before
a linear head) are left alone, as is a family whose consumer or norm is called at more than one
place, or whose γ are all zero.

Typical use: right after :func:`~regtorch.compact`, before the fine-tune. An optimizer's state is
not changed; the returned factors say what was multiplied (for SGD's momentum, dividing
``momentum_buffer`` by the factor keeps it on the scale of the new gradients, which a scale-free
weight multiplied by :math:`s` receives :math:`1/s` times as large).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from regtorch.structure.compact import _outputs, _run_eval, _tolerance
from regtorch.structure.graph import AUTO, channel_groups, trace

__all__ = ["rescale_families_"]

logger = logging.getLogger("regtorch")


def _single_call(calls: dict[str, list], name: str) -> Any:
    nodes = calls.get(name, [])
    return nodes[0] if len(nodes) == 1 else None


@torch.no_grad()
def rescale_families_(model: nn.Module, example_inputs: Any, *,
                      target: float = 1.0) -> dict[str, Tensor]:
    r"""Multiply the BatchNorm γ and β of each scale-free family of ``model`` so that their mean
    :math:`|γ|` is ``target``, compensating in the consumers' BatchNorms so that the model
    computes the same function (module docstring: the formulas and what is left alone).

    In place. The model is traced with :func:`torch.fx.symbolic_trace` and run on
    ``example_inputs`` in eval mode (on copies, and once after the change for the check); its
    training mode is kept.

    Args:
        model: a model whose convolutions or linear layers feed BatchNorms (e.g. the result of
            :func:`~regtorch.compact`).
        example_inputs: a tensor or a tuple of positional inputs (for the trace and the check).
        target: the mean :math:`|γ|` each family gets (> 0; BatchNorm's initial γ is 1).

    Returns:
        Per parameter name, the factor tensor (the parameter's shape) it was multiplied by:
        the families' BatchNorm weights and biases (:math:`s_f` on the family's entries, 1
        elsewhere) and the consumers' biases (:math:`s_f`). Empty when nothing was rescaled. The
        consumers' running statistics and ``eps`` are multiplied too (not listed: they are not
        parameters).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``target`` is not a finite number > 0, the model cannot be traced, or the
            rescaled model's outputs differ from the original's (the model is then restored).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                       nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                       nn.Flatten(), nn.Linear(16, 2))
        >>> with torch.no_grad():  # a shrunken family: the channels between the two convs
        ...     _ = model[1].weight.mul_(0.05), model[1].bias.mul_(0.05)
        >>> factors = rescale_families_(model, torch.randn(8, 1, 6, 6))
        >>> sorted(factors), round(float(factors["1.weight"][0]), 3)
        (['1.bias', '1.weight', '3.bias'], 20.0)
        >>> round(model[1].weight.abs().mean().item(), 6), round(model[4].eps, 9)
        (1.0, 0.004)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not (
            math.isfinite(target) and target > 0):
        raise ValueError(f"Invalid target value: {target!r} (must be a finite number > 0)")
    groups = channel_groups(model, example_inputs)
    families = groups.scale_free(exact=True)
    if not families:
        return {}
    calls: dict[str, list] = defaultdict(list)
    for node in trace(copy.deepcopy(model)).graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)].append(node)
    modules = dict(model.named_modules())
    expected = _outputs(_run_eval(copy.deepcopy(model), example_inputs))
    saved = copy.deepcopy(model.state_dict())
    saved_eps = {name: m.eps for name, m in modules.items()
                 if isinstance(m, nn.modules.batchnorm._NormBase)}
    factors: dict[str, Tensor] = {}

    def factor_of(name: str, tensor: Tensor) -> Tensor:
        if name not in factors:
            factors[name] = torch.ones_like(tensor)
        return factors[name]

    for family in families:
        slices = [s for i in family for s in groups.penalized(groups.groups[i], AUTO)]
        gammas = [s for s in slices if s.tensor.rpartition(".")[2] == "weight"]
        count = sum(len(s.indices) for s in gammas)
        total = sum(float(groups.tensor(s.tensor)[list(s.indices)].abs().sum()) for s in gammas)
        if count == 0 or total == 0.0:
            continue
        scale = target * count / total
        consumers = sorted({s.tensor.rpartition(".")[0] for i in family
                            for s in groups.groups[i].of("in")})
        norms = []
        for name in consumers:
            node = _single_call(calls, name)
            users = list(node.users) if node is not None else []
            norm = (users[0].target if len(users) == 1 and users[0].op == "call_module"
                    else None)
            if norm is None or not isinstance(modules.get(str(norm)),
                                              nn.modules.batchnorm._NormBase) or \
                    _single_call(calls, str(norm)) is None:
                break
            norms.append(str(norm))
        else:
            for s in slices:
                tensor = groups.tensor(s.tensor)
                tensor[list(s.indices)] *= scale
                factor_of(s.tensor, tensor)[list(s.indices)] *= scale
            for name, norm_name in zip(consumers, norms):
                bias = getattr(modules[name], "bias", None)
                if bias is not None:
                    bias.mul_(scale)
                    factor_of(f"{name}.bias", bias).mul_(scale)
                norm = modules[norm_name]
                if norm.running_mean is not None:
                    norm.running_mean.mul_(scale)
                    norm.running_var.mul_(scale * scale)
                norm.eps = norm.eps * scale * scale
            logger.info("regtorch: rescaled a family of %d channels by %.4g", len(family), scale)
    if not factors:
        return {}
    got = _outputs(_run_eval(model, example_inputs))
    tolerance = _tolerance(model)
    for a, b in zip(got, expected):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=tolerance, atol=tolerance):
            model.load_state_dict(saved)
            for name, eps in saved_eps.items():
                modules[name].eps = eps
            raise ValueError(f"rescale_families_: the rescaled model's outputs differ from the "
                             f"original's (tolerance {tolerance:g}); is an activation between a "
                             f"family and its consumers not positively homogeneous? The model is "
                             f"restored")
    return factors

"""Structured sparsity that pays: coupled channel groups, a group lasso over them, and ``compact``.

* :func:`channel_groups` — from a ``torch.fx`` trace, every removable channel and every tensor
  slice that belongs to it (:mod:`regtorch.structure.graph`);
* :class:`ChannelLasso` — group lasso over those coupled groups, with an exact proximal step;
  :class:`ChannelSparsity` raises its λ until a target fraction of channels is exactly zero
  (:mod:`regtorch.structure.penalty`);
* :func:`compact` — a new, smaller model without the exactly-zero channels, checked to compute the
  same outputs; :func:`carry_optimizer` carries the optimizer state across the cut
  (:mod:`regtorch.structure.compact`).
"""

from regtorch.structure.compact import (
    FLOAT32_TOLERANCE,
    FLOAT64_TOLERANCE,
    Compaction,
    carry_optimizer,
    compact,
    compaction_of,
)
from regtorch.structure.graph import ChannelGroup, ChannelGroups, Slice, channel_groups
from regtorch.structure.penalty import ChannelLasso, ChannelSparsity

__all__ = [
    "FLOAT32_TOLERANCE",
    "FLOAT64_TOLERANCE",
    "ChannelGroup",
    "ChannelGroups",
    "ChannelLasso",
    "ChannelSparsity",
    "Compaction",
    "Slice",
    "carry_optimizer",
    "channel_groups",
    "compact",
    "compaction_of",
]

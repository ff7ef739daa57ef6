"""Planning a study's training: its members, and the groups that train together.

A member is one variant at one strength λ with one init seed. Members whose training recipe is the
same — same optimizer settings and weight decay, same dropout rate, same learning-rate schedule —
form a *group*, whatever their penalties: the penalties of a group become ``[K]``-shaped
strengths on the members' stacked parameters (0 for a member without that penalty), so ``none``,
``l2-3``, ``l1-1`` and ``prox-l1-1`` over five seeds train as one group of 20. A schedule that
reacts to each member's own loss (``ReduceLROnPlateau``) gives each member a group of its own. At
most one proximal penalty acts in a group (``Proximal`` takes one regularizer): members with
another proximal penalty form their own group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from regtorch.lab.study.spec import Study, Variant

__all__ = ["Member", "group_members", "members_of", "penalty_key"]


@dataclass(frozen=True)
class Member:
    """One trained model: a variant at strength λ from init seed ``seed``."""

    variant: Variant
    strength: float
    seed: int

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.variant.name, self.strength, self.seed)


def members_of(study: Study) -> list[Member]:
    """Every member of the study: variants × candidate strengths × seeds ``0..seeds-1``."""
    return [Member(v, lam, seed) for v in study.variants for lam in v.strengths
            for seed in range(study.seeds)]


def group_members(study: Study, members: Sequence[Member]) -> list[list[Member]]:
    """Members sharing a training recipe, in first-seen order (see the module docstring)."""
    groups: dict[tuple, list[Member]] = {}
    for member in members:
        groups.setdefault(_recipe_key(study, member), []).append(member)
    out: list[list[Member]] = []
    for group in groups.values():
        by_prox: dict[tuple | None, list[Member]] = {}
        for member in group:
            by_prox.setdefault(_prox_key(member.variant), []).append(member)
        proxes = [k for k in by_prox if k is not None]
        if len(proxes) <= 1:
            out.append(group)
            continue
        plain = by_prox.pop(None, [])
        first, *rest = proxes
        out.append(plain + by_prox[first])
        out.extend(by_prox[k] for k in rest)
    return out


def penalty_key(v: Variant) -> tuple | None:
    """What makes two variants' penalties one regularizer in a group: (penalty, apply, params,
    groups); None without a penalty."""
    if v.penalty is None:
        return None
    return (v.penalty, v.apply, v.params, v.groups if v.penalty == "group" else None)


def _recipe_key(study: Study, member: Member) -> tuple:
    v = member.variant
    schedule = study.schedule_of(v)
    key = (v.weight_decay, v.params if v.weight_decay else None, v.dropout, schedule)
    if schedule.reacts_to_loss:
        key += (member.key,)
    return key


def _prox_key(v: Variant) -> tuple | None:
    key = penalty_key(v)
    return key if key is not None and v.apply == "prox" else None

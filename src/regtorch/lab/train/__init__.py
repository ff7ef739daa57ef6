"""Training a study: plan its members into groups (:mod:`~regtorch.lab.train.plan`), build the
optimizers, penalties and schedules from the vocabulary (:mod:`~regtorch.lab.train.build`), step
a group vectorized (:mod:`~regtorch.lab.train.step`) in stacked or single units
(:mod:`~regtorch.lab.train.units`), record every epoch (:mod:`~regtorch.lab.train.records`), and
run it all with checkpoints (:mod:`~regtorch.lab.train.engine`,
:mod:`~regtorch.lab.train.checkpoints`).
"""

from regtorch.lab.train.build import check_study, make_penalty
from regtorch.lab.train.checkpoints import Checkpoints
from regtorch.lab.train.engine import StudyResult, run_study
from regtorch.lab.train.plan import Member, group_members, members_of

__all__ = ["Checkpoints", "Member", "StudyResult", "check_study", "group_members",
           "make_penalty", "members_of", "run_study"]

"""regtorch.lab: the experiments of the classic regularization posts, reproduced offline.

A :class:`~regtorch.lab.study.Study` (data × model × recipe × variants × seeds) is trained by
:func:`~regtorch.lab.engine.run_study` — members sharing a recipe in one vectorized pass — and
summarized by :func:`~regtorch.lab.summary.summarize`; checkpoints let it continue after an
interruption (:mod:`regtorch.lab.store`). A sweep trains one penalty over a grid of λ × seeds and
chooses λ on validation (:mod:`regtorch.lab.sweep`); :mod:`regtorch.lab.report` draws the plots
and the self-contained HTML reports. Presets live in :mod:`regtorch.lab.presets`; the
``regtorch`` command is :mod:`regtorch.lab.cli`.

Needs the ``lab`` extra (``pip install "regtorch[lab]"``). The lab uses only regtorch's public API.
"""

from regtorch.lab.engine import Member, StudyResult, run_study
from regtorch.lab.study import Study, StudyError, Variant, parse_study

__all__ = ["Member", "Study", "StudyError", "StudyResult", "Variant", "parse_study", "run_study"]

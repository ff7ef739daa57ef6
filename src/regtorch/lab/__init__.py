"""regtorch.lab: the experiments of the classic regularization posts, reproduced offline.

The lab's modules follow its data flow:

* :mod:`regtorch.lab.study`: what a study is (data × model × recipe × variants × seeds), its
  TOML vocabulary, the presets, the data and the models;
* :mod:`regtorch.lab.train`: members planned into groups, each group trained in one vectorized
  pass (:func:`~regtorch.lab.train.run_study`), with checkpoints to continue after an
  interruption;
* :mod:`regtorch.lab.analysis`: summaries over seeds with verdicts, and regularization paths (a
  sweep over λ × seeds, λ chosen on validation);
* :mod:`regtorch.lab.present`: the run directory, tables, plots, HTML reports and the console;
* :mod:`regtorch.lab.cli`: the ``regtorch`` command.

Records and summaries have one schema, :mod:`regtorch.lab.schema`. From Python (a notebook),
:func:`regtorch.lab.run` and :func:`regtorch.lab.sweep` (:mod:`regtorch.lab.api`) take a study
or your own model factory and arrays.

Needs the ``lab`` extra (``pip install "regtorch[lab]"``). The lab uses only regtorch's public API.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Member", "Study", "StudyError", "StudyResult", "Variant", "parse_study", "run",
           "run_study", "sweep"]

# Imported on first use (PEP 562): importing one module of the lab, or the command for its
# --help, does not import the engine.
_HOMES = {"Member": "regtorch.lab.train", "StudyResult": "regtorch.lab.train",
          "run_study": "regtorch.lab.train", "Study": "regtorch.lab.study",
          "StudyError": "regtorch.lab.study", "Variant": "regtorch.lab.study",
          "parse_study": "regtorch.lab.study", "run": "regtorch.lab.api",
          "sweep": "regtorch.lab.api"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'regtorch.lab' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

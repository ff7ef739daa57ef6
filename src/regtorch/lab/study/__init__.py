"""The study vocabulary: what a study is (:mod:`~regtorch.lab.study.spec`), how a TOML file or a
preset's dict becomes one (:mod:`~regtorch.lab.study.parse`), the presets
(:mod:`~regtorch.lab.study.presets`), and what its data and models are made of
(:mod:`~regtorch.lab.study.data`, :mod:`~regtorch.lab.study.models`, which need torch and are
imported on their own).
"""

from regtorch.lab.study.parse import parse_study, read_toml
from regtorch.lab.study.presets import PRESETS, preset, preset_names
from regtorch.lab.study.spec import (
    DataSpec,
    ModelSpec,
    Recipe,
    Schedule,
    Study,
    StudyError,
    Variant,
)

__all__ = [
    "PRESETS",
    "DataSpec",
    "ModelSpec",
    "Recipe",
    "Schedule",
    "Study",
    "StudyError",
    "Variant",
    "parse_study",
    "preset",
    "preset_names",
    "read_toml",
]

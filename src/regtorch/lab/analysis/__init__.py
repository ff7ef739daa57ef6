"""From records to answers: summaries over seeds with verdicts
(:mod:`~regtorch.lab.analysis.summary`) and regularization paths with λ_max, best λ and λ_1se
(:mod:`~regtorch.lab.analysis.sweep`).
"""

from regtorch.lab.analysis.summary import final_stats, summarize
from regtorch.lab.analysis.sweep import SweepSpec, parse_lambdas, path_study, summarize_sweep

__all__ = ["SweepSpec", "final_stats", "parse_lambdas", "path_study", "summarize",
           "summarize_sweep"]

"""Presenting results: the run directory and its files (:mod:`~regtorch.lab.present.rundir`),
tables (:mod:`~regtorch.lab.present.tables`), plots (:mod:`~regtorch.lab.present.plots`, the only
place matplotlib is imported), the HTML reports (:mod:`~regtorch.lab.present.report`) and the
console (:mod:`~regtorch.lab.present.console`). Import the submodule you need: this package
imports none of them, so reading a run directory does not load matplotlib.
"""

__all__: list[str] = []

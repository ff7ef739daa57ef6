"""The ``regtorch`` command: the command line (:mod:`~regtorch.lab.cli.command`), what each
command does (:mod:`~regtorch.lab.cli.workflow`) and the process pool of ``regtorch demo``
(:mod:`~regtorch.lab.cli.parallel`). ``regtorch = "regtorch.lab.cli:main"`` is the console
script; importing this package imports none of the ``lab`` extra.
"""

from regtorch.lab.cli.command import main

__all__ = ["main"]

"""``python -m regtorch.lab``: the ``regtorch`` command (see :mod:`regtorch.lab.cli`)."""

import sys

from regtorch.lab.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m regtorch._fused``: build the fused kernel now (e.g. in a Docker image or a CI
cache step) and say where it is; exit status 1 when it is unavailable."""

from __future__ import annotations

import logging
import sys
import time

from regtorch._fused._build import cache_dir, capability, load_kernel


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    ops = load_kernel()
    seconds = time.perf_counter() - started
    if ops is None:
        sys.stdout.write("regtorch fused kernel: unavailable (the pure-PyTorch path is used)\n")
        return 1
    sys.stdout.write(f"regtorch fused kernel: ready for {capability()} in {cache_dir()} "
                     f"({seconds:.1f} s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

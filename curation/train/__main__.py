"""`python -m curation.train key=value ...` (also under `torchrun --nproc_per_node=N -m curation.train`)."""

from __future__ import annotations

import sys

from curation.train.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

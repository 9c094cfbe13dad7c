"""``python -m trainer``: the same program as ``rbm-train``, so that torchrun can launch it.

``torchrun --nproc-per-node 2 --standalone -m trainer --split u1 ...`` trains on two ranks.
"""

import sys

from trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Allow `python -m registry`, the same as the rbm-registry console script."""

import sys

from registry.cli import main

sys.exit(main())

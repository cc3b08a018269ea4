"""``python -m neuroplast``: the command line (what ``torchrun -m neuroplast`` starts)."""

import sys

from .cli import main

sys.exit(main())

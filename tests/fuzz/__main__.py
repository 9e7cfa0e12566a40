"""``python -m tests.fuzz``: run a fuzz campaign of the receive path (see tests/fuzz/campaign.py)."""

import sys

from .campaign import main

sys.exit(main())

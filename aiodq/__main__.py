"""``python -m aiodq``: the same as the ``aiodq`` command."""

import sys

from .cli import main

sys.exit(main())

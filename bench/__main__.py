"""`python -m bench`: the gateway benchmark (see bench/run.py)."""

import sys

from .run import main

sys.exit(main())

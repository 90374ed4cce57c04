"""`python -m gateway.cli`: the `localai` command without its console script."""

import sys

from gateway.cli.main import main

sys.exit(main())

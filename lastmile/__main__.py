"""`python -m lastmile`: the same as the `lastmile` command."""

import sys

from lastmile.cli import main

sys.exit(main())

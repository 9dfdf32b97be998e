"""`python -m workers ...` is `tunefleet worker ...` (without importing the service)."""

import sys

from tunefleet.cli import app

app(["worker", *sys.argv[1:]], prog_name="python -m workers")

"""`python -m workers ...` is `tunefleet worker ...`."""

import sys

from tunefleet.cli import main

sys.argv[1:1] = ["worker"]
main()

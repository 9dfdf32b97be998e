"""The OpenAPI conformance run at release size: many more generated requests per operation.

`make test` runs tests/service/test_openapi_conformance.py with a few examples per
operation (about a minute); before a release, run it with many:

    .venv/bin/python -m bench.openapi_conformance [--examples 200]

It runs the same checks (no server error; status code, content type, headers and body
as documented; invalid data rejected; a deleted study gone everywhere) through pytest,
and prints the outcome and the time taken.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/service/test_openapi_conformance.py"


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--examples", type=int, default=200, help="Examples per operation.")
    options = args.parse_args()
    env = {**os.environ, "TUNEFLEET_CONFORMANCE_EXAMPLES": str(options.examples)}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
        cwd=ROOT,
        env=env,
    )
    took = time.monotonic() - start
    verdict = "passed" if result.returncode == 0 else "FAILED"
    print(
        f"OpenAPI conformance, {options.examples} examples per operation: {verdict} in {took:.0f}s"
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

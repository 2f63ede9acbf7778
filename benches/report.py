"""The side-by-side report; the code is :mod:`fastopt.bench.report` (also ``fastopt bench
--full``). Run from a checkout: ``python benches/report.py [--sizes 1e3 1e5] [--out FILE]``."""

import sys

from fastopt.bench.report import main

if __name__ == "__main__":
    sys.exit(main(prog="python benches/report.py"))

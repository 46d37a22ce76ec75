"""`python -m fpnops bench` from a checkout: the suites live in fpnops/bench/ (so an installed
fpnops has them); this wrapper only forwards its arguments.

    python benchmarks/bench.py --quick
    python benchmarks/bench.py --device cuda --dtype float16 bfloat16 --out h100.json --plot h100.png
"""
import sys

from fpnops.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

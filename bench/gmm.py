"""Benchmark every method and divergence on analytic mixtures: ``python bench/gmm.py --help``.

Same as ``fdistill bench gmm``; the implementation lives in :mod:`fdistill.bench.gmm`.
"""

import sys

from fdistill.bench.gmm import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

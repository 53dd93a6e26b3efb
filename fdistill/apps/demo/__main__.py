"""``python -m fdistill.apps.demo [options]``: the same as ``fdistill demo`` (:func:`fdistill.apps.demo.cli.main`)."""

import sys

from fdistill.apps.demo.cli import main

sys.exit(main())

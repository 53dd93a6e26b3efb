"""``python -m fdistill`` / ``accelerate launch -m fdistill`` entry point."""

import sys

from fdistill.cli import main

sys.exit(main())

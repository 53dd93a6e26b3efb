"""Thin launcher for the fdistill demo, the Gradio/Spaces convention: ``python app/app.py [options]``.

Everything lives in :mod:`fdistill.apps.demo` (``create_demo`` builds the page, ``main`` parses the same options as
``fdistill demo``: ``--checkpoint``, ``--teacher``, ``--host``, ``--port``, ``--device`` ...; ``--help`` lists
them). On a Space, ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` and ``FDISTILL_STUDENT``/``FDISTILL_TEACHER``
configure it without arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from fdistill.apps.demo import main
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fdistill.apps.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

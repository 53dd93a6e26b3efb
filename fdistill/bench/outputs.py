"""What a benchmark leaves in its ``--out`` folder: the Markdown table it printed and every number as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out: Path, text: str, result: dict) -> None:
    """Write ``out/table.md`` (``text``) and ``out/results.json`` (``result``), then print ``text``."""
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(text)

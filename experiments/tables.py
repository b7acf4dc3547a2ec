"""What every experiment script does with its results: print the markdown table, and write
it to ``OUT/table.md`` and the raw results to ``OUT/results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: str | Path, markdown: str, results: list[dict[str, Any]]) -> None:
    print(markdown)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

"""Every script in examples/ runs to the end, shrunk by ``FLOWFORGE_EXAMPLE_SCALE``.

Each script reads that variable (1: the full example) and multiplies its sizes by it; here
they run at a scale that takes seconds, in a temporary directory, as a user would start them.
The scales are the scripts' own docstrings' suggestions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCALES = {
    "fit_two_moons.py": "0.05",
    "glow_digits_inpainting.py": "0.02",
    "amortized_inference.py": "0.01",
}


def test_every_example_has_a_scale():
    assert sorted(SCALES) == sorted(path.name for path in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", sorted(SCALES))
def test_example_runs(name: str, tmp_path: Path):
    env = {**os.environ, "FLOWFORGE_EXAMPLE_SCALE": SCALES[name], "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.suffix == ".png" for path in written), "the example drew no figure"

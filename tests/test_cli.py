"""The command line: --version, --help and the demo."""

from __future__ import annotations

import subprocess
import sys

import flowforge
from flowforge.cli import main


def test_version_and_help_from_a_subprocess():
    version = subprocess.run(
        [sys.executable, "-m", "flowforge", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"flowforge {flowforge.__version__}"
    shown = subprocess.run(
        [sys.executable, "-m", "flowforge", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: flowforge" in shown.stdout and "demo" in shown.stdout


def test_demo_prints_every_model(capsys):
    assert main(["demo", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for name in flowforge.models.MODELS:
        row = next(line for line in out.splitlines() if line.startswith(name))
        round_trip, gap = (float(v) for v in row.split()[-3:-1])
        assert round_trip < 1e-3 and gap < 1e-3

"""The library's messages through `logging`: on stderr by default, silenced or redirected as
for any library (each case in a fresh interpreter, whose logging nothing has configured)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

RUN = """
import logging, sys, torch
import flowforge as ff
{setup}
torch.manual_seed(0)
flow = ff.models.realnvp(dim=2, layers=2, hidden=(8,))
x = torch.randn(200, 2)
ff.fit(flow, x, epochs=2, checkpoint=sys.argv[1], resume=True)
"""


def run(setup: str, tmp_path) -> str:
    """stderr (a pipe, not a terminal: one line per epoch) of a fit with progress on."""
    script = RUN.format(setup=textwrap.dedent(setup))
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stderr


def test_by_default_the_warnings_and_progress_lines_are_on_stderr(tmp_path):
    lines = run("", tmp_path).splitlines()
    assert lines[0] == f"nothing to resume in {tmp_path / 'none'}: starting a new run"
    assert [line.split()[:2] for line in lines[1:]] == [["epoch", "1/2"], ["epoch", "2/2"]]


def test_a_level_silences_them(tmp_path):
    assert run('logging.getLogger("flowforge").setLevel(logging.ERROR)', tmp_path) == ""


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_a_handler_of_the_users_takes_them(tmp_path, level):
    log = tmp_path / "flowforge.log"
    form = '"%(name)s %(message)s"'
    setup = f'logging.basicConfig(filename=r"{log}", level=logging.{level}, format={form})'
    assert run(setup, tmp_path) == ""  # all went to the user's file
    lines = log.read_text().splitlines()
    assert lines[0].startswith("flowforge.training nothing to resume in")
    progress = [line for line in lines if line.startswith("flowforge.progress epoch")]
    assert len(progress) == (2 if level == "INFO" else 0)

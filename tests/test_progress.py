"""Progress while a folder runs: case i of N, the stage, time left; silent with --quiet."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.progress import Progress, format_seconds
from tests.helpers import make_weights, write_image

REPO = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    scan = np.full((8, 32, 32), -1000, np.int16)
    scan[2:6, 8:24, 8:24] = 40
    for name in ("a", "b"):
        write_image(root / "in" / f"{name}_0000.nii.gz", scan)
    return root, make_weights(root / "weights")


def _predict(root: Path, weights: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "app", "predict", "-i", str(root / "in"), "-o", str(root / "out"), "--weights", str(weights), "--device", "cpu", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_log_gets_one_line_per_case_with_the_time_left(folder):
    log = _predict(*folder)
    assert "case 1 of 2: a_0000.nii.gz\n" in log
    second = next(ln for ln in log.splitlines() if "case 2 of 2: b_0000.nii.gz" in ln)
    assert "left)" in second
    assert "\r" not in log  # no redrawn bar in a log file


def test_quiet_keeps_only_the_summary_lines(folder):
    log = _predict(*folder, "--quiet")
    assert "case 1 of 2" not in log and "case 2 of 2" not in log
    assert sum("total" in ln and "fine" in ln for ln in log.splitlines()) == 2  # the per-case stage summary stays
    assert "2 of 2 case(s) segmented" in log


def test_a_terminal_gets_a_bar_with_the_stage():
    screen = Terminal()
    with Progress(3, stream=screen) as progress:
        progress.start_case(1, "x_0000.nii.gz")
        progress.stage("fine")
        shown = screen.getvalue()
        progress.end_case()
    assert "case 1/3 x_0000.nii.gz" in shown and "fine" in shown
    assert "1/3" in screen.getvalue()


def test_time_left_is_the_mean_case_time_times_the_cases_to_go():
    progress = Progress(4, enabled=False)
    assert progress.seconds_left() is None
    progress.started -= 30.0
    progress.end_case()
    progress.end_case()
    assert progress.seconds_left() == pytest.approx(30.0, abs=0.5)
    assert format_seconds(30) == "30 s" and format_seconds(75) == "1 min 15 s" and format_seconds(3720) == "1 h 2 min"

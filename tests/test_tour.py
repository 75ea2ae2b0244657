"""`gaze tour`, the README's main-job command: every stop runs on the bundled models and the page links real files."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from machinegaze import GazeError, zoo
from machinegaze.tour import TourConfig, run_tour
from tests.helpers import single_thread

one_thread = pytest.fixture(single_thread, scope="module", autouse=True)

EXPECTED = ["Generate", "Style mixing", "Interpolation", "Project and breed", "Dream", "Amplify the uncanny", "Detect"]


def _bundled() -> bool:
    try:
        zoo.resolve_network("default")
        zoo.resolve_detector("default")
        return True
    except GazeError:
        return False


@pytest.mark.skipif(not _bundled(), reason="needs the bundled face GAN and detector")
def test_quick_tour_runs_every_stop_with_real_files(tmp_path, shared):
    faces = shared / "data" / "faces" / "real" / "lfw"
    mine = tmp_path / "mine"
    mine.mkdir()
    for f in sorted(faces.glob("*.jpg"))[:2]:
        (mine / f.name).write_bytes(f.read_bytes())
    index, stops = run_tour(TourConfig(outdir=tmp_path / "tour", faces=mine, quick=True))
    assert [s.title for s in stops] == EXPECTED
    assert [s.skipped for s in stops] == [None] * len(EXPECTED)
    page = index.read_text()
    for s in stops:
        assert s.sentence and s.files and html_escaped(s.title) in page
        for f in s.files:
            p = tmp_path / "tour" / f
            assert p.exists() and (p.is_dir() or p.stat().st_size > 0), f
            assert f'"{f}"' in page  # linked or embedded
    csv_rows = (tmp_path / "tour" / "detect_predictions.csv").read_text().strip().splitlines()
    assert csv_rows[0] == "path,face,box,prob_fake,verdict" and len(csv_rows) == 1 + 8 + 2
    # the bundled generator's faces are called fake, the two real photos real (measured facts of the detector)
    verdicts = [r.rsplit(",", 1)[1] for r in csv_rows[1:]]
    assert verdicts[:8] == ["fake"] * 8 and verdicts[8:] == ["real", "real"]


def html_escaped(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_tour_bad_faces_folder_is_one_line_error(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "machinegaze.cli",
            "tour",
            "--outdir",
            str(tmp_path / "t"),
            "--faces",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.strip().splitlines() if ln.strip()]) == 1 and re.search("missing", r.stderr)

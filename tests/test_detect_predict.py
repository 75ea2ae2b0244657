"""detect predict, faces first: real MTCNN on real photos (a coffee cup, a cat, faces from ../shared pasted on a
canvas at run time), one row per face, --no-face-check, streaming CSV with --resume, and the fast inference copy."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze import GazeError, checkpoints
from machinegaze.detect.fast import fast_detector
from machinegaze.detect.model import Detector, DetectorSpec
from machinegaze.detect.predict import (
    CSV_COLUMNS,
    NO_FACE,
    PredictConfig,
    append_predictions_csv,
    crop_square,
    merge_parts,
    part_path,
    predict_paths,
    read_done,
    resume_csv,
)
from tests.conftest import ROOT
from tests.helpers import single_thread

one_thread = pytest.fixture(single_thread, scope="module", autouse=True)  # MTCNN's tiny ops crawl with 2 threads
skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def mtcnn():
    from machinegaze import zoo

    try:
        return zoo.load_mtcnn()
    except GazeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def det(tiny_detector):
    return checkpoints.load_detector(tiny_detector)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared) -> Path:
    """coffee.jpg and cat.jpg (scikit-image's photos), two.png (two real faces from ../shared side by side on a
    grey canvas, made here, never committed) and one.jpg (a face photo linked from ../shared)."""
    faces = sorted((shared / "data" / "faces" / "real" / "ffhq256").glob("*.jpg"))[:2]
    if len(faces) < 2:
        pytest.skip("shared ffhq256 faces not found")
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.coffee()).save(d / "coffee.jpg", quality=90)
    Image.fromarray(skdata.chelsea()).save(d / "cat.jpg", quality=90)
    canvas = Image.new("RGB", (560, 300), (128, 128, 128))
    for k, f in enumerate(faces):
        canvas.paste(Image.open(f).convert("RGB"), (16 + 288 * k, 22))
    canvas.save(d / "two.png")
    (d / "one.jpg").symlink_to(faces[0])
    return d


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "machinegaze.cli", "detect", "predict", *args, "--threads", "1", "--workers", "0"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


# ---------------------------------------------------------------- geometry
def test_crop_square_is_inside_and_centred():
    assert crop_square((40, 40, 60, 70), 200, 100, 0.25) == (28, 32, 73, 77)  # 30 * 1.5 = 45, centred on (50, 55)
    assert crop_square((0, 0, 20, 20), 200, 100, 0.25) == (0, 0, 30, 30)  # moved inside at the corner
    assert crop_square((10, 10, 90, 90), 200, 100, 0.25) == (0, 0, 100, 100)  # shrunk to the short side
    assert crop_square((180, 50, 200, 60), 200, 100, 0.0) == (180, 45, 200, 65)
    with pytest.raises(GazeError, match="margin"):
        PredictConfig(margin=-0.1)


# ---------------------------------------------------------------- faces first
def test_coffee_and_cat_have_no_face(det, mtcnn, photos):
    rows = predict_paths(det, [photos / "coffee.jpg", photos / "cat.jpg"], mtcnn=mtcnn)
    assert [(Path(r.path).name, r.face, r.box, r.prob_fake, r.verdict) for r in rows] == [
        ("coffee.jpg", None, None, None, NO_FACE),
        ("cat.jpg", None, None, None, NO_FACE),
    ]
    assert rows[0].row()[1:] == ["", "", "", NO_FACE]  # never "real", and no probability


def test_two_faces_two_rows_and_no_face_check(det, mtcnn, photos):
    rows = predict_paths(det, [photos / "two.png"], mtcnn=mtcnn)
    assert [r.face for r in rows] == [0, 1]
    (a0, b0, a1, b1), (c0, d0, c1, d1) = rows[0].box, rows[1].box
    assert 16 <= a0 < a1 <= 16 + 256 and 304 <= c0 < c1 <= 304 + 256  # left face first, each in its own photo
    assert 22 <= min(b0, d0) and max(b1, d1) <= 22 + 256
    thr = float(det.threshold)
    assert all(0 <= r.prob_fake <= 1 and r.verdict == ("fake" if r.prob_fake >= thr else "real") for r in rows)
    whole = predict_paths(det, [photos / "two.png"], PredictConfig(face_check=False))
    assert [(w.face, w.box) for w in whole] == [(0, (0, 0, 560, 300))]
    # a face cropped from the canvas gets the verdict of the same pixels given as a pre-cropped face
    from machinegaze.detect.predict import faces_of

    box, crop = faces_of(Image.open(photos / "two.png").convert("RGB"), mtcnn)[0]
    crop.save(photos.parent / "crop0.png")
    alone = predict_paths(det, [photos.parent / "crop0.png"], PredictConfig(face_check=False))
    assert box == rows[0].box and alone[0].prob_fake == pytest.approx(rows[0].prob_fake, abs=1e-6)


def test_cli_csv_resume_skips_done_files(tiny_detector, photos, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("cat.jpg", "coffee.jpg", "one.jpg", "two.png"):
        (d / name).write_bytes((photos / name).read_bytes())
    out = tmp_path / "p.csv"
    r = _cli([str(d), "--model", str(tiny_detector), "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    full = out.read_text()
    rows = _rows(out)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(Path(x["path"]).name, x["verdict"] == NO_FACE) for x in rows] == [
        ("cat.jpg", True),
        ("coffee.jpg", True),
        ("one.jpg", False),
        ("two.png", False),
        ("two.png", False),
    ]
    assert all(len(x["box"].split()) == 4 and x["prob_fake"] for x in rows[2:])
    # an interrupted run: two.png's second row never written, a line cut off mid-write
    lines = full.splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:9])
    (d / "cat.jpg").write_bytes(b"not an image any more")  # done already: --resume must not read it again
    r = _cli([str(d), "--model", str(tiny_detector), "--out", str(out), "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_text() == full and "3 already in" in r.stdout
    r = _cli([str(d), "--model", str(tiny_detector), "--out", str(out)], tmp_path)  # a fresh run reads it: exit 1
    assert r.returncode == 1 and "cat.jpg" in r.stderr and "Traceback" not in r.stderr
    assert [Path(x["path"]).name for x in _rows(out)][0] == "coffee.jpg"
    r = _cli([str(d), "--model", str(tiny_detector), "--resume"], tmp_path)
    assert r.returncode != 0 and "--resume needs --out" in r.stderr


def test_resume_and_merge_of_interrupted_parts(tmp_path):
    from machinegaze.detect.predict import Prediction

    out = tmp_path / "p.csv"
    a = [Prediction("a.jpg", 0, (0, 0, 4, 4), 0.25, "real"), Prediction("b.jpg", None, None, None, NO_FACE)]
    b = [Prediction("c.jpg", 0, (1, 1, 5, 5), 0.75, "fake"), Prediction("c.jpg", 1, (6, 1, 9, 5), 0.5, "real")]
    append_predictions_csv(a, part_path(out, 0))
    append_predictions_csv(b, part_path(out, 1))
    assert merge_parts(out, interrupted=True) == 1  # each part loses its last image: it may be incomplete
    assert read_done(out) == {"a.jpg"} and not list(tmp_path.glob("p.csv.part*"))
    append_predictions_csv(b, out)
    assert resume_csv(out) == {"a.jpg"}  # c.jpg's rows may be incomplete: dropped, predicted again
    assert out.read_text() == "path,face,box,prob_fake,verdict\na.jpg,0,0 0 4 4,0.25000,real\n"
    (tmp_path / "x.csv").write_text("path,prob_fake,verdict\na.jpg,0.1,real\nb.jpg,0.2,real\n")
    with pytest.raises(GazeError, match="not a predictions CSV"):
        resume_csv(tmp_path / "x.csv")


# ---------------------------------------------------------------- the fast inference copy
@pytest.mark.parametrize("arch,size", [("smallcnn", 32), ("effnet_lite0", 64), ("effnet_lite0", 72)])
def test_fast_copy_gives_the_same_logits(arch, size):
    torch.manual_seed(0)
    model = Detector(DetectorSpec(arch, size, width=4)).eval()
    for m in model.modules():  # BatchNorm statistics far from the identity, so folding is really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    fast = fast_detector(model)
    assert fast is not model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    if arch == "effnet_lite0":
        from machinegaze.nets.efficientnet import SameConv2d

        # 64 px: every stride-2 input is even (pads one more after than before); 72 px: one is 9 px (symmetric
        # pads). Both become convolutions with built-in padding.
        assert not [m for m in fast.modules() if isinstance(m, SameConv2d)]


def test_fast_copy_of_the_bundled_detector_agrees():
    from machinegaze import zoo

    try:
        model = zoo.load_detector(None)
    except GazeError as e:
        pytest.skip(str(e))
    fast = fast_detector(model)
    assert fast is not model
    s = model.spec.size
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, s, s)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-4)

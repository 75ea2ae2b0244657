"""MTCNN (our nets + cascade on facenet-pytorch's weights) and FFHQ-style alignment."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze import GazeError, zoo
from machinegaze.align import AlignConfig, align_folder, align_image, detect_landmarks, ffhq_quad
from machinegaze.checkpoints import load_mtcnn
from machinegaze.nets.mtcnn import nms
from tests.helpers import single_thread

FFHQ = ["00000.jpg", "00003.jpg", "00011.jpg", "00042.jpg", "00123.jpg"]
UTK = ["100_1_0_20170110183726390.jpg.chip.jpg", "10_0_0_20170110220033115.jpg.chip.jpg"]


# MTCNN runs many tiny ops; on a busy 2-core machine a second intra-op thread makes them 10-50x slower.
one_thread = pytest.fixture(single_thread, scope="module", autouse=True)


@pytest.fixture(scope="module")
def detector():
    return zoo.load_mtcnn()


def utk_files(faces_dir, n=5):
    names = sorted(os.listdir(faces_dir / "utkface"))
    names = [n_ for n_ in names if n_.endswith(".jpg")]
    return UTK + names[100 : 100 + n - len(UTK)]


# ---------------------------------------------------------------- weights and NMS
def test_weights_load_strictly_and_bad_files_are_user_errors(tmp_path, detector):
    assert sum(p.numel() for p in detector.parameters()) > 100_000
    sd = {k: v for k, v in detector.pnet.state_dict().items() if k != "conv4_2.bias"}
    torch.save(sd, tmp_path / "pnet.pt")
    files = {"pnet": tmp_path / "pnet.pt", "rnet": tmp_path / "x", "onet": tmp_path / "x"}
    with pytest.raises(GazeError, match="does not match"):
        load_mtcnn(files)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(GazeError, match="not a loadable"):
        load_mtcnn({**files, "pnet": tmp_path / "junk.pt"})


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 5, 5.0]])
    scores = torch.tensor([0.8, 0.9, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]  # box 0 overlaps box 1 (IoU 0.68)
    assert nms(boxes, scores, 0.5, mode="min").tolist() == [1, 2]  # box 3 lies inside box 1
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


# ---------------------------------------------------------------- detection
def test_detects_one_face_with_plausible_landmarks(faces_dir, detector):
    det = detect_landmarks(faces_dir / "ffhq256" / "00001.jpg", detector)
    assert len(det) == 1 and det.scores[0] > 0.99
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = det.landmarks[0].tolist()
    assert lx < nx < rx and mlx < mrx  # left/right in image order
    assert max(ly, ry) < ny < min(mly, mry)  # eyes above nose above mouth
    x1, y1, x2, y2 = det.boxes[0].tolist()
    assert x1 < lx and rx < x2 and y1 < ly and max(mly, mry) < y2


def test_ffhq_quad_matches_the_recipe_by_hand():
    # Upright face: eyes 20 px apart, mouth 25 px below the eyes -> x = (45, 0), c = (50, 52.5).
    lm = np.array([[40, 50], [60, 50], [50, 62], [42, 75], [58, 75.0]])
    q = ffhq_quad(lm)
    np.testing.assert_allclose(q, [[5, 7.5], [5, 97.5], [95, 97.5], [95, 7.5]], atol=1e-9)
    # The recipe is rotation-equivariant: rotate the landmarks, the quad rotates with them.
    t = np.deg2rad(25)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    np.testing.assert_allclose(ffhq_quad(lm @ r.T), q @ r.T, atol=1e-9)
    with pytest.raises(GazeError):
        ffhq_quad(np.zeros((5, 2)))


# ---------------------------------------------------------------- alignment, checked by re-detection
def expected_eyes(lm: np.ndarray, size: int) -> np.ndarray:
    """Where the FFHQ recipe puts the eyes, written out independently: the square of side 2s centred on c,
    with axes x_hat (the face's horizontal) and y_hat, fills the size x size output."""
    el, er = lm[0], lm[1]
    eye_avg = (el + er) / 2
    e2e = er - el
    e2m = (lm[3] + lm[4]) / 2 - eye_avg
    x = e2e - np.array([e2m[1], e2m[0]]) * [-1, 1]
    x_hat = x / np.linalg.norm(x)
    y_hat = np.array([-x_hat[1], x_hat[0]])
    s = max(np.linalg.norm(e2e) * 2.0, np.linalg.norm(e2m) * 1.8)
    c = eye_avg + 0.1 * e2m
    k = size / (2 * s)
    return np.array([[size / 2 - 0.5 + k * (p - c) @ x_hat, size / 2 - 0.5 + k * (p - c) @ y_hat] for p in (el, er)])


@pytest.mark.parametrize("source,index", [("ffhq256", i) for i in range(5)] + [("utkface", i) for i in range(5)])
def test_aligned_eyes_land_where_the_recipe_puts_them(faces_dir, detector, source, index):
    size = 128
    name = FFHQ[index] if source == "ffhq256" else utk_files(faces_dir)[index]
    img = Image.open(faces_dir / source / name).convert("RGB")
    det = detect_landmarks(img, detector)
    assert len(det) >= 1
    faces = align_image(img, AlignConfig(size=size), detector)
    assert len(faces) == 1
    face = faces[0]
    assert face.image.shape == (1, 3, size, size) and face.image.dtype == torch.float32
    assert -1.0 <= face.image.min() and face.image.max() <= 1.0
    want = expected_eyes(face.source_landmarks.double().numpy(), size)
    # the recipe's own prediction agrees with the landmarks the aligner reports (same math, other route)
    np.testing.assert_allclose(face.landmarks[:2].numpy(), want, atol=1e-3)
    # ... and with what MTCNN finds on the aligned image (the real check: the warp did what the math says)
    re = detector.detect(face.image)
    assert len(re) >= 1
    best = int(torch.argmax((re.boxes[:, 2] - re.boxes[:, 0]) * (re.boxes[:, 3] - re.boxes[:, 1])))
    got = re.landmarks[best, :2].numpy()
    err = np.linalg.norm(got - want, axis=1)
    assert err.max() < 4.0, (name, got.tolist(), want.tolist())
    # FFHQ geometry: eyes level, about a quarter of the width apart, a little above the middle
    assert abs(got[0, 1] - got[1, 1]) < 4.0
    assert 0.2 * size < got[1, 0] - got[0, 0] < 0.32 * size
    assert 0.40 * size < got[:, 1].mean() < 0.52 * size


def test_select_picks_the_largest_and_all_returns_every_face(faces_dir, detector):
    a = Image.open(faces_dir / "ffhq256" / "00003.jpg").convert("RGB")
    b = Image.open(faces_dir / "lfw" / "Aaron_Eckhart_0001.jpg").convert("RGB").resize((100, 100))
    canvas = Image.new("RGB", (400, 256), (128, 128, 128))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (290, 140))
    big = align_image(canvas, AlignConfig(size=32, select="largest"), detector)
    assert len(big) == 1 and big[0].box[0] < 200
    auto = align_image(canvas, AlignConfig(size=32), detector)
    assert auto[0].box == big[0].box
    every = align_image(canvas, AlignConfig(size=32, select="all"), detector)
    assert len(every) == 2 and {f.box[0] < 200 for f in every} == {True, False}


def test_no_face_and_corrupt_files_are_reported_and_skipped(tmp_path, faces_dir, detector):
    import skimage.data

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.open(faces_dir / "ffhq256" / "00003.jpg").save(src / "face1.jpg")
    Image.open(faces_dir / "lfw" / "Aaron_Eckhart_0001.jpg").save(src / "sub" / "face2.png")
    Image.fromarray(skimage.data.coffee()).save(src / "coffee.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(src / "noise.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    events = []
    rep = align_folder(src, out, AlignConfig(size=48), detector, progress=events.append)
    assert sorted(rep.no_face) == ["coffee.jpg", "noise.png"]
    assert [f for f, _ in rep.corrupt] == ["broken.jpg"]
    assert sorted(o for _, o in rep.aligned) == ["face1.png", "sub/face2.png"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["face1.png", "sub/face2.png"]  # nothing kept for no-face / corrupt images
    assert Image.open(out / "face1.png").size == (48, 48)
    assert events[-1].step == events[-1].total == 5
    summary = json.loads((out / "align_report.json").read_text())["summary"]
    assert summary == {"total": 5, "aligned_images": 2, "faces_written": 2, "no_face": 2, "corrupt": 1}


def test_cli_align_lists_no_face_images(tmp_path, faces_dir):
    from typer.testing import CliRunner

    from machinegaze.cli import app

    src = tmp_path / "in"
    src.mkdir()
    Image.open(faces_dir / "lfw" / "Aaron_Eckhart_0001.jpg").save(src / "face.jpg")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(src / "red.png")
    res = CliRunner().invoke(app, ["align", str(src), str(tmp_path / "out"), "--size", "32"])
    assert res.exit_code == 0, res.output
    assert "1 of 2 images aligned" in res.output and "red.png" in res.output
    bad = CliRunner().invoke(app, ["align", str(src), str(tmp_path / "o2"), "--select", "nope"])
    assert bad.exit_code != 0


# ---------------------------------------------------------------- recipe regression (numbers from the pre-rewrite code)
# Landmarks (rounded MTCNN output) -> the quad and a 4x4 grid of grey means of the 32 px crop, as the aligner
# produced them before align.py was rewritten from the recipe's description: the rewrite must not move a pixel.
RECIPE_CASES = [
    (  # 1024 px photo: the shrink-first path
        "ffhq1024/0.jpg",
        "reflect",
        [[382.5, 479.1], [637.8, 482.7], [544.3, 567.7], [431.9, 713.2], [611.1, 717.1]],
        [[-7.385, 1.821], [8.781, 1022.995], [1029.955, 1006.829], [1013.789, -14.345]],
        [
            [70.1, 95.8, 125.2, 171.6],
            [78.3, 115.0, 89.0, 127.1],
            [123.3, 121.6, 83.1, 79.4],
            [146.6, 123.2, 97.6, 99.6],
        ],
    ),
    (  # tight 200 px crop: the square runs off every side, mirrored and blurred padding
        "utkface/100_1_0_20170110183726390.jpg.chip.jpg",
        "reflect",
        [[55.9, 56.5], [139.2, 57.8], [94.9, 107.4], [58.0, 139.0], [134.5, 140.5]],
        [[-66.569, -103.801], [-71.791, 229.399], [261.409, 234.621], [266.631, -98.579]],
        [
            [184.1, 184.5, 144.2, 134.5],
            [182.5, 206.7, 134.3, 113.1],
            [200.0, 209.2, 130.3, 118.3],
            [133.8, 172.2, 100.6, 71.3],
        ],
    ),
    (  # square past the photo's top-left corner, black padding
        "ffhq256/00003.jpg",
        "black",
        [[8.5, 51.0], [68.8, 51.7], [36.8, 83.6], [16.3, 116.0], [58.2, 116.5]],
        [[-80.058, -64.774], [-84.104, 176.408], [157.078, 180.454], [161.124, -60.728]],
        [[0.0, 0.2, 0.1, 0.2], [0.0, 105.2, 35.0, 37.2], [0.0, 70.9, 48.5, 113.0], [0.0, 81.9, 90.6, 149.5]],
    ),
]


@pytest.mark.parametrize("name,pad,landmarks,quad,grey", RECIPE_CASES, ids=["shrink", "reflect", "black"])
def test_recipe_reproduces_the_reference_quads_and_crops(faces_dir, name, pad, landmarks, quad, grey):
    from machinegaze.align import warp_quad

    q = ffhq_quad(np.array(landmarks))
    np.testing.assert_allclose(q, quad, atol=1e-3)
    out = np.asarray(warp_quad(Image.open(faces_dir / name).convert("RGB"), q, 32, pad, 4), dtype=np.float64)
    cells = out.mean(2).reshape(4, 8, 4, 8).mean((1, 3))
    np.testing.assert_allclose(cells, grey, atol=0.5)  # the grid is rounded to 0.1; a moved pixel shows

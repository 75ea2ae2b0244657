"""detect/anyof.py and detect/combine.py: detectors combined by OR, fitted on validation reals."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from machinegaze import GazeError, checkpoints
from machinegaze.detect import evaluate as ev
from machinegaze.detect.anyof import AnyOf
from machinegaze.detect.combine import combine, fit_offsets, flip_offset
from machinegaze.detect.fast import fast_detector
from machinegaze.detect.model import Detector, DetectorSpec
from tests.helpers import noise_faces

ROOT = Path(__file__).resolve().parents[1]


def _member(seed: int, temperature: float, threshold: float, size: int = 32) -> Detector:
    torch.manual_seed(seed)
    det = Detector(DetectorSpec("smallcnn", size, 75, width=8, dropout=0.0)).eval()
    with torch.no_grad():  # BatchNorm statistics other than the identity, so folding them is tested
        for m in det.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        # logits spread over both verdicts: sd 3, median at the member's own threshold
        z = det(_images(64, size, seed=99))
        det.head.weight.mul_(3 / z.std())
        det.head.bias.add_(3 * (float(det.head.bias) - z.median()) / z.std() - det.head.bias)
        t = torch.tensor(threshold)
        det.head.bias.add_(temperature * torch.log(t / (1 - t)))
    det.set_calibration(temperature, threshold)
    return det


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_the_combined_verdict_is_the_or_of_the_members():
    a, b = _member(0, 0.7, 0.4), _member(1, 1.3, 0.6)
    model = AnyOf([a, b]).eval()
    x = _images(64)
    with torch.no_grad():
        pa, pb, p = a.prob_fake(x), b.prob_fake(x), model.prob_fake(x)
    says_a, says_b = pa >= a.threshold, pb >= b.threshold
    assert 0 < int(says_a.sum()) < 64 and 0 < int(says_b.sum()) < 64 and bool((says_a != says_b).any())
    assert torch.equal(p >= model.threshold, says_a | says_b)
    # an offset makes the second member stricter: it now says fake only where its margin beats the offset
    model.offsets[1] = 2.0
    with torch.no_grad():
        strict = (model.prob_fake(x) >= 0.5) & ~says_a
        margin_b = torch.logit(pb.double()) - torch.logit(b.threshold.double())
    assert torch.equal(strict, (margin_b >= 2.0) & ~says_a) and int(strict.sum()) < int((says_b & ~says_a).sum())


def test_members_must_share_their_input():
    with pytest.raises(GazeError, match="same input"):
        AnyOf([_member(0, 1, 0.5, size=32), _member(1, 1, 0.5, size=64)])
    with pytest.raises(GazeError, match="at least two"):
        AnyOf([_member(0, 1, 0.5)])


def test_flip_offset_lets_through_at_most_the_share_asked():
    s = np.arange(200, dtype=float) / 10  # 0.0 .. 19.9
    for share, flips in ((0.0, 0), (0.01, 2), (0.05, 10), (0.5, 100)):
        off = flip_offset(s, share)
        assert int((s >= off).sum()) == flips, (share, off)


def test_fit_offsets_holds_every_real_source_to_max_flip():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(400, int), np.ones(200, int)]
    src = np.array(["utk"] * 200 + ["ffhq"] * 200 + ["sd"] * 200)
    first = np.r_[rng.normal(-3, 1, 400), rng.normal(-2, 1, 200)]  # misses most fakes
    second = np.r_[rng.normal(-4, 1, 200), rng.normal(0, 1, 200), rng.normal(4, 1, 200)]  # ffhq looks fakeish
    margins = np.stack([first, second], 1)
    off = fit_offsets(margins, y, src, max_flip=0.02)
    assert off[0] == 0.0 and off[1] > 0  # ffhq forces the second member up
    combined = np.maximum(first, second - off[1]) >= 0
    for name in ("utk", "ffhq"):
        pool = (src == name) & (first < 0)
        assert combined[pool].mean() <= 0.02 + 1e-9
    assert combined[y == 1].mean() > (first[y == 1] >= 0).mean() + 0.5  # and it still catches most fakes


def test_combine_fits_offsets_and_temperature_and_keeps_the_or():
    a, b = _member(0, 1.0, 0.5), _member(1, 1.0, 0.5)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8)
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    model = combine([a, b], x, y, ["r"] * 40 + ["f"] * 40, precision="fp32")
    assert float(model.offsets[0]) == 0.0 and float(model.temperature) > 0 and float(model.threshold) == 0.5
    z = ev.predict_logits(model, x)
    la, lb = ev.predict_logits(a, x), ev.predict_logits(b, x)
    with torch.no_grad():
        m = model.margins([torch.from_numpy(la), torch.from_numpy(lb)]).numpy()
    assert np.allclose(z, m.max(1), atol=1e-5)
    real_called_real = (y == 0) & (m[:, 0] < 0)
    assert (m[real_called_real, 1] >= 0).mean() <= 0.01 + 1e-9  # at most 1 % flipped: 0 of < 100


def test_save_load_fast_copy_and_grad_cam(tmp_path):
    model = AnyOf([_member(0, 0.8, 0.45), _member(1, 1.2, 0.55)], offsets=[0.0, 0.7]).eval()
    model.set_calibration(1.7, 0.5)
    x = _images(6)
    with torch.no_grad():
        ref = model(x)
    path = checkpoints.save_detector(tmp_path / "any.safetensors", model, meta={"note": "x"}, half=False)
    back = checkpoints.load_detector(path)
    assert isinstance(back, AnyOf) and back.meta == {"note": "x"} and back.spec == model.spec
    assert float(back.temperature) == pytest.approx(1.7) and back.offsets.tolist() == pytest.approx([0.0, 0.7])
    assert [float(m.threshold) for m in back.members] == pytest.approx([0.45, 0.55])
    with torch.no_grad():
        assert torch.allclose(back(x), ref, atol=1e-5)
    half = checkpoints.load_detector(checkpoints.save_detector(tmp_path / "h.safetensors", model))
    assert half.offsets.tolist() == pytest.approx([0.0, 0.7])  # calibration stays float32 in fp16 files
    fast = fast_detector(back)
    assert fast is not back  # the rewritten copy passed its own check
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-3)
    cam = ev.grad_cam(back, x)
    assert cam.shape == (6, 1, 32, 32) and float(cam.max()) > 0
    # the map is the deciding member's own Grad-CAM
    with torch.no_grad():
        which = back.margins([m(x) for m in back.members]).argmax(1)
    for i in range(6):
        own = ev.grad_cam(back.members[int(which[i])], x[i : i + 1])
        assert torch.allclose(cam[i], own[0], atol=1e-4)


def test_a_pooled_member_sees_coarser_pixels_and_combines_with_a_full_one(tmp_path):
    full = _member(0, 0.8, 0.45)
    torch.manual_seed(3)
    pooled = Detector(DetectorSpec("smallcnn", 32, 75, width=8, dropout=0.0, pool=2)).eval()
    pooled.set_calibration(1.1, 0.5)
    x = _images(6)
    with torch.no_grad():  # pooling is the member's first step: the same body on a 2x average-pooled image
        plain = Detector(DetectorSpec("smallcnn", 16, 75, width=8, dropout=0.0)).eval()
        plain.load_state_dict(pooled.state_dict())
        assert torch.allclose(pooled(x), plain(torch.nn.functional.avg_pool2d(x, 2)), atol=1e-6)
    model = AnyOf([full, pooled]).eval()
    with torch.no_grad():
        fmap = model.feature_map(x)
        assert fmap.shape[-2:] == full.feature_map(x).shape[-2:]  # the coarse map repeated up to the fine one
        assert torch.allclose(model.logit_from_map(fmap), model(x), atol=1e-5)
    back = checkpoints.load_detector(checkpoints.save_detector(tmp_path / "p.safetensors", model, half=False))
    assert back.members[1].spec.pool == 2
    fast = fast_detector(back)
    assert fast is not back
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-3)
    assert ev.grad_cam(back, x).shape == (6, 1, 32, 32)
    with pytest.raises(GazeError, match="pool"):
        DetectorSpec("smallcnn", 30, 75, pool=4)


def test_a_member_can_be_stored_as_a_reference_to_its_own_file(tmp_path):
    a, b = _member(0, 0.8, 0.45), _member(1, 1.2, 0.55)
    model = AnyOf([a, b], offsets=[0.0, 0.7]).eval()
    model.set_calibration(1.7, 0.5)
    first = checkpoints.save_detector(tmp_path / "first.safetensors", a, half=False)
    whole = checkpoints.save_detector(tmp_path / "whole.safetensors", model, half=False)
    slim = checkpoints.save_detector(tmp_path / "slim.safetensors", model, half=False, member_files={0: first})
    assert slim.stat().st_size < whole.stat().st_size - 0.8 * first.stat().st_size  # no second copy of member 0
    x = _images(6)
    with torch.no_grad():
        ref = model(x)
        back = checkpoints.load_detector(slim)
        assert isinstance(back, AnyOf) and torch.equal(back(x), checkpoints.load_detector(whole)(x))
        assert torch.allclose(back(x), ref, atol=1e-5)
    # a changed, missing or misplaced member file is one clear error
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    with pytest.raises(GazeError, match="beside"):
        checkpoints.save_detector(tmp_path / "x.safetensors", model, member_files={0: moved / "first.safetensors"})
    checkpoints.save_detector(first, _member(5, 0.8, 0.45), half=False)  # overwritten by another detector
    with pytest.raises(GazeError, match="changed since"):
        checkpoints.load_detector(slim)
    first.unlink()
    with pytest.raises(GazeError, match="missing"):
        checkpoints.load_detector(slim)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "machinegaze.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_combine_and_predict_from_the_command_line(tmp_path):
    noise_faces(tmp_path, 24)
    for k, seed in enumerate((0, 1)):
        checkpoints.save_detector(tmp_path / f"m{k}.safetensors", _member(seed, 1.0, 0.5))
    r = _cli(
        ["detect", "combine", "--model", "m0.safetensors", "--model", "m1.safetensors", "--val", "real:real,fake:fake"]
        + ["--out", "both.safetensors", "--threads", "1"],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "offsets 0.000," in r.stdout and "wrote both.safetensors" in r.stdout
    both = checkpoints.load_detector(tmp_path / "both.safetensors")
    assert isinstance(both, AnyOf) and both.meta["members"] == ["m0.safetensors", "m1.safetensors"]
    r = _cli(
        ["detect", "predict", "real", "--model", "both.safetensors", "--no-face-check", "--out", "p.csv"], tmp_path
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 24 and all(row["verdict"] in ("real", "fake") for row in rows)
    # bad input: one line, non-zero exit, no traceback
    for args in (
        ["detect", "combine", "--model", "m0.safetensors", "--out", "x.safetensors", "--val", "real:real,fake:fake"],
        ["detect", "combine", "--model", "m0.safetensors", "--model", "both.safetensors", "--out", "x.safetensors"],
        ["detect", "combine", "--model", "m0.safetensors", "--model", "m1.safetensors", "--out", "x.pt"],
        ["detect", "combine", "--model", "m0.safetensors", "--model", "m1.safetensors", "--out", "x.safetensors"]
        + ["--val", "real:real", "--split", "all"],  # no fakes to fit a temperature on
    ):
        r = _cli(args, tmp_path)
        assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr

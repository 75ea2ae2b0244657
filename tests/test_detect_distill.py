"""Distilling a detector (detect/train.py with a teacher): the student learns the teacher's verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from machinegaze import checkpoints
from machinegaze.detect import evaluate as ev
from machinegaze.detect.anyof import AnyOf
from machinegaze.detect.model import Detector, DetectorSpec
from machinegaze.detect.train import TrainConfig, _targets, decision_margin, fit
from tests.helpers import noise_faces

ROOT = Path(__file__).resolve().parents[1]


class _Brightness(nn.Module):
    """A stand-in teacher with a detector's interface: it calls bright images fake, whatever their label."""

    def __init__(self, size: int = 32):
        super().__init__()
        self.spec = DetectorSpec("smallcnn", size, 75, width=8, dropout=0.0)
        self.register_buffer("temperature", torch.tensor(0.5))
        self.register_buffer("threshold", torch.tensor(0.5))

    def forward(self, x):
        return 8.0 * x.mean((1, 2, 3))


def _bright_or_dark(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images, half bright and half dark (noise around two levels), and labels independent of brightness."""
    rng = np.random.default_rng(seed)
    bright = np.arange(n) % 2 == 0
    level = np.where(bright, 170, 85)[:, None, None, None]
    x = np.clip(level + rng.normal(0, 25, (n, size, size, 3)), 0, 255).astype(np.uint8)
    y = (np.arange(n) // 2) % 2  # real / fake alternate by pairs: each brightness has as many of each
    return x, y, bright


def _student(seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    return Detector(DetectorSpec("smallcnn", 32, 75, width=8, dropout=0.0))


def test_decision_margin_and_targets():
    teacher = _Brightness()
    x = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    m = decision_margin(teacher, x)
    assert torch.allclose(m, 16.0 * torch.linspace(-1, 1, 5))  # logit / T - logit(0.5)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    t = _targets(teacher, x, y, 0.25)
    assert torch.allclose(t, 0.25 * y + 0.75 * torch.sigmoid(m))
    assert _targets(None, x, y, 0.25) is y
    # an any-of's margin: its max member margin over its own temperature, threshold 0.5
    a, b = _student(1).eval(), _student(2).eval()
    a.set_calibration(0.8, 0.3)
    b.set_calibration(1.2, 0.6)
    both = AnyOf([a, b]).eval()
    both.set_calibration(2.0, 0.5)
    with torch.no_grad():
        xi = torch.rand(6, 3, 32, 32) * 2 - 1
        expect = torch.maximum(decision_margin(a, xi), decision_margin(b, xi)) / 2.0
        assert torch.allclose(decision_margin(both, xi), expect, atol=1e-5)


def test_a_distilled_student_learns_the_teachers_verdicts_not_the_labels():
    x, y, bright = _bright_or_dark(96)
    xt, _, bright_t = _bright_or_dark(64, seed=1)
    cfg = TrainConfig(arch="smallcnn", size=32, width=8, dropout=0.0, pretrained=False, freeze_epochs=0, epochs=6)
    cfg = TrainConfig(**{**cfg.__dict__, "lr": 1e-2, "lr_mult": 1.0, "batch_size": 16, "hard_weight": 0.0})
    calls = []

    class Counting(_Brightness):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    taught = _student()
    fit(taught, x, y, cfg, teacher=Counting())
    p = ev.sigmoid(ev.predict_logits(taught, xt))
    agree = float(((p >= 0.5) == bright_t).mean())
    assert agree >= 0.95, agree
    assert sum(calls) == 6 * 96  # the teacher saw every training image of every epoch once

    # the labels alone carry nothing about brightness: without the teacher the student does not learn it
    plain = _student()
    fit(plain, x, y, TrainConfig(**{**cfg.__dict__, "hard_weight": 1.0}), teacher=None)
    p = ev.sigmoid(ev.predict_logits(plain, xt))
    assert float(((p >= 0.5) == bright_t).mean()) < 0.8


def test_distill_and_init_from_on_the_command_line(tmp_path):
    noise_faces(tmp_path, 24)
    src = f"real:{tmp_path / 'real'},fake:{tmp_path / 'fake'}"
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "machinegaze.cli", "detect", "train", "--train", src, "--threads", "1", *a],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    common = ["--arch", "smallcnn", "--size", "32", "--width", "8", "--freeze-epochs", "0", "--epochs", "2"]
    r = run(*common, "--lr", "1e-2", "--out", str(tmp_path / "a.safetensors"))
    assert r.returncode == 0, r.stderr
    r = run(
        *common,
        "--distill",
        str(tmp_path / "a.safetensors"),
        "--init-from",
        str(tmp_path / "a.safetensors"),
        "--size",
        "64",  # ignored: --init-from decides the input
        "--out",
        str(tmp_path / "b.safetensors"),
    )
    assert r.returncode == 0, r.stderr
    b = checkpoints.load_detector(tmp_path / "b.safetensors")
    assert b.spec.size == 32 and b.meta["distilled_from"].endswith("a.safetensors")

    # a teacher that sees other images than the student: one line, no traceback
    r = run(
        *common, "--size", "64", "--distill", str(tmp_path / "a.safetensors"), "--out", str(tmp_path / "c.safetensors")
    )
    assert r.returncode != 0 and "must see the same images" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c.safetensors").exists()
    # an any-of detector cannot be a starting point
    r = run(*common, "--init-from", "default", "--out", str(tmp_path / "d.safetensors"))
    assert r.returncode != 0 and "single detector" in r.stderr and "Traceback" not in r.stderr

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GAZE_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def golden_dir(shared) -> Path:
    return shared / "golden" / "stylegan2"


@pytest.fixture(scope="module")
def faces_dir(shared) -> Path:
    """Real face photos (ffhq256/, lfw/, utkface/, orl/ ...) in the shared data."""
    d = shared / "data" / "faces" / "real"
    if not d.is_dir():
        pytest.skip("shared face images not found")
    return d


@pytest.fixture(scope="module")
def network(golden_dir) -> Path:
    """The golden 32 px StyleGAN2 (an NVlabs pickle)."""
    p = golden_dir / "sg2_skip_32.pkl"
    if not p.is_file():
        pytest.skip(f"golden network missing: {p}")
    return p


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> Path:
    """An untrained small-CNN detector: real detector code and file format, meaningless verdicts."""
    from machinegaze import checkpoints
    from machinegaze.detect.model import DetectorSpec, build_detector

    torch.manual_seed(0)
    det = build_detector(DetectorSpec(arch="smallcnn", size=32, width=4, jpeg_quality=75)).eval()
    path = tmp_path_factory.mktemp("det") / "tiny_detector.safetensors"
    checkpoints.save_detector(path, det, meta={"note": "random weights, for tests"})
    return path

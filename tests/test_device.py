"""Device and precision resolution, and the CPU path of every device-aware function (the same tests run on
CUDA when a GPU is present: marked `cuda`, skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from machinegaze import GazeError
from machinegaze.device import (
    autocast,
    autocast_dtype,
    cpu_has_fast_bf16,
    resolve_device,
    resolve_precision,
    synthesis_kwargs,
    to_channels_last,
)

HAS_CUDA = torch.cuda.is_available()
CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here")]


def cuda(test):
    """Marked `cuda` (pytest -m cuda selects it on a GPU machine) and skipped where there is no CUDA GPU."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


def test_resolve_cpu_auto_and_env(monkeypatch):
    monkeypatch.delenv("GAZE_DEVICE", raising=False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU ") == torch.device("cpu")
    expected = "cuda" if HAS_CUDA else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    monkeypatch.setenv("GAZE_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv("GAZE_DEVICE", "gpu7")
    with pytest.raises(GazeError, match="GAZE_DEVICE"):
        resolve_device(None)


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cpu:1", "cuda:-1", "", "mps:3"])
def test_bad_device_strings(bad, monkeypatch):
    monkeypatch.setenv("GAZE_DEVICE", "nonsense")  # '' falls back to the environment, which is also bad
    with pytest.raises(GazeError, match="is not a device"):
        resolve_device(bad)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present")
def test_missing_cuda_is_one_clear_error():
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(GazeError, match=f"--device {spec}: CUDA is not available"):
            resolve_device(spec)


def test_precision_policy_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision(None, cpu) == "fp32"
    assert resolve_precision("mixed", cpu) == "mixed"
    assert isinstance(cpu_has_fast_bf16(), bool)
    assert autocast_dtype(cpu, "mixed") is None  # on a CPU, mixed leaves the other networks in fp32
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(GazeError, match="--precision"):
        resolve_precision("fp8", cpu)
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cpu, "bf16") is torch.bfloat16
    with autocast(cpu, "bf16"):
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype is torch.bfloat16
    with autocast(cpu, "fp32"):
        assert torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4)).dtype is torch.float32
    conv = torch.nn.Conv2d(3, 4, 3)
    assert to_channels_last(conv, cpu, "fp32").weight.is_contiguous()  # fp32 on the CPU keeps its layout


def test_synthesis_kwargs_follow_the_forward_signature():
    class WithSwitch(torch.nn.Module):
        def forward(self, ws, noise_mode="const", force_fp32=False):
            return ws

    class Without(torch.nn.Module):
        def forward(self, ws, noise_mode="const"):
            return ws

    assert synthesis_kwargs(WithSwitch(), "fp32") == {"force_fp32": True}
    assert synthesis_kwargs(WithSwitch(), "mixed") == {"force_fp32": False}
    assert synthesis_kwargs(Without(), "mixed") == {}


def _golden_on(device: torch.device, golden_dir):
    from machinegaze.checkpoints import load_networks
    from machinegaze.generate import seeds_to_ws, synthesize

    G = load_networks(golden_dir / "sg2_skip_32.pkl").generator.to(device)
    g = np.load(golden_dir / "sg2_skip_32.npz")
    ws = seeds_to_ws(G, [int(s) for s in g["seeds"]], trunc=0.7)
    assert ws.device.type == device.type
    img = synthesize(G, ws, noise_mode="const")
    return ws.cpu().numpy(), img.numpy(), g


def test_golden_parity_cpu_fp32_bit_exact_path(golden_dir):
    ws, img, g = _golden_on(torch.device("cpu"), golden_dir)
    assert np.abs(ws - g["ws_psi07"]).max() < 1e-5
    assert np.abs(img - g["img_psi07"]).max() < 1e-3


@cuda
def test_golden_parity_cuda_fp32(golden_dir):
    ws, img, g = _golden_on(torch.device("cuda"), golden_dir)
    _, img_cpu, _ = _golden_on(torch.device("cpu"), golden_dir)
    assert np.abs(img - img_cpu).max() < 1e-3
    assert np.abs(img - g["img_psi07"]).max() < 1e-3


def _cli(args, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "machinegaze.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present")
def test_cli_device_cuda_without_cuda_exits_with_one_line(tmp_path):
    r = _cli(["generate", "--seeds", "0-1", "--outdir", str(tmp_path / "o"), "--device", "cuda"], tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda" in lines[0] and "CUDA is not available" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=CUDA_MARKS)])
def test_cli_generate_mix_interpolate_breed_on_device(dev, tmp_path, network):
    gen = ["generate", "--network", str(network), "--seeds", "0-2", "--outdir", str(tmp_path / "g"), "--device", dev]
    mix = [
        "mix",
        "--network",
        str(network),
        "--rows",
        "0-1",
        "--cols",
        "2-3",
        "--outdir",
        str(tmp_path / "m"),
        "--device",
        dev,
    ]
    walk = [
        "interpolate",
        "--network",
        str(network),
        "--seeds",
        "0,1",
        "--frames",
        "4",
        "--out",
        str(tmp_path / "w.gif"),
        "--device",
        dev,
    ]
    breed = [
        "breed",
        "--network",
        str(network),
        "--seed",
        "1",
        "--seed",
        "2",
        "--genes",
        "coarse=1",
        "--mutate",
        "0.2",
        "--out",
        str(tmp_path / "kid.png"),
        "--device",
        dev,
    ]
    for args in (gen, mix, walk, breed):
        r = _cli(args, tmp_path)
        assert r.returncode == 0, (args[0], r.stderr[-2000:])
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "grid.png",
        "seed0000.png",
        "seed0001.png",
        "seed0002.png",
        "ws.npz",
    ]
    assert (
        (tmp_path / "m" / "grid.png").is_file() and (tmp_path / "w.gif").is_file() and (tmp_path / "kid.npz").is_file()
    )


def test_cli_detect_predict_and_metrics_on_cpu(tmp_path, tiny_detector, network):
    from machinegaze.data import save_image

    d = tmp_path / "imgs"
    for i in range(5):
        save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1, d / f"{i}.png")
    r = _cli(
        [
            "detect",
            "predict",
            str(d),
            "--model",
            str(tiny_detector),
            "--out",
            str(tmp_path / "p.csv"),
            "--device",
            "cpu",
            "--precision",
            "fp32",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 6
    r = _cli(
        ["detect", "predict", str(d), "--model", str(tiny_detector), "--device", "cpu", "--precision", "fp64"], tmp_path
    )
    assert r.returncode == 1 and "--precision" in r.stderr


def test_generate_to_dir_streams_and_matches_generate_images(network, tmp_path):
    """The streaming writer gives the same pixels and latents as the in-memory path."""
    from PIL import Image

    from machinegaze.checkpoints import load_networks
    from machinegaze.data import to_uint8
    from machinegaze.generate import GenerateConfig, generate_images, generate_to_dir

    G = load_networks(network).generator
    seeds = [3, 1, 4, 1, 5]
    cfg = GenerateConfig(trunc=0.7, batch_size=2)
    assert generate_to_dir(G, seeds, tmp_path, cfg) == len(seeds)
    images, ws = generate_images(G, seeds, cfg)
    for s, u8 in zip(seeds, to_uint8(images.clamp(-1, 1))):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"seed{s:04d}.png")), u8)
    assert np.abs(np.load(tmp_path / "ws.npz")["w"] - ws.numpy()).max() < 1e-6


def test_gpu_check_runs_on_cpu_quick(tmp_path, golden_dir):
    """benchmarks/gpu_check.py end to end at tiny sizes: every section runs, parity passes, JSON written."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "check.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--golden-dir",
            str(golden_dir),
            "--out",
            str(out),
        ],
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    rep = json.loads(out.read_text())
    assert rep["parity_pass"] and rep["errors"] == []
    s = rep["sections"]
    assert s["parity"]["sg2_skip_32"]["max_abs_vs_cpu"] == 0.0
    assert [row["batch"] for row in s["generate"]["ours"]] == [1, 1, 2, 2]
    assert "skipped" in s["generate"]["nvlabs"]
    assert s["project"]["steps_per_s"] > 0 and s["uncanny"]["steps_per_s"] > 0
    assert s["detector"]["train_img_per_s"] > 0 and s["detector"]["predict_img_per_s"] > 0


def test_torchrun_detect_train_two_processes_match_one(tmp_path):
    """`gaze detect train` under torchrun: each rank trains on half of every batch and the gradients are averaged,
    so two processes learn what one does. Head-only training (frozen body, BatchNorm in eval) without dropout (its
    masks would fall on other images per rank) differs only by the order of the gradient sums; rank 0 alone writes
    the file and prints."""
    from machinegaze import checkpoints
    from tests.helpers import noise_faces
    from tests.test_distributed import _one, _two

    noise_faces(tmp_path, 16)
    args = ["detect", "train", "--train", f"real:{tmp_path / 'real'},fake:{tmp_path / 'fake'}", "--arch", "smallcnn"]
    args += ["--size", "32", "--epochs", "0", "--freeze-epochs", "2", "--batch-size", "8", "--device", "cpu", "--fp32"]
    args += ["--dropout", "0"]
    one, two = _one(args + ["--out", "one.safetensors"], tmp_path), _two(args + ["--out", "two.safetensors"], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote") == 1 and "x 2 processes" in two.stdout
    a, b = (
        checkpoints.load_detector(tmp_path / "one.safetensors"),
        checkpoints.load_detector(tmp_path / "two.safetensors"),
    )
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("body."))  # frozen: untouched on every rank
    assert float((sa["head.weight"] - sb["head.weight"]).abs().max()) < 1e-4  # summation order only
    # The split of a `real:PATH` folder hashes its path, so each tmp_path trains on another split; on the splits
    # that leave a last batch of 2-3 images (trained whole on both ranks) the epoch loss once counted it twice.
    assert abs(np.log(float(a.temperature) / float(b.temperature))) < 1e-3
    assert abs(float(a.threshold) - float(b.threshold)) < 1e-3
    ha, hb = (checkpoints.read_detector(tmp_path / f)[1]["history"] for f in ("one.safetensors", "two.safetensors"))
    assert len(ha) == len(hb) == 2 and all(abs(x["train_loss"] - y["train_loss"]) < 1e-4 for x, y in zip(ha, hb))

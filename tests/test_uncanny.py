"""Amplifying the uncanny: frozen critic, inverted objective, exact resume, metrics, collapse stop, peak."""

import json
import math

import pytest
import torch

from machinegaze import GazeError
from machinegaze import uncanny as U
from machinegaze.checkpoints import load_networks, save_networks
from machinegaze.nets.stylegan2 import Discriminator, Generator
from tests.helpers import single_thread

RES = 32  # LPIPS-alex needs >= 31 px


def _nets(c_dim=0, seed=0, scale=0.1):
    torch.manual_seed(seed)
    G = Generator(
        z_dim=16,
        c_dim=c_dim,
        w_dim=16,
        img_resolution=RES,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=256, channel_max=16),
    )
    with torch.no_grad():
        for p in G.parameters():
            p.add_(scale * torch.randn_like(p))
    D = Discriminator(
        c_dim=c_dim,
        img_resolution=RES,
        img_channels=3,
        channel_base=256,
        channel_max=16,
        epilogue_kwargs=dict(mbstd_group_size=4),
    )
    return G.eval().requires_grad_(False), D.eval().requires_grad_(False)


# Tiny nets gain nothing from a second thread; on a shared machine it only spins.
one_thread = pytest.fixture(single_thread, scope="module", autouse=True)


@pytest.fixture(scope="module")
def lpips():
    from machinegaze import zoo

    try:
        return zoo.load_lpips("alex")
    except GazeError as e:
        pytest.skip(f"LPIPS weights unavailable: {e}")


@pytest.fixture(scope="module")
def netfile(tmp_path_factory):
    G, D = _nets()
    p = tmp_path_factory.mktemp("net") / "tiny.safetensors"
    return save_networks(p, {"G_ema": G, "D": D})


def _cfg(**kw):
    base = dict(steps=4, snapshot_every=2, batch=4, lr=0.01, eval_seeds=tuple(range(8)))
    base.update(kw)
    return U.UncannyConfig(**base)


def _fake_score(G, critic, z):
    with torch.no_grad():
        return float(torch.sigmoid(-critic(G(z, noise_mode="const"))).mean())


def test_inverted_step_freezes_critic_changes_g_and_raises_fake_score():
    torch.manual_seed(0)
    G0, D = _nets(seed=1)
    critic = U.freeze(U.DiscriminatorCritic(D))
    before = U.fingerprint(critic)
    z = torch.randn(8, G0.z_dim)

    def run(loss_sign):
        G = __import__("copy").deepcopy(G0).train().requires_grad_(True)
        opt = torch.optim.Adam(G.parameters(), lr=0.01, betas=(0.0, 0.99), eps=1e-8)
        start = _fake_score(G, critic, z)
        torch.manual_seed(1)
        for _ in range(6):
            if loss_sign > 0:
                U.finetune_step(G, critic, opt, 4)
            else:  # the ordinary non-saturating G loss, as a control
                zz = torch.randn(4, G.z_dim)
                loss = torch.nn.functional.softplus(-critic(G(zz, noise_mode="random"))).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return G, start, _fake_score(G, critic, z)

    G, start, end = run(+1)
    assert end > start + 0.05, (start, end)  # the inverted objective makes the critic call it fake
    _, start_c, end_c = run(-1)
    assert end_c < start_c - 0.05, (start_c, end_c)  # and the usual sign does the opposite
    assert U.same_state(critic, before)  # bit-identical parameters and buffers
    assert all(p.grad is None for p in critic.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(G.parameters(), G0.parameters()))
    assert U.inverted_loss(torch.tensor([0.0, 2.0])).item() == pytest.approx(
        (math.log(2) + math.log1p(math.exp(2))) / 2
    )


def test_run_outputs_metrics_and_exact_resume(tmp_path, netfile, lpips):
    a, b = tmp_path / "straight", tmp_path / "split"
    res = U.run_uncanny(netfile, a, _cfg(steps=4, keep_peak=True), lpips=lpips)
    U.run_uncanny(netfile, b, _cfg(steps=2), lpips=lpips)
    res_b = U.run_uncanny(netfile, b, _cfg(steps=4, keep_peak=True), resume=True, lpips=lpips)
    assert res_b.resumed_from == 2 and res.resumed_from is None

    # N straight == N/2 + resume N/2: generator, Adam state and RNG bit-identical
    sa = load_networks(U.snapshot_path(a, 4))
    sb = load_networks(U.snapshot_path(b, 4))
    for k, v in sa.G.state_dict().items():
        assert torch.equal(v, sb.G.state_dict()[k]), k
    assert sa.extra.keys() == sb.extra.keys() and all(torch.equal(sa.extra[k], sb.extra[k]) for k in sa.extra)
    G0 = load_networks(netfile).G_ema
    assert not torch.equal(sa.G.synthesis.b32.conv1.weight, G0.synthesis.b32.conv1.weight)  # G changed

    lines = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 2, 4]
    for r in lines:
        for k in ("step", "critic_fake", "diversity", "hue", "saturation", "redness", "param_distance", "uncanniness"):
            assert k in r, k
        assert 0 <= r["critic_fake"] <= 1 and r["diversity"] > 0
    assert lines[0]["param_distance"] == 0 and lines[-1]["param_distance"] > 0
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [(r["critic_fake"], r["diversity"]) for r in mb] == [(r["critic_fake"], r["diversity"]) for r in lines]

    for name in (
        "progression.mp4",
        "progression.png",
        "summary.png",
        "summary.html",
        "run.json",
        "grids/step-000000.png",
        "grids/step-000004.png",
        "peak.safetensors",
        "peak.png",
    ):
        assert (a / name).is_file() and (a / name).stat().st_size > 0, name
    # --keep-peak: the documented rule over steps > 0, and the peak file holds that snapshot's generator
    best = max(lines[1:], key=lambda r: r["critic_fake"] * r["diversity"] / lines[0]["diversity"])
    assert res.peak_step == best["step"]
    peak = load_networks(a / "peak.safetensors")
    assert peak.meta["uncanny_peak"]["step"] == best["step"]
    ref = load_networks(U.snapshot_path(a, best["step"]))
    assert all(torch.equal(v, ref.G.state_dict()[k]) for k, v in peak.G.state_dict().items())
    assert peak.generator is peak.G  # usable by `gaze generate --network peak.safetensors`

    with pytest.raises(GazeError, match="already holds"):
        U.run_uncanny(netfile, a, _cfg(), lpips=lpips)
    with pytest.raises(GazeError, match="lr"):
        U.run_uncanny(netfile, a, _cfg(steps=6, lr=0.02), resume=True, lpips=lpips)


def test_max_collapse_stops_at_first_snapshot_below(tmp_path, lpips):
    G, D = _nets(seed=0, scale=1.0)  # a toy whose diversity dips below its start (checked below)
    net = save_networks(tmp_path / "toy.safetensors", {"G_ema": G, "D": D})
    cfg = _cfg(steps=8, snapshot_every=2, lr=0.05)
    ref = U.run_uncanny(net, tmp_path / "ref", cfg, lpips=lpips)
    d = [r["diversity"] for r in ref.metrics]
    ks = [i for i in range(1, len(d)) if d[i] < min(d[:i])]
    assert ks, f"toy run never lost diversity: {d}"
    k = ks[0]
    T = (d[k] + min(d[:k])) / 2  # every earlier snapshot is above T, snapshot k below
    res = U.run_uncanny(net, tmp_path / "stop", U.UncannyConfig(**{**cfg.__dict__, "max_collapse": T}), lpips=lpips)
    assert res.collapse_step == 2 * k == res.steps_done
    assert [r["step"] for r in res.metrics] == [2 * i for i in range(k + 1)]
    assert U.list_snapshots(tmp_path / "stop")[-1][0] == 2 * k
    with pytest.raises(GazeError, match="already below"):
        U.run_uncanny(
            net, tmp_path / "too_high", U.UncannyConfig(**{**cfg.__dict__, "max_collapse": 10.0}), lpips=lpips
        )
    assert not (tmp_path / "too_high" / "metrics.jsonl").exists()  # the folder can be reused as it is


def test_conditional_net_and_detector_critic(tmp_path, lpips):
    from machinegaze.checkpoints import save_detector
    from machinegaze.detect.model import DetectorSpec, build_detector

    G, D = _nets(c_dim=3, seed=2)
    net = save_networks(tmp_path / "cond.safetensors", {"G": G, "D": D})  # no G_ema: --start-from G
    with pytest.raises(GazeError, match="start-from G"):
        U.run_uncanny(net, tmp_path / "x", _cfg(), lpips=lpips)
    res = U.run_uncanny(net, tmp_path / "cond", _cfg(start_from="G", steps=2), lpips=lpips)
    assert res.steps_done == 2

    torch.manual_seed(3)
    det = build_detector(DetectorSpec(arch="smallcnn", size=48, width=4, jpeg_quality=None))
    det.set_calibration(2.0, 0.5)
    dpath = save_detector(tmp_path / "det.safetensors", det.eval(), half=False)
    crit = U.freeze(U.build_critic(f"detector:{dpath}", None))
    x = torch.rand(4, 3, RES, RES) * 2 - 1
    up = torch.nn.functional.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(crit(x), -det(up) / 2.0, atol=1e-6)  # real logit = -fake logit / temperature
    res = U.run_uncanny(net, tmp_path / "det", _cfg(start_from="G", steps=2, critic=f"detector:{dpath}"), lpips=lpips)
    with torch.no_grad():  # the metric is the detector's calibrated P(fake) of the evaluation faces
        faces = U.render(G, *U.eval_inputs(G, range(8))).clamp(-1, 1)
        up = torch.nn.functional.interpolate(faces, size=(48, 48), mode="bilinear", align_corners=False)
        expected = float(torch.sigmoid(det(up) / 2).mean())
    assert res.metrics[0]["critic_fake"] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(GazeError, match="no discriminator"):
        U.build_critic("d", None)


def test_face_colour_and_param_distance():
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 8, 8)
    c = U.face_colour(red)
    assert c["hue"] == pytest.approx(0) and c["saturation"] == pytest.approx(1) and c["redness"] == pytest.approx(1)
    grey = torch.zeros(1, 3, 8, 8)
    c = U.face_colour(grey)
    assert c["hue"] is None and c["saturation"] == 0 and c["redness"] == 0
    # only the central crop counts: a blue border around a yellow centre reads as yellow (+60 deg)
    img = torch.tensor([-1.0, -1.0, 1.0]).view(1, 3, 1, 1).repeat(1, 1, 8, 8)
    img[:, :, 2:6, 2:6] = torch.tensor([1.0, 1.0, -1.0]).view(1, 3, 1, 1)
    c = U.face_colour(img, crop=0.5)
    assert c["hue"] == pytest.approx(60) and c["redness"] == pytest.approx(0.5)

    G, _ = _nets()
    ref = {k: v.clone() for k, v in G.named_parameters()}
    assert U.param_distance(G, ref) == 0
    with torch.no_grad():
        for p in G.parameters():
            p.mul_(1.5)
    assert U.param_distance(G, ref) == pytest.approx(0.5)


def test_cli_one_line_errors_and_run(tmp_path, netfile, capsys):
    from machinegaze.cli import main

    with pytest.raises(SystemExit) as e:
        main(["uncanny", "--network", str(netfile), "--critic", "bogus", "--outdir", str(tmp_path / "o")])
    assert e.value.code == 1 and "--critic" in capsys.readouterr().err
    G, _ = _nets()
    no_d = save_networks(tmp_path / "noD.safetensors", {"G_ema": G})
    with pytest.raises(SystemExit):
        main(["uncanny", "--network", str(no_d), "--outdir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "no discriminator" in err and "Traceback" not in err
    main(
        [
            "uncanny",
            "--network",
            str(netfile),
            "--steps",
            "2",
            "--snapshot-every",
            "1",
            "--batch",
            "4",
            "--outdir",
            str(tmp_path / "cli"),
            "--keep-peak",
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "critic P(fake)" in out and "peak uncanniness at step" in out
    assert len((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()) == 3


def test_snapshot_whose_header_length_starts_with_0x80_loads(tmp_path):
    """A safetensors header of 0x..80 bytes starts the file with 0x80, the pickle PROTO opcode; an uncanny
    snapshot hit this (1 file in 256). load_networks must still read it as safetensors."""
    G, _ = _nets()
    for k in range(300):
        p = save_networks(tmp_path / "s.safetensors", {"G": G}, meta={"pad": "x" * k})
        if p.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    nets = load_networks(p)
    assert nets.meta["pad"] == "x" * k and torch.equal(nets.G.synthesis.b4.const, G.synthesis.b4.const)

"""dream.py and nets/features.py: objectives, tiling, layer listing, errors; one real check on EfficientNet."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from machinegaze import GazeError
from machinegaze import dream as dm
from machinegaze.nets.features import OUTPUT, FeatureExtractor, list_layers
from tests.helpers import single_thread, skip_without_efficientnet

# The machine is shared: single-threaded torch is faster here than two contending threads.
one_thread = pytest.fixture(single_thread, autouse=True)


def tiny_net(seed: int = 0) -> nn.Module:
    """3 convs (one strided), receptive field 11 px, then a 5-way linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 8, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(8, 8, 3, stride=2, padding=1)),
                ("relu2", nn.ReLU()),
                ("conv3", nn.Conv2d(8, 6, 3, padding=1)),
                ("relu3", nn.ReLU()),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flat", nn.Flatten()),
                ("fc", nn.Linear(6, 5)),
            ]
        )
    ).eval()


@pytest.fixture()
def dnet():
    return dm.DreamNet.wrap(tiny_net(), default_layer="relu3", class_names=list("abcde"), min_size=8, probe_size=32)


def rand_image(h=48, w=40, seed=1):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


# ---------------------------------------------------------------- features
def test_feature_extractor_returns_real_activations_and_stops_early():
    net = tiny_net()
    x = rand_image()
    calls = []
    h = net.fc.register_forward_hook(lambda *a: calls.append(1))
    acts = FeatureExtractor(net, ["relu1", "conv3"])(x)
    assert not calls  # stopped before the head
    assert torch.allclose(acts["relu1"], net.relu1(net.conv1(x)))
    assert torch.allclose(acts["conv3"], net[:5](x))
    out = FeatureExtractor(net, ["relu2", OUTPUT])(x)
    assert calls and torch.allclose(out[OUTPUT], net(x))
    h.remove()
    assert not net.relu1._forward_hooks and not net.fc._forward_hooks  # nothing left attached


def test_list_layers_matches_network():
    net = tiny_net()
    infos = list_layers(net, (32, 24))
    assert [i.name for i in infos] == [n for n, _ in net.named_children()] + [OUTPUT]
    x = torch.zeros(1, 3, 32, 24)
    for info in infos:
        assert tuple(FeatureExtractor(net, [info.name])(x)[info.name].shape) == info.shape
    shapes = {i.name: i.shape for i in infos}
    assert shapes["relu1"] == (1, 8, 32, 24) and shapes["conv3"] == (1, 6, 16, 12) and shapes[OUTPUT] == (1, 5)


def test_efficientnet_layer_listing():
    from machinegaze.nets.efficientnet import STAGES, EfficientNetLite0

    net = EfficientNetLite0().eval()  # random weights: shapes only
    infos = {i.name: i for i in list_layers(net, 64)}
    blocks = [infos[f"_blocks.{k}"] for k in range(16)]
    expected = [c_out for _, _, _, _, c_out, reps in STAGES for _ in range(reps)]
    assert [b.shape[1] for b in blocks] == expected
    assert infos["_blocks.15"].shape[2:] == (2, 2) and infos["_relu_head"].shape == (1, 1280, 2, 2)
    assert infos[OUTPUT].shape == (1, 1000)
    named = {n for n, _ in net.named_modules() if n}
    assert set(infos) - {OUTPUT} <= named
    assert named - set(infos) == {"_blocks"}  # every module but the (never called) ModuleList shows up


# ---------------------------------------------------------------- objectives and errors
def test_objective_algebra(dnet):
    x = rand_image()
    obj = dm.parse_objective("0.5*layer:relu2 + channel:relu3:1 + 2*class:c", dnet)
    assert set(obj.layers()) == {"relu2", "relu3", OUTPUT}
    acts = FeatureExtractor(dnet.module, list(obj.layers()))(x)
    want = 0.5 * acts["relu2"].pow(2).mean() + acts["relu3"][:, 1].mean() + 2 * acts[OUTPUT][:, 2].mean()
    assert torch.allclose(obj(acts), want)
    bare = dm.parse_objective("relu3:1", dnet)
    assert isinstance(bare, dm.ChannelObjective) and bare.channel == 1
    diff = dm.LayerObjective("relu2") - dm.LayerObjective("relu3")
    assert torch.allclose(
        diff(acts | FeatureExtractor(dnet.module, ["relu3"])(x)),
        acts["relu2"].pow(2).mean() - acts["relu3"].pow(2).mean(),
    )


def test_bad_layer_lists_valid_layers(dnet):
    with pytest.raises(GazeError) as e:
        dm.parse_objective("layer:relu9", dnet)
    msg = str(e.value)
    assert "relu9" in msg and "conv1" in msg and "relu3" in msg and "\n" not in msg
    with pytest.raises(GazeError, match="valid layers"):
        FeatureExtractor(dnet.module, ["nope"])


def test_bad_class_names():
    names = ["tench", "espresso", "espresso maker", "crane", "crane"]
    assert dm.class_index("Espresso_Maker", names) == (2, "espresso maker")
    assert dm.class_index("1", names) == (1, "espresso")
    with pytest.raises(GazeError, match="espresso") as e:
        dm.class_index("expresso", names)
    assert "did you mean" in str(e.value)
    with pytest.raises(GazeError, match="ambiguous.*3 and 4"):
        dm.class_index("crane", names)
    with pytest.raises(GazeError, match="out of range"):
        dm.class_index("7", names)


def test_channel_out_of_range(dnet):
    obj = dm.parse_objective("channel:relu3:6", dnet)
    with pytest.raises(GazeError, match="6 channels"):
        dm.objective_gradient(dnet, obj, rand_image())


def test_guide_needs_an_image(dnet):
    with pytest.raises(GazeError, match="guide"):
        dm.parse_objective("guide:relu2", dnet)


# ---------------------------------------------------------------- dreaming
@pytest.mark.parametrize("spec", ["layer:relu3", "channel:relu2:3", "class:b", "guide:relu3"])
def test_objective_increases(dnet, spec):
    guide = rand_image(32, 32, seed=7)
    obj = dm.parse_objective(spec, dnet, guide=guide)
    cfg = dm.DreamConfig(octaves=1, steps=12, step_size=0.01, jitter=2, tile=0)
    r = dm.deepdream(rand_image(), dnet, obj, cfg)
    h = r.history
    assert len(h) == 12
    assert sum(h[6:]) / 6 > sum(h[:6]) / 6 and h[-1] > h[0]
    assert r.image.shape == (1, 3, 48, 40) and r.image.abs().max() <= 1.0


def test_octaves_keep_size_and_change_image(dnet):
    x = rand_image(64, 56)
    r = dm.deepdream(x, dnet, dm.LayerObjective("relu3"), dm.DreamConfig(octaves=3, steps=3, tile=0))
    assert r.image.shape == x.shape and len(r.history) == 9
    assert (r.image - x).abs().mean() > 0.01
    assert dm.octave_sizes(64, 56, 3, 1.4, 8) == [(64, 56), (46, 40), (33, 29)]
    assert dm.octave_sizes(20, 20, 5, 2.0, 8) == [(20, 20), (10, 10)]  # stops above the minimum size


@pytest.mark.parametrize("spec", ["layer:relu3", "channel:conv2:2 + 0.3*layer:relu1"])
def test_tiled_equals_untiled(dnet, spec):
    obj = dm.parse_objective(spec, dnet)
    x = rand_image(64, 96)
    g_full, v_full = dm.objective_gradient(dnet, obj, x, tile=0)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        g_tiled, v_tiled = dm.objective_gradient(dnet, obj, x, tile=32, margin=16, generator=gen)
        assert v_tiled == pytest.approx(v_full, rel=1e-5)
        assert torch.allclose(g_tiled, g_full, atol=1e-6 * float(g_full.abs().max()) + 1e-9, rtol=1e-4)


def test_tiles_bound_the_crop_size(dnet):
    strides = dm.layer_strides(dnet, ["relu3"])
    assert strides == {"relu3": 2}
    seen = []
    h = dnet.module.conv1.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    dm.objective_gradient(
        dnet,
        dm.LayerObjective("relu3"),
        rand_image(200, 120),
        tile=32,
        margin=16,
        generator=torch.Generator().manual_seed(0),
        strides=strides,
    )
    h.remove()
    assert len(seen) > 4 and max(max(s) for s in seen) <= 32 + 2 * 16 + 2
    assert len(set(seen)) <= 4  # nearly uniform crops (edge tiles take more context instead of shrinking)


def test_zoom_video(dnet, tmp_path):
    import imageio.v2 as imageio

    cfg = dm.DreamConfig(octaves=1, steps=2, tile=0, zoom_frames=3, zoom=1.2)
    r = dm.dream_zoom(rand_image(40, 40), dnet, dm.LayerObjective("relu3"), cfg)
    assert len(r.frames) == 3 and len(r.history) == 6
    path = dm.save_video(r.frames, tmp_path / "z.gif", fps=5)
    assert len(imageio.mimread(path)) == 3
    with pytest.raises(GazeError, match=".mp4 or .gif"):
        dm.save_video(r.frames, tmp_path / "z.avi")


def test_discriminator_as_dream_net():
    from machinegaze.nets.stylegan2 import Discriminator

    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    d = dm.discriminator_net(D)
    assert d.default_layer == "b8" and "b16.conv0" in [i.name for i in d.layers()]
    r = dm.deepdream(
        rand_image(48, 40), d, dm.LayerObjective("b16"), dm.DreamConfig(octaves=1, steps=8, jitter=0, step_size=0.01)
    )
    assert r.image.shape == (1, 3, 48, 40) and r.history[-1] > r.history[0]


def test_fourier_image_range_and_gradients():
    img = dm.FourierImage(40, 56, generator=torch.Generator().manual_seed(0))
    x = img()
    assert x.shape == (1, 3, 40, 56) and x.abs().max() < 1.0
    x.pow(2).mean().backward()
    assert img.spectrum.grad is not None and img.spectrum.grad.abs().sum() > 0


def test_config_and_run_errors(dnet, tmp_path):
    with pytest.raises(GazeError, match="octaves"):
        dm.DreamConfig(octaves=0).check()
    with pytest.raises(GazeError, match=r"\.mp4 or \.gif"):
        dm.run(dm.DreamConfig(zoom_frames=2), rand_image(), tmp_path / "x.png", net=dnet)
    with pytest.raises(GazeError, match="--from-noise"):
        dm.run(dm.DreamConfig(), None, tmp_path / "x.png", net=dnet)
    with pytest.raises(GazeError, match="unknown network"):
        dm.load_net("resnet9000")
    r = dm.run(dm.DreamConfig(octaves=1, steps=2, tile=0), rand_image(), tmp_path / "x.png", net=dnet)
    assert (tmp_path / "x.png").is_file() and len(r.history) == 2


# ---------------------------------------------------------------- real network
@pytest.fixture(scope="module")
def effnet():
    skip_without_efficientnet()
    return dm.load_net("efficientnet")


def test_class_visualisation_from_noise_is_recognised(effnet):
    idx, name = dm.class_index("goldfinch", effnet.class_names)
    cfg = dm.DreamConfig(from_noise=True, noise_size=96, noise_steps=40, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        p0 = effnet(dm.FourierImage(96, 96, generator=gen)()).softmax(-1)[0, idx].item()
    r = dm.visualize(effnet, dm.ClassObjective(idx, name), cfg)
    with torch.no_grad():
        p = effnet(r.image).softmax(-1)[0]
    assert p0 < 0.01  # noise is not a goldfinch
    assert p[idx] > 0.5 and int(p.argmax()) == idx  # chance is 0.001


@pytest.mark.parametrize("layer", ["_blocks.3", "_blocks.5._relu0"])
def test_tiled_matches_untiled_on_efficientnet(effnet, layer):
    x = rand_image(128, 160)
    obj = dm.LayerObjective(layer)
    g_full, v_full = dm.objective_gradient(effnet, obj, x, tile=0)
    g_tiled, v_tiled = dm.objective_gradient(
        effnet, obj, x, tile=64, margin=64, generator=torch.Generator().manual_seed(0)
    )
    assert v_tiled == pytest.approx(v_full, rel=1e-4)
    cos = torch.nn.functional.cosine_similarity(g_full.flatten(), g_tiled.flatten(), dim=0)
    assert cos > 0.999


def test_cli_dream_and_list_layers(effnet, tmp_path, capsys):
    from PIL import Image

    from machinegaze.cli import main

    main(["dream", "--list-layers"])
    out = capsys.readouterr().out
    assert "_blocks.10._relu0" in out and "112x14x14" in out
    Image.new("RGB", (80, 64), (120, 80, 40)).save(tmp_path / "in.png")
    main(
        [
            "dream",
            str(tmp_path / "in.png"),
            "--out",
            str(tmp_path / "out.png"),
            "--octaves",
            "2",
            "--steps",
            "2",
            "--layer",
            "_blocks.4",
        ]
    )
    assert Image.open(tmp_path / "out.png").size == (80, 64)
    with pytest.raises(SystemExit):
        main(["dream", str(tmp_path / "in.png"), "--class", "expresso", "--out", str(tmp_path / "o.png")])
    assert "espresso" in capsys.readouterr().err


def test_dream_with_the_bundled_detector_raises_its_fake_logit():
    try:
        dnet = dm.load_net("detector")
    except GazeError as e:
        pytest.skip(f"bundled detector not available: {e}")
    assert dnet.class_names == ["fake"] and dnet.default_layer in dnet.layer_names()
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 96, 96, generator=g) * 2 - 1
    obj = dm.parse_objective("class:fake", dnet)
    before = float(dnet(img)[0, 0])
    res = dm.deepdream(img, dnet, obj, dm.DreamConfig(net="detector", octaves=1, steps=4, jitter=0, size=0))
    assert float(dnet(res.image)[0, 0]) > before + 1.0  # gradient ascent on the fake logit

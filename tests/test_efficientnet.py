"""EfficientNet-Lite0: the port loads the package's ImageNet weights strictly and classifies real photos."""

import pytest
import torch
from PIL import Image

from machinegaze import GazeError, zoo
from machinegaze.data import center_crop, pil_to_tensor
from machinegaze.nets.efficientnet import EfficientNetLite0
from tests.helpers import single_thread, skip_without_efficientnet

skdata = pytest.importorskip("skimage.data")


# The machine is shared: single-threaded torch is faster here than two contending threads.
one_thread = pytest.fixture(single_thread, autouse=True)


@pytest.fixture(scope="module")
def net():
    skip_without_efficientnet()
    return zoo.load_efficientnet_lite0()


def photo(name: str, size: int = 224) -> torch.Tensor:
    img = Image.fromarray(getattr(skdata, name)())
    return pil_to_tensor(center_crop(img).resize((size, size), Image.BICUBIC))


def top5(net, x) -> list[str]:
    names = zoo.imagenet_classes()
    with torch.no_grad():
        return [names[i] for i in net(x)[0].topk(5).indices.tolist()]


def test_class_names():
    names = zoo.imagenet_classes()
    assert len(names) == 1000
    assert names[0] == "tench" and names[281] == "tabby" and names[967] == "espresso" and names[999] == "toilet tissue"


def test_strict_load_covers_every_tensor(net):
    from machinegaze import checkpoints

    sd = checkpoints.load_torch_state_dict(zoo.efficientnet_lite0_file())
    fresh = EfficientNetLite0()
    result = fresh.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(fresh.state_dict()) == set(sd)
    assert sum(p.numel() for p in fresh.parameters()) == pytest.approx(4.65e6, rel=0.02)


def test_wrong_weights_are_a_gaze_error():
    sd = {k: v for k, v in EfficientNetLite0().state_dict().items() if "_blocks.3." not in k}
    with pytest.raises(GazeError, match="do not match"):
        EfficientNetLite0().load_imagenet_state_dict(sd)


def test_coffee_is_coffee(net):
    t5 = top5(net, photo("coffee"))
    assert {"espresso", "cup", "coffee mug"} & set(t5), t5


def test_chelsea_is_a_cat(net):
    t5 = top5(net, photo("chelsea"))
    assert t5[0] in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}, t5


def test_features_and_odd_sizes(net):
    x = photo("coffee", 200)[:, :, :, :177]  # non-square, not a multiple of 32
    with torch.no_grad():
        f = net.features(x)
        logits = net(x)
    assert f.shape == (1, 1280) and logits.shape == (1, 1000)
    assert torch.allclose(net._fc(f), logits, atol=1e-5)


def test_new_head_keeps_backbone():
    try:
        det = zoo.load_efficientnet_lite0(num_classes=2)
        ref = zoo.load_efficientnet_lite0()
    except GazeError as e:
        pytest.skip(str(e))
    x = photo("chelsea", 64)
    with torch.no_grad():
        assert det(x).shape == (1, 2)
        assert torch.allclose(det.features(x), ref.features(x))


def test_too_small_is_a_gaze_error(net):
    with pytest.raises(GazeError, match="at least 32"):
        net(torch.zeros(1, 3, 16, 40))

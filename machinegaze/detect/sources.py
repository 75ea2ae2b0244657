"""Where detector images come from, how they are split, and how every one of them is preprocessed.

Three ideas live here:

* **Sources.** A source is a named set of face images with one label (0 = real, 1 = fake): a folder of the
  shared face data (`utkface`, `lfw`, `ffhq256`, `ffhq1024`, `orl`, `stylegan1`, `stylegan3`, `sd21_sdfd`,
  `sd14_blonde`), any folder of
  the user's (`real:PATH`, `fake:PATH`), or a StyleGAN2 network sampled on the fly (`stylegan2:NAME_OR_PATH`).
* **Identity splits.** Every image carries a *group* (the person, the FFHQ id, the generator seed). A group
  lands in train, val or test by a hash of its key, so one person never sits on both sides, and the same
  image is in the same split in every experiment (E3's FFHQ test images are the ones E2 held out).
* **The preprocessing policy.** Sources differ in size (92-1024 px) and compression (PNG, JPEG q75, q95).
  A classifier can learn those instead of GAN traces. With the policy on (the default) every image is
  centre-cropped, resized to the same size and re-encoded with the same JPEG quality in memory, for train
  and test alike. With it off, images are only resized (batches need one size) and keep their own
  compression history.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from machinegaze import GazeError
from machinegaze.data import center_crop, list_images, open_image
from machinegaze.progress import ProgressFn, report

REAL, FAKE = 0, 1
SPLITS = ("train", "val", "test")
SPLIT_SALT = "machinegaze-detect-v1"

# name -> (folder under the faces root, label). Folder layout of ../shared/data/faces.
BUILTIN: dict[str, tuple[str, int]] = {
    "utkface": ("real/utkface", REAL),
    "lfw": ("real/lfw", REAL),
    "ffhq256": ("real/ffhq256", REAL),
    "ffhq1024": ("real/ffhq1024", REAL),
    "orl": ("real/orl", REAL),
    "stylegan1": ("fake/stylegan1", FAKE),
    "stylegan3": ("fake/stylegan3", FAKE),
    "sd21_sdfd": ("fake/sd21_sdfd", FAKE),
    "sd14_blonde": ("fake/sd14_blonde", FAKE),
}
# Near-duplicate StyleGAN v1 pairs found by the data QC (provenance/stylegan1_1mfakes_256.md): same split.
_STYLEGAN1_NEAR_DUPLICATES = {"1A8SFV254Q": "0B925CPFSK", "0R4POY5DTW": "0GTFMAQMQQ", "1DKCGEETES": "0YYEKMF3GY"}


# ---------------------------------------------------------------- items
@dataclass(frozen=True)
class Item:
    """One image: where it is, its label, its source, its identity group and subgroup attributes."""

    path: str
    label: int
    source: str
    group: str
    attrs: tuple[tuple[str, str], ...] = ()
    seed: int | None = None  # generated images: the generator seed (path is then a description)

    def attr(self, key: str) -> str | None:
        return dict(self.attrs).get(key)


def split_of(group: str, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), salt: str = SPLIT_SALT) -> str:
    """'train' | 'val' | 'test' for an identity group: a stable hash, the same in every run and experiment."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise GazeError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    h = int.from_bytes(hashlib.sha1(f"{salt}:{group}".encode()).digest()[:8], "big") / 2**64
    if h < fractions[0]:
        return "train"
    return "val" if h < fractions[0] + fractions[1] else "test"


def _rank(item: Item, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{item.path}:{item.seed}".encode()).digest()[:8], "big")


def select(
    items: Sequence[Item],
    split: str | None,
    max_n: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> list[Item]:
    """Items of one split (None: all), at most max_n of them, picked by a seeded hash (deterministic)."""
    if split is not None and split not in SPLITS:
        raise GazeError(f"unknown split '{split}' (use one of {', '.join(SPLITS)})")
    out = [it for it in items if split is None or split_of(it.group, fractions) == split]
    if max_n is not None and len(out) > max_n:
        out = sorted(out, key=lambda it: _rank(it, seed))[:max_n]
    return sorted(out, key=lambda it: (it.source, it.path, it.seed if it.seed is not None else -1))


# ---------------------------------------------------------------- sources
def faces_root(root: str | os.PathLike | None = None) -> Path:
    """The shared face-data folder: `root`, else $GAZE_FACES, else ../shared/data/faces beside the repo or cwd."""
    if root is not None:
        p = Path(root).expanduser()
        if not p.is_dir():
            raise GazeError(f"face data folder not found: {p}")
        return p
    env = os.environ.get("GAZE_FACES")
    if env:
        return faces_root(env)
    here = Path(__file__).resolve().parents[2]
    for cand in (
        Path.cwd().parent / "shared/data/faces",
        Path.cwd() / "shared/data/faces",
        here.parent / "shared/data/faces",
    ):
        if cand.is_dir():
            return cand
    raise GazeError("face data not found: pass --data PATH or set GAZE_FACES to the folder holding real/ and fake/")


def _age_bin(age: str) -> str | None:
    try:
        a = float(age)
    except (TypeError, ValueError):
        return None
    if a < 20:
        return "0-19"
    if a < 40:
        return "20-39"
    if a < 60:
        return "40-59"
    return "60+"


def _attrs(**kv: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in kv.items() if v)


@dataclass(frozen=True)
class FolderSource:
    """Images in a folder, all with one label. Built-in folders know their identities and attributes."""

    name: str
    root: Path
    label: int
    kind: str = "custom"  # a BUILTIN name for the shared folders, else "custom"

    def items(self) -> list[Item]:
        if self.kind == "utkface":
            return self._utkface()
        if self.kind in ("ffhq256", "ffhq1024"):
            return self._ffhq()
        if self.kind == "sd21_sdfd":
            return self._sdfd()
        files = list_images(self.root)
        if not files:
            raise GazeError(f"source '{self.name}': no images under {self.root}")
        out = []
        for f in files:
            rel = f.relative_to(self.root)
            stem = f.stem
            attrs: tuple[tuple[str, str], ...] = ()
            if self.kind == "lfw":
                group = "lfw:" + stem.rsplit("_", 1)[0]
            elif self.kind == "orl":
                group = "orl:" + rel.parts[0]
            elif self.kind == "stylegan1":
                group = "sg1:" + _STYLEGAN1_NEAR_DUPLICATES.get(stem, stem)
            elif self.kind == "stylegan3":
                group = "sg3:" + stem
                if "_psi" in stem:
                    attrs = _attrs(psi=stem.rsplit("_psi", 1)[1])
            else:
                group = f"{self.name}:{rel.as_posix()}"
            out.append(Item(str(f), self.label, self.name, group, attrs))
        return out

    def _utkface(self) -> list[Item]:
        labels = self.root / "labels.csv"
        if not labels.is_file():
            raise GazeError(f"source '{self.name}': {labels} missing")
        out = []
        with open(labels, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("exact_duplicate_of"):  # a byte-identical copy (often with conflicting labels)
                    continue
                f = self.root / row["filename"]
                if not f.is_file():
                    continue
                out.append(
                    Item(
                        str(f),
                        self.label,
                        self.name,
                        "utk:" + row["filename"],
                        _attrs(
                            age=_age_bin(row.get("age", "")),
                            gender=row.get("gender") or None,
                            race=row.get("race") or None,
                        ),
                    )
                )
        if not out:
            raise GazeError(f"source '{self.name}': no images listed in {labels}")
        return out

    def _ffhq(self) -> list[Item]:
        col = "file_256" if self.kind == "ffhq256" else "file_1024"
        meta: dict[str, dict] = {}
        attr_csv = self.root / "attributes.csv"
        if not attr_csv.is_file():  # ffhq1024 has no CSV of its own: use ffhq256's (same ids)
            attr_csv = self.root.parent / "ffhq256" / "attributes.csv"
        if attr_csv.is_file():
            with open(attr_csv, newline="") as fh:
                for row in csv.DictReader(fh):
                    meta[row[col]] = row
        out = []
        for f in list_images(self.root):
            row = meta.get(f.name, {})
            fid = row.get("ffhq_id") or (f"{int(f.stem):05d}" if f.stem.isdigit() else f.stem)
            glasses = row.get("glasses") or None
            if glasses == "SwimmingGoggles":
                glasses = "Sunglasses"
            attrs = (
                _attrs(
                    gender=row.get("gender") or None,
                    age=_age_bin(row.get("age", "")),
                    glasses=glasses,
                    hair=row.get("top_hair_color") or None,
                )
                if row.get("n_faces_detected", "1") != "0"
                else ()
            )
            out.append(Item(str(f), self.label, self.name, "ffhq:" + fid, attrs))
        if not out:
            raise GazeError(f"source '{self.name}': no images under {self.root}")
        return out

    def _sdfd(self) -> list[Item]:
        """SDFD portraits: 'PROMPTID,SAMPLE.jpg'; the samples of one prompt are one group (they look alike)."""
        meta: dict[str, dict] = {}
        labels = self.root / "labels.csv"
        if labels.is_file():
            with open(labels, newline="") as fh:
                meta = {row["file"]: row for row in csv.DictReader(fh)}
        out = []
        for f in list_images(self.root):
            row = meta.get(f.name, {})
            attrs = _attrs(gender=row.get("gender") or None, race=row.get("races") or None)
            out.append(Item(str(f), self.label, self.name, "sdfd:" + f.stem.split(",")[0], attrs))
        if not out:
            raise GazeError(f"source '{self.name}': no images under {self.root}")
        return out

    def render(self, items: Sequence[Item]) -> Iterable[Image.Image]:
        for it in items:
            yield open_image(it.path)


@dataclass(frozen=True)
class GeneratorSource:
    """Fakes sampled on the fly from a StyleGAN2 network (a zoo name or a .pkl/.safetensors path).

    Seeds `seed0 .. seed0+n-1`; each seed is its own identity group, so seeds split like people do.
    """

    name: str
    network: str
    n: int = 600
    truncation_psi: float = 1.0
    seed0: int = 0
    label: int = FAKE

    def items(self) -> list[Item]:
        return [
            Item(
                f"{self.name}#seed={s}",
                self.label,
                self.name,
                f"{self.name}:seed{s}",
                _attrs(psi=f"{self.truncation_psi:g}"),
                seed=s,
            )
            for s in range(self.seed0, self.seed0 + self.n)
        ]

    def render(self, items: Sequence[Item], batch: int = 8) -> Iterable[Image.Image]:
        """Generate the items' seeds (NVlabs seed semantics, constant noise) as PIL images."""
        from machinegaze import generate as gen
        from machinegaze import zoo
        from machinegaze.data import tensor_to_pil

        G = zoo.load_generator(self.network)
        cfg = gen.GenerateConfig(trunc=self.truncation_psi, batch_size=batch)
        seeds = [int(it.seed) for it in items]  # type: ignore[arg-type]
        for i in range(0, len(seeds), batch):
            imgs, _ = gen.generate_images(G, seeds[i : i + batch], cfg)
            for k in range(imgs.shape[0]):
                yield tensor_to_pil(imgs[k : k + 1])


Source = FolderSource | GeneratorSource


def parse_source(spec: str, data_root: str | os.PathLike | None = None, n_generated: int = 600) -> Source:
    """'utkface' | 'real:PATH' | 'fake:PATH' | 'stylegan2:NAME_OR_PATH' -> a source (one clear error otherwise)."""
    spec = spec.strip()
    if spec in BUILTIN:
        sub, label = BUILTIN[spec]
        root = faces_root(data_root) / sub
        if not root.is_dir():
            raise GazeError(f"source '{spec}': folder {root} not found")
        return FolderSource(spec, root, label, kind=spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("real", "fake") and rest:
        root = Path(rest).expanduser()
        if not root.is_dir():
            raise GazeError(f"source '{spec}': {root} is not a folder")
        return FolderSource(spec, root, REAL if kind == "real" else FAKE, kind="custom")
    if sep and kind == "stylegan2" and rest:
        return GeneratorSource(spec, rest, n=n_generated)
    known = ", ".join(BUILTIN)
    raise GazeError(f"unknown source '{spec}' (use one of {known}, real:FOLDER, fake:FOLDER or stylegan2:NETWORK)")


def parse_sources(specs: str | Sequence[str], data_root: str | os.PathLike | None = None) -> list[Source]:
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    if not specs:
        raise GazeError("no sources given")
    out = [parse_source(s, data_root) for s in specs]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise GazeError(f"a source is listed twice: {', '.join(names)}")
    return out


def gather(
    sources: Sequence[Source], split: str | None, max_per_source: int | None = None, seed: int = 0
) -> list[Item]:
    """The items of `split` from every source, capped per source."""
    out: list[Item] = []
    for src in sources:
        out.extend(select(src.items(), split, max_per_source, seed))
    return out


def held_out(sources: Sequence[Source], max_per_source: int | None = None, seed: int = 0) -> list[Item]:
    """Evaluation images: the test split of built-in and generated sources, every image of a user's folder
    (`real:PATH` / `fake:PATH` were never trained on by the shipped detectors)."""
    out: list[Item] = []
    for src in sources:
        split = None if isinstance(src, FolderSource) and src.kind == "custom" else "test"
        out.extend(select(src.items(), split, max_per_source, seed))
    return out


# ---------------------------------------------------------------- preprocessing policy
@dataclass(frozen=True)
class Preprocess:
    """Centre-crop, resize to `size` (Lanczos), then, if `jpeg_quality` is set, JPEG re-encode in memory.

    `jpeg_quality=None` is the policy switched off: resize only, each image keeps its own compression.
    """

    size: int = 128
    jpeg_quality: int | None = 75

    def __post_init__(self):
        if not 16 <= self.size <= 1024:
            raise GazeError(f"image size must be 16..1024 px, got {self.size}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise GazeError(f"JPEG quality must be 1..100, got {self.jpeg_quality}")

    @property
    def tag(self) -> str:
        return f"{self.size}px-" + (f"jpeg{self.jpeg_quality}" if self.jpeg_quality else "nojpeg")

    def resize(self, img: Image.Image) -> Image.Image:
        img = center_crop(img.convert("RGB"))
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.LANCZOS)
        return img

    def encode(self, img: Image.Image) -> bytes:
        """The policy's JPEG bytes for one image (what the detector sees, before decoding)."""
        if self.jpeg_quality is None:
            raise GazeError("this preprocessing has no JPEG step (policy off)")
        buf = io.BytesIO()
        self.resize(img).save(buf, format="JPEG", quality=int(self.jpeg_quality), subsampling=2, optimize=False)
        return buf.getvalue()

    def __call__(self, img: Image.Image) -> np.ndarray:
        """PIL image -> uint8 [H, W, 3] array after the policy."""
        if self.jpeg_quality is None:
            return np.asarray(self.resize(img), dtype=np.uint8)
        with Image.open(io.BytesIO(self.encode(img))) as dec:
            return np.asarray(dec.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class Augment:
    """Training augmentation after Wang et al. (CVPR 2020): each image is, independently, rescaled by a random
    factor (p=resize_p), blurred with a Gaussian of sigma ~ U[0, blur_sigma] (p=blur_p), re-encoded as JPEG
    with quality ~ U[jpeg_min, 100] (p=jpeg_p), randomly cropped to the output size and flipped (p=0.5).

    Works on the uint8 arrays the preprocessing policy made; all randomness comes from the numpy Generator
    passed in, so a seed fixes every pixel."""

    blur_p: float = 0.5
    blur_sigma: float = 3.0
    jpeg_p: float = 0.5
    jpeg_min: int = 30
    resize_p: float = 0.5
    scale_min: float = 0.75
    scale_max: float = 1.25

    def __call__(self, img: np.ndarray, out: int, rng: np.random.Generator) -> np.ndarray:
        from PIL import ImageFilter

        pil = Image.fromarray(img)
        if rng.random() < self.resize_p:
            s = rng.uniform(self.scale_min, self.scale_max)
            pil = pil.resize((max(8, round(pil.width * s)), max(8, round(pil.height * s))), Image.Resampling.BILINEAR)
        if rng.random() < self.blur_p:
            pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, self.blur_sigma))))
        if rng.random() < self.jpeg_p:
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=int(rng.integers(self.jpeg_min, 101)))
            with Image.open(io.BytesIO(buf.getvalue())) as dec:
                pil = dec.convert("RGB")
        a = np.asarray(pil, dtype=np.uint8)
        h, w = a.shape[:2]
        if h < out or w < out:  # a downscaled image smaller than the crop: reflect-pad it
            ph, pw = max(0, out - h), max(0, out - w)
            a = np.pad(a, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")
            h, w = a.shape[:2]
        top, left = int(rng.integers(0, h - out + 1)), int(rng.integers(0, w - out + 1))
        a = a[top : top + out, left : left + out]
        if rng.random() < 0.5:
            a = a[:, ::-1]
        return np.ascontiguousarray(a)

    def batch(self, x: np.ndarray, out: int, rng: np.random.Generator) -> np.ndarray:
        """uint8 [N, H, W, 3] -> augmented uint8 [N, out, out, 3]."""
        return np.stack([self(img, out, rng) for img in x])


def preprocess_for(policy: bool, size: int = 128, jpeg_quality: int = 75) -> Preprocess:
    return Preprocess(size, jpeg_quality if policy else None)


@dataclass
class ImageCache:
    """Preprocessed uint8 images kept in memory, keyed by (item, policy): experiments reuse them."""

    store: dict = field(default_factory=dict)

    def arrays(
        self,
        items: Sequence[Item],
        pre: Preprocess,
        sources: Sequence[Source] | None = None,
        progress: ProgressFn = None,
    ) -> np.ndarray:
        """uint8 [N, H, W, 3] for `items` (loading and preprocessing the ones not seen yet)."""
        by_name = {s.name: s for s in sources or ()}
        missing: dict[str, list[Item]] = {}
        for it in items:
            if (it, pre) not in self.store:
                missing.setdefault(it.source, []).append(it)
        total, done = sum(len(v) for v in missing.values()), 0
        for name, todo in missing.items():
            src = by_name.get(name)
            render: Callable[[Sequence[Item]], Iterable[Image.Image]]
            if src is not None:
                render = src.render
            elif all(it.seed is None for it in todo):
                render = FolderSource(name, Path("."), todo[0].label).render
            else:
                raise GazeError(f"generated items of '{name}' need their source to render them")
            for it, img in zip(todo, render(todo)):
                self.store[(it, pre)] = pre(img)
                done += 1
                if done % 64 == 0 or done == total:
                    report(progress, done, total, stage="load")
        if not items:
            return np.zeros((0, pre.size, pre.size, 3), np.uint8)
        return np.stack([self.store[(it, pre)] for it in items])


def to_tensor(arr: np.ndarray):
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (the project convention)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def preprocess_of(model) -> Preprocess:
    """The preprocessing a detector was trained with: its spec's input size and JPEG policy."""
    return Preprocess(model.spec.size, model.spec.jpeg_quality)


def detector_input(model, images: Sequence[Image.Image]):
    """PIL images -> the detector's input [N, 3, S, S] in [-1, 1], preprocessed exactly as it was trained."""
    pre = preprocess_of(model)
    return to_tensor(np.stack([pre(img) for img in images]))

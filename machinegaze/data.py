"""Images at the edges: files <-> tensors (float32, NCHW, RGB, [-1, 1]), grids, atomic writes.

Every image that enters machinegaze goes through `load_image` (decoded, verified, EXIF-rotated, converted to
RGB, guarded against decompression bombs); every image that leaves goes through `save_image`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from machinegaze import GazeError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif"}
MAX_PIXELS = 64_000_000  # ~8000x8000; larger images are refused before decoding (decompression-bomb guard)
MIN_SIDE = 8


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask  # mkstemp makes 0600 files; outputs should get the usual permissions
    os.chmod(tmp, mode)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # again: some writers (safetensors) replace the file rather than write into it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (weights files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- decoding
def open_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file (or bytes) into an RGB PIL image, or raise GazeError with one clear line."""
    name = "upload" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        p = Path(source)
        if not p.exists():
            raise GazeError(f"no such file: {p}")
        if p.is_dir():
            raise GazeError(f"expected an image file, got a directory: {p}")
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            w, h = img.size
            if w * h > max_pixels:
                raise GazeError(f"{name}: image is {w}x{h}, larger than the limit of {max_pixels} pixels")
            img.load()
    except GazeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise GazeError(f"{name}: refused, image too large (decompression-bomb guard): {e}") from None
    except UnidentifiedImageError:
        raise GazeError(f"{name}: not an image file (could not decode it)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise GazeError(f"{name}: corrupt or truncated image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    img = ImageOps.exif_transpose(img)
    return to_rgb(img, name)


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Grayscale, 16-bit, palette and alpha images to 8-bit RGB (alpha composited on white)."""
    if min(img.size) < MIN_SIDE:
        raise GazeError(f"{name}: image is {img.size[0]}x{img.size[1]}, too small (need at least {MIN_SIDE} px a side)")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
        img = Image.fromarray((a * 255 + 0.5).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


def center_crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [1, 3, H, W] float32 in [-1, 1]."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).div(127.5).sub(1.0).contiguous()


def load_image(
    source: str | os.PathLike | bytes,
    size: int | tuple[int, int] | None = None,
    crop: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> torch.Tensor:
    """Load an image as [1, 3, H, W] in [-1, 1]; optionally centre-crop to square and resize (Lanczos)."""
    img = open_image(source, max_pixels=max_pixels)
    if crop:
        img = center_crop(img)
    if size is not None:
        wh = (size, size) if isinstance(size, int) else (size[1], size[0])
        img = img.resize(wh, Image.LANCZOS)
    return pil_to_tensor(img)


# ---------------------------------------------------------------- encoding
def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8 with NVlabs' rounding (x*127.5+128, clamp, truncate).
    Leaves `img` as it is (images_to_uint8 on a copy)."""
    x = img.detach().float().cpu().clone()
    return images_to_uint8(x.unsqueeze(0) if x.ndim == 3 else x)


def images_to_uint8(images: torch.Tensor, out: np.ndarray | None = None) -> np.ndarray:
    """[N, C, H, W] float -> [N, H, W, C] uint8 with NVlabs' rounding (x * 127.5 + 128, clamped, truncated): the
    same bytes as to_uint8. Scales `images` in place (a float32 input is consumed) and writes the result
    once, into `out` if given, with no full-size temporaries."""
    x = images.detach().float()
    x.mul_(127.5).add_(128).clamp_(0, 255)
    n, c, h, w = x.shape
    dst = torch.empty(n, h, w, c, dtype=torch.uint8) if out is None else torch.from_numpy(out)
    dst.copy_(x.permute(0, 2, 3, 1))  # float -> uint8 truncates, as .to(torch.uint8) does
    return dst.numpy()


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    a = to_uint8(img)[0]
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, "L" if a.shape[-1] == 1 else "RGB")


def save_image(img: torch.Tensor | Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Write one image (tensor [1|C,H,W] in [-1,1], uint8 HWC array, or PIL) atomically."""
    if isinstance(img, torch.Tensor):
        pil = tensor_to_pil(img)
    elif isinstance(img, np.ndarray):
        pil = Image.fromarray(img)
    else:
        pil = img
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt)
    return path


def make_grid(
    images: torch.Tensor | Sequence[torch.Tensor], ncols: int | None = None, pad: int = 0, pad_value: float = 1.0
) -> torch.Tensor:
    """Tile [N, C, H, W] images into one [1, C, H', W'] grid (row-major)."""
    x = torch.cat(list(images), 0) if not isinstance(images, torch.Tensor) else images
    n, c, h, w = x.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = torch.full((c, nrows * (h + pad) - pad, ncols * (w + pad) - pad), pad_value, dtype=x.dtype)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = x[i]
    return grid.unsqueeze(0)


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under a folder, sorted (deterministic)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GazeError(f"not a folder: {folder}")
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


# ================================================================ datasets
# A dataset is a folder or a .zip of images (any nesting). `gaze dataset build` writes zips with PNGs named
# `<source>/<original name>.png` and a `manifest.json` (per image: source, original file, licence, group...).
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "machinegaze-dataset/1"
MAX_ENTRY_BYTES = 256 * 1024 * 1024  # a zip entry claiming more than this is refused (zip-bomb guard)
DEFAULT_SPLITS = {"train": 0.9, "test": 0.1}

# Licence lines for the sources we know (keyword in the source name -> terms), from ../shared/data/faces/README.md.
KNOWN_LICENSES = {
    "ffhq": "FFHQ (NVIDIA): dataset CC BY-NC-SA 4.0; images Flickr CC BY 2.0 / CC BY-NC 2.0 / PD / CC0 / US Gov; non-commercial",
    "utkface": "UTKFace: non-commercial research purposes only; image copyright stays with the owners",
    "lfw": "LFW (UMass Amherst): research use, no formal licence; cite Huang et al. 2007",
    "orl": "AT&T/ORL faces: research use; credit Olivetti Research Laboratory",
    "stylegan": "NVIDIA StyleGAN outputs: NVIDIA non-commercial terms",
}


def license_for(source_name: str) -> str:
    low = source_name.lower()
    for key, text in KNOWN_LICENSES.items():
        if key in low:
            return text
    return "unknown: check the source's terms before use"


class ImageSource:
    """Read-only view of a folder or a .zip: sorted posix relative names of all files, and their bytes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._zip = None
        self._zip_pid = None
        if self.path.is_dir():
            self.kind = "folder"
            self.names = sorted(
                p.relative_to(self.path).as_posix()
                for p in self.path.rglob("*")
                if p.is_file() and not _hidden(p.relative_to(self.path).as_posix())
            )
        elif self.path.is_file() and self.path.suffix.lower() == ".zip":
            import zipfile

            self.kind = "zip"
            try:
                with zipfile.ZipFile(self.path) as z:
                    self._sizes = {i.filename: i.file_size for i in z.infolist() if not i.is_dir()}
            except (zipfile.BadZipFile, OSError) as e:
                raise GazeError(f"{self.path}: not a readable zip file ({e})") from None
            self.names = sorted(n for n in self._sizes if not _hidden(n))
        elif not self.path.exists():
            raise GazeError(f"no such folder or zip: {self.path}")
        else:
            raise GazeError(f"expected a folder or a .zip of images, got {self.path}")

    def image_names(self) -> list[str]:
        return [n for n in self.names if is_image_name(n)]

    def read(self, name: str) -> bytes:
        import zipfile

        try:
            if self.kind == "folder":
                return (self.path / name).read_bytes()
            if self._sizes.get(name, 0) > MAX_ENTRY_BYTES:
                raise GazeError(f"{self.path}:{name}: entry is larger than {MAX_ENTRY_BYTES} bytes, refused")
            return self._zipfile().read(name)
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise GazeError(f"{self.path}:{name}: cannot read ({e})") from None

    def _zipfile(self):
        import zipfile

        if self._zip is None or self._zip_pid != os.getpid():  # one handle per process (DataLoader workers)
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def manifest(self) -> dict | None:
        """The dataset's manifest.json (at the top level), or None."""
        if MANIFEST not in self.names:
            return None
        import json

        try:
            return json.loads(self.read(MANIFEST))
        except ValueError as e:
            raise GazeError(f"{self.path}: {MANIFEST} is not valid JSON ({e})") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_zip"] = state["_zip_pid"] = None
        return state


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTS


# ---------------------------------------------------------------- groups and splits
_LFW_NAME = re.compile(r"^([A-Za-z][^_/]*(?:_[^_/]+)+)_(\d{4})$")  # Name_Surname_0001 (two or more words)
_LFW_ONE_WORD = re.compile(r"^([A-Za-z][^_/]*)_(\d{4})$")  # Zico_0001: only inside an 'lfw' path
_ORL_SUBJECT = re.compile(r"^s\d+$")


def group_key(name: str) -> str:
    """The group (identity where one is known) an image belongs to, from its relative path.

    LFW `Name_Surname_0001.jpg` -> lfw:Name_Surname (one-word names like `Zico_0001` only when the path
    contains 'lfw', so camera names like IMG_0001 stay separate); ORL `.../s7/3.pgm` -> orl:s7; FFHQ `ffhq.../00042.jpg`
    and `.../42.jpg` (any path containing 'ffhq') -> ffhq:42 (both resolutions of one id together);
    anything else is its own group (file:<path without extension>).
    """
    p = PurePosixPath(name)
    stem = p.stem
    m = _LFW_NAME.match(stem) or ("lfw" in name.lower() and _LFW_ONE_WORD.match(stem))
    if m:
        return f"lfw:{m.group(1)}"
    if len(p.parts) >= 2 and _ORL_SUBJECT.match(p.parts[-2]):
        return f"orl:{p.parts[-2]}"
    if stem.isdigit() and "ffhq" in name.lower():
        return f"ffhq:{int(stem)}"
    return f"file:{p.with_suffix('').as_posix()}"


def _check_fractions(fractions: dict[str, float]) -> list[tuple[str, float]]:
    items = [(str(k), float(v)) for k, v in fractions.items()]
    if not items or any(v < 0 or v != v for _, v in items) or abs(sum(v for _, v in items) - 1.0) > 1e-6:
        raise GazeError(f"split fractions must be >= 0 and sum to 1, got {dict(items)}")
    return items


def split_of(key: str, fractions: dict[str, float] = DEFAULT_SPLITS, salt: str = "machinegaze") -> str:
    """Deterministic split for a group key: a hash of (salt, key) mapped to [0, 1), cut by the fractions."""
    items = _check_fractions(fractions)
    u = int.from_bytes(hashlib.sha256(f"{salt}\0{key}".encode()).digest()[:8], "big") / 2.0**64
    acc = 0.0
    for split, frac in items:
        acc += frac
        if u < acc:
            return split
    return items[-1][0]


def parse_splits(s: str) -> dict[str, float]:
    """'train=0.8,val=0.1,test=0.1' -> dict (a user error if malformed or not summing to 1)."""
    out: dict[str, float] = {}
    for part in str(s).split(","):
        name, sep, val = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(val)
        except ValueError:
            raise GazeError(f"--splits: '{part}' is not name=fraction (e.g. train=0.9,test=0.1)") from None
    _check_fractions(out)
    return out


# ---------------------------------------------------------------- the dataset
def _read_labels(path: str | os.PathLike, key_column: str | None, label_column: str | None):
    import csv

    path = Path(path)
    if not path.is_file():
        raise GazeError(f"no such labels file: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise GazeError(f"{path}: cannot read the labels CSV ({e})") from None
    if not rows:
        raise GazeError(f"{path}: no rows")
    cols = list(rows[0].keys())
    key_column = key_column or next((c for c in ("file", "filename", "path", "image", "name") if c in cols), cols[0])
    label_column = label_column or ("label" if "label" in cols else None)
    for what, c in (("key", key_column), ("label", label_column)):
        if c is None:
            raise GazeError(f"{path}: say which column holds the label (columns: {', '.join(cols)})")
        if c not in cols:
            raise GazeError(f"{path}: no {what} column '{c}' (columns: {', '.join(cols)})")
    table: dict[str, str] = {}
    for r in rows:
        k = (r.get(key_column) or "").strip()
        table.setdefault(k, r[label_column])
        table.setdefault(PurePosixPath(k).stem, r[label_column])
    return table, label_column


class ImageDataset(torch.utils.data.Dataset):
    """Images from a folder or .zip as (image [3, R, R] float32 in [-1, 1], label) pairs.

    - resolution: every image is centre-cropped to square and resized (Lanczos) to R; default: the first
      image's shorter side.
    - labels: a CSV with a file column (`file`/`filename`/`path`/`image`/`name`, else the first column;
      matched by relative path, original file name (from the manifest), or name without extension) and a
      label column (`label_column`, default `label`). Numbers give float labels; text gives class indices
      into `self.classes`. Without labels the label is -1.
    - xflip: the dataset doubles; items n..2n-1 are the mirror images of 0..n-1 (NVlabs' --mirror).
    - cache: keep decoded uint8 images in memory (a 64 px dataset of 10k faces is ~120 MB).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int | None = None,
        labels: str | os.PathLike | None = None,
        label_column: str | None = None,
        label_key: str | None = None,
        xflip: bool = False,
        cache: bool = False,
        names: Sequence[str] | None = None,
    ):
        self.source = ImageSource(path)
        manifest = self.source.manifest() or {}
        self.meta = {e["file"]: e for e in manifest.get("images", []) if isinstance(e, dict) and "file" in e}
        self.names = list(names) if names is not None else self.source.image_names()
        if not self.names:
            raise GazeError(f"no images in {self.source.path}")
        self.xflip, self.cache = bool(xflip), bool(cache)
        self._cache: dict[int, np.ndarray] = {}
        if resolution is None:
            resolution = int(manifest.get("size") or min(self._open(0).size))
        if not MIN_SIDE <= int(resolution) <= 4096:
            raise GazeError(f"resolution {resolution} is out of range ({MIN_SIDE} .. 4096)")
        self.resolution = int(resolution)
        self.classes: list[str] | None = None
        self.labels: torch.Tensor | None = None
        if labels is not None:
            self._attach_labels(labels, label_column, label_key)

    def _attach_labels(self, path, label_column, label_key) -> None:
        table, col = _read_labels(path, label_key, label_column)
        values, missing = [], []
        for n in self.names:
            orig = str(self.meta.get(n, {}).get("original", ""))
            for cand in (
                n,
                orig,
                PurePosixPath(orig).name,
                PurePosixPath(n).name,
                PurePosixPath(n).stem,
                PurePosixPath(orig).stem,
            ):
                if cand and cand in table:
                    values.append(table[cand])
                    break
            else:
                missing.append(n)
        if missing:
            raise GazeError(f"{path}: {len(missing)} of {len(self.names)} images have no row (e.g. {missing[0]})")
        try:
            self.labels = torch.tensor([float(v) for v in values], dtype=torch.float32)
        except ValueError:
            self.classes = sorted(set(values))
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = torch.tensor([index[v] for v in values], dtype=torch.long)
        self.label_column = col

    def __len__(self) -> int:
        return len(self.names) * (2 if self.xflip else 1)

    def _open(self, idx: int) -> Image.Image:
        name = self.names[idx]
        try:
            return open_image(self.source.read(name))
        except GazeError as e:
            raise GazeError(f"{self.source.path}:{name}: {str(e).removeprefix('upload: ')}") from None

    def image_uint8(self, idx: int) -> np.ndarray:
        """Image idx (no flip) as [R, R, 3] uint8."""
        if idx in self._cache:
            return self._cache[idx]
        img = center_crop(self._open(idx))
        if img.size != (self.resolution, self.resolution):
            img = img.resize((self.resolution, self.resolution), Image.LANCZOS)
        a = np.asarray(img, dtype=np.uint8)
        if self.cache:
            self._cache[idx] = a
        return a

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.names)
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        idx, flip = i % n, i >= n
        a = self.image_uint8(idx)
        if flip:
            a = a[:, ::-1]
        x = torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0)
        label = self.labels[idx] if self.labels is not None else torch.tensor(-1)
        return x, label

    def group(self, idx: int) -> str:
        """Group (identity) of image idx: the manifest's, else derived from the name (see group_key)."""
        name = self.names[idx % len(self.names)]
        return str(self.meta.get(name, {}).get("group") or group_key(name))

    def split(self, name: str, fractions: dict[str, float] = DEFAULT_SPLITS, salt: str = "machinegaze") -> ImageDataset:
        """The images whose group hashes into split `name` (deterministic; a group never spans two splits)."""
        if name not in fractions:
            raise GazeError(f"no split '{name}' (splits: {', '.join(fractions)})")
        keep = [i for i in range(len(self.names)) if split_of(self.group(i), fractions, salt) == name]
        sub = ImageDataset.__new__(ImageDataset)
        sub.__dict__.update(self.__dict__)
        sub.names = [self.names[i] for i in keep]
        sub.labels = self.labels[keep] if self.labels is not None else None
        sub._cache = {}
        return sub

"""`gaze dataset`: build a dataset zip from folders or zips of photos (aligned faces or centre crops) with a
manifest that records every written and every rejected file.

Reading images, sources and splits lives in `data.py`; this module is the capability on top of it (it may align
faces with MTCNN, so it sits above the registry, not in the IO layer).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from machinegaze import GazeError, __version__
from machinegaze.data import (
    MANIFEST,
    MANIFEST_FORMAT,
    MIN_SIDE,
    ImageSource,
    atomic_path,
    center_crop,
    group_key,
    is_image_name,
    license_for,
    open_image,
    tensor_to_pil,
)
from machinegaze.progress import ProgressFn, report


@dataclass(frozen=True)
class BuildConfig:
    size: int = 64  # output side (px)
    align: bool = False  # FFHQ-align faces (MTCNN); off: centre-crop and resize
    select: str = "auto"  # which face when a photo has several (see align.AlignConfig)
    max_outside: float = 1.0  # with align: reject faces whose crop lies more than this fraction off the photo
    dedupe: bool = True  # skip byte-identical copies of a file already written
    license: str | None = None  # licence line for every source (default: known per source, else "unknown")

    def __post_init__(self):
        if not MIN_SIDE <= int(self.size) <= 4096:
            raise GazeError(f"--size: {self.size} is out of range ({MIN_SIDE} .. 4096)")
        if not 0.0 <= float(self.max_outside) <= 1.0:
            raise GazeError(f"--max-outside: {self.max_outside} is not in [0, 1]")


COUNT_KEYS = ("files", "written", "no_face", "too_much_padding", "corrupt", "not_image", "duplicate", "grey")
REJECT_KEYS = ("no_face", "too_much_padding", "corrupt", "not_image", "duplicate")


@dataclass
class BuildReport:
    out: Path
    counts: dict[str, dict[str, int]]  # per source: COUNT_KEYS
    rejected: dict[str, list[dict]]  # no_face / too_much_padding / corrupt / not_image / duplicate
    wall_s: float

    @property
    def written(self) -> int:
        return sum(c["written"] for c in self.counts.values())


def parse_source(spec: str | os.PathLike | tuple[str, str | os.PathLike]) -> tuple[str, Path]:
    """'name=path', a (name, path) pair, or a path (name: the folder name or the zip's stem)."""
    if isinstance(spec, tuple):
        return str(spec[0]), Path(spec[1])
    s = str(spec)
    name, sep, rest = s.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and not Path(s).exists():
        return name, Path(rest)
    p = Path(s)
    return (p.stem if p.suffix.lower() == ".zip" else p.resolve().name), p


def _is_grey(img: Image.Image) -> bool:
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    return int(np.abs(a[..., 0] - a[..., 1]).max()) <= 2 and int(np.abs(a[..., 1] - a[..., 2]).max()) <= 2


def _open_sources(sources: Sequence, out: Path) -> list[tuple[str, ImageSource]]:
    if out.suffix.lower() != ".zip":
        raise GazeError(f"--out: {out} must end in .zip")
    parsed = [parse_source(s) for s in sources]
    if not parsed:
        raise GazeError("no sources given")
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise GazeError(f"two sources share a name ({', '.join(names)}); name them: NAME=PATH")
    opened = [(n, ImageSource(p)) for n, p in parsed]
    for _, src in opened:
        if src.path.resolve() == out.resolve():
            raise GazeError(f"--out {out} is also a source")
    return opened


class _Builder:
    """The state of one build: counts, rejections, manifest entries, and the zip being written."""

    def __init__(self, z: zipfile.ZipFile, config: BuildConfig, detector, names: list[str]):
        self.z, self.config, self.detector = z, config, detector
        self.align_cfg = None
        if config.align:
            from machinegaze.align import AlignConfig

            self.align_cfg = AlignConfig(size=config.size, select=config.select)
        self.counts = {n: dict.fromkeys(COUNT_KEYS, 0) for n in names}
        self.rejected: dict[str, list[dict]] = {k: [] for k in REJECT_KEYS}
        self.images: list[dict] = []
        self.seen: dict[str, str] = {}
        self.written: set[str] = set()

    def reject(self, sname: str, why: str, where: dict) -> None:
        self.counts[sname][why] += 1
        self.rejected[why].append(where)

    def decode(self, sname: str, src: ImageSource, rel: str):
        """(image, sha256) of one file, or None after counting why it was skipped."""
        where = {"source": sname, "original": rel}
        if not is_image_name(rel):
            self.reject(sname, "not_image", where)
            return None
        try:
            data = src.read(rel)
            digest = hashlib.sha256(data).hexdigest()
            if self.config.dedupe and digest in self.seen:
                self.reject(sname, "duplicate", {**where, "same_as": self.seen[digest]})
                return None
            return open_image(data), digest
        except (GazeError, OSError) as e:
            self.reject(sname, "corrupt", {**where, "reason": str(e).removeprefix("upload: ")})
            return None

    def face_or_crop(self, sname: str, rel: str, img: Image.Image, entry: dict) -> Image.Image | None:
        if self.align_cfg is None:
            return center_crop(img).resize((self.config.size, self.config.size), Image.LANCZOS)
        from machinegaze.align import align_image

        where = {"source": sname, "original": rel}
        faces = align_image(img, self.align_cfg, self.detector)
        if not faces:
            self.reject(sname, "no_face", where)
            return None
        face = faces[0]
        if face.outside > self.config.max_outside:
            self.reject(sname, "too_much_padding", {**where, "outside": round(face.outside, 3)})
            return None
        entry.update(
            score=round(face.score, 4),
            outside=round(face.outside, 3),
            landmarks=[[round(v, 2) for v in p] for p in face.source_landmarks.tolist()],
        )
        return tensor_to_pil(face.image)

    def add(self, sname: str, src: ImageSource, rel: str, lic: str) -> None:
        self.counts[sname]["files"] += 1
        got = self.decode(sname, src, rel)
        if got is None:
            return
        img, digest = got
        entry = {
            "file": "",
            "source": sname,
            "original": rel,
            "license": lic,
            "group": group_key(f"{sname}/{rel}"),
            "sha256": digest,
            "width": img.size[0],
            "height": img.size[1],
        }
        out_img = self.face_or_crop(sname, rel, img, entry)
        if out_img is None:
            return
        self.seen[digest] = f"{sname}/{rel}"
        stem = f"{sname}/{PurePosixPath(rel).with_suffix('').as_posix()}"
        arc, k = stem + ".png", 1
        while arc in self.written:
            arc, k = f"{stem}_{k}.png", k + 1
        self.written.add(arc)
        buf = io.BytesIO()
        out_img.save(buf, format="PNG")
        self.z.writestr(arc, buf.getvalue())
        entry["file"], entry["grey"] = arc, _is_grey(out_img)
        self.counts[sname]["grey"] += int(entry["grey"])
        self.counts[sname]["written"] += 1
        self.images.append(entry)

    def manifest(self, opened: list[tuple[str, ImageSource]]) -> dict:
        cfg = self.config
        return {
            "format": MANIFEST_FORMAT,
            "created_by": f"machinegaze {__version__}",
            "size": cfg.size,
            "aligned": cfg.align,
            "alignment": "FFHQ recipe (NVlabs ffhq-dataset) on MTCNN 5-point landmarks"
            if cfg.align
            else "centre crop + Lanczos resize",
            "config": asdict(cfg),
            "sources": {
                n: {"path": str(src.path.resolve()), "license": cfg.license or license_for(n), **self.counts[n]}
                for n, src in opened
            },
            "images": self.images,
            "rejected": self.rejected,
        }


def build_dataset(
    sources: Sequence,
    out: str | os.PathLike,
    config: BuildConfig = BuildConfig(),
    detector=None,
    progress: ProgressFn = None,
) -> BuildReport:
    """Write a dataset zip: every image of every source, aligned (or centre-cropped) and resized to
    config.size, as `<source>/<name>.png`, plus `manifest.json`. Files that are not images, do not decode,
    have no face or repeat an earlier file byte for byte are skipped and counted (and listed in the manifest).
    `detector`: an MTCNN for config.align (default: zoo.load_mtcnn())."""
    t0 = time.time()
    out = Path(out)
    opened = _open_sources(sources, out)
    total = sum(len(src.names) for _, src in opened)
    if config.align and detector is None:
        from machinegaze import zoo

        detector = zoo.load_mtcnn()
    step = 0
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        b = _Builder(z, config, detector, [n for n, _ in opened])
        for sname, src in opened:
            lic = config.license or license_for(sname)
            for rel in src.names:
                step += 1
                try:
                    b.add(sname, src, rel, lic)
                finally:
                    report(progress, step, total, source=sname, written=len(b.images))
        z.writestr(MANIFEST, json.dumps(b.manifest(opened), indent=1))
    for _, src in opened:
        src.close()
    return BuildReport(out=out, counts=b.counts, rejected=b.rejected, wall_s=time.time() - t0)

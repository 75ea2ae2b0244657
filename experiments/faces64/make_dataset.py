"""The training set of the bundled faces64 model (and of the 128 px candidates): real faces from
../shared/data/faces, one fixed crop per source, PNGs in two zips (train / held-out).

    python experiments/faces64/make_dataset.py [OUTDIR]                             # faces64: quick64_*.zip
    python experiments/faces64/make_dataset.py /work/data --res 128 --name faces128  # faces128_{train,heldout}.zip

At --res 256 and above the FFHQ photos 00000-00099 are read from ffhq1024 (the same photos as ffhq256 0-99, so
they add no faces): the 256 px files' crop is only 166 px wide. LFW's crop is 118 px: at 128 px it is upsampled.

Why fixed crops and not `gaze dataset build --align`: UTKFace's 200 px files are already tight face crops
(eye-to-mouth ~0.40 of the side, eyes at ~0.30 height), too tight for the FFHQ framing (the aligner rejects
97% of them for padding). So every source is cropped to UTKFace's framing instead. The per-source boxes
come from MTCNN landmarks on 25 images per source (mean eye-centre / eye-to-mouth, std < 0.03 of the side):

  source    eye y   eye-mouth   crop (x0, y0, side) as fractions of the image side
  ffhq256   0.468   0.260       (0.175, 0.279, 0.65)
  utkface   0.295   0.399       (0, 0, 1)            byte-identical duplicates (labels.csv) skipped
  lfw       0.413   0.314       (0.1075, 0.185, 0.785)

Held out: ~8% by identity (FFHQ id, LFW person, UTKFace file), by a hash of the id. The images stay outside
the repository (licences: non-commercial research, see ../shared/data/faces/README.md).
"""

import argparse
import csv
import hashlib
import io
import os
import zipfile

from PIL import Image

SHARED = os.environ.get("GAZE_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
R = os.path.join(SHARED, "data", "faces", "real")
CROPS = {"ffhq256": (0.5 - 0.325, 0.279, 0.65), "utkface": (0.0, 0.0, 1.0), "lfw": (0.5 - 0.3925, 0.185, 0.785)}


def crop(path: str, src: str, res: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    x0, y0, s = CROPS[src]
    box = (round(x0 * w), round(y0 * h), round((x0 + s) * w), round((y0 + s) * h))
    return im.crop(box).resize((res, res), Image.LANCZOS)


def heldout(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100 < 8


def items() -> list[tuple[str, str, str]]:
    out = [("ffhq256", f, f) for f in sorted(os.listdir(f"{R}/ffhq256")) if f.endswith(".jpg")]
    dups, seen = set(), set()
    with open(f"{R}/utkface/labels.csv") as fh:
        for row in csv.DictReader(fh):
            if row["exact_duplicate_of"] or row["sha256"] in seen:
                dups.add(row["filename"])
            seen.add(row["sha256"])
    out += [("utkface", f, f) for f in sorted(os.listdir(f"{R}/utkface")) if f.endswith(".jpg") and f not in dups]
    out += [("lfw", f, f.rsplit("_", 1)[0]) for f in sorted(os.listdir(f"{R}/lfw")) if f.endswith(".jpg")]
    return out


def source_file(src: str, f: str, res: int) -> str:
    """The file to read: ffhq1024's copy of an FFHQ photo when the 256 px crop would be upsampled."""
    if src == "ffhq256" and res > round(CROPS[src][2] * 256):
        big = f"{R}/ffhq1024/{int(os.path.splitext(f)[0])}.jpg"  # ffhq1024 names files by the bare id
        if os.path.isfile(big):
            return big
    return f"{R}/{src}/{f}"


def main(outdir: str, res: int = 64, name: str = "") -> None:
    os.makedirs(outdir, exist_ok=True)
    name = name or f"quick{res}"
    all_items = items()
    for split in ("train", "heldout"):
        path = os.path.join(outdir, f"{name}_{split}.zip")
        n = 0
        with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_STORED) as z:
            for src, f, key in all_items:
                if heldout(f"{src}/{key}") != (split == "heldout"):
                    continue
                buf = io.BytesIO()
                crop(source_file(src, f, res), src, res).save(buf, format="PNG")
                z.writestr(f"{src}/{os.path.splitext(f)[0]}.png", buf.getvalue())
                n += 1
        os.replace(path + ".tmp", path)
        print(f"{path}: {n} images")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="real-face training zips (train / held-out by identity)")
    ap.add_argument("outdir", nargs="?", default="/work/datasets")
    ap.add_argument("--res", type=int, default=64, help="output size in pixels")
    ap.add_argument("--name", default="", help="zip name prefix (default quick<res>)")
    a = ap.parse_args()
    main(a.outdir, a.res, a.name)

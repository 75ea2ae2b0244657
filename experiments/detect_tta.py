"""Does test-time augmentation separate FFHQ photos from StyleGAN v1 fakes better? (issue 14, session 11)

    python experiments/detect_tta.py [DETECTOR]        # default: effnetlite0_fakeface, one thread

The bundled single detector classifies a 256 px face as the mean logit of four 128 px tiles. Two readouts
are compared with it on the identity-disjoint test split: the mean with the mirrored face's logit (flip), and
nine half-overlapping 128 px tiles (offsets 0, 64, 128 in each axis). Temperature and threshold are refitted on
the validation split of the sources the detector was trained on; AUC and the best accuracy pair that any single
threshold gives on the test split (an oracle, so optimistic) show whether the readout itself helps.
"""

import sys

import numpy as np
import torch

from machinegaze import zoo
from machinegaze.detect import evaluate as E
from machinegaze.detect import sources as S

TRAINED_ON = ["utkface", "lfw", "ffhq256", "stylegan1"]


@torch.no_grad()
def nine_tiles(det, x: torch.Tensor, batch: int = 8) -> np.ndarray:
    det.eval()
    out = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        tiles = [xb[:, :, y : y + 128, c : c + 128] for y in (0, 64, 128) for c in (0, 64, 128)]
        z = [det.logit_from_map(det.feature_map(t.contiguous(memory_format=torch.channels_last))) for t in tiles]
        out.append(torch.stack(z, 1).mean(1))
    return torch.cat(out).numpy()


def readouts(det, srcs, split: str, cache) -> dict:
    items = S.gather(srcs, "val", None) if split == "val" else S.held_out(srcs, None)
    arr = cache.arrays(items, S.preprocess_of(det), srcs, None)
    x = S.to_tensor(arr)
    base = E.predict_logits(det, arr)
    flip = E.predict_logits(det, torch.flip(x, dims=[3]))
    return {
        "y": np.array([it.label for it in items]),
        "src": np.array([it.source for it in items]),
        "tiles 2x2 (today)": base,
        "+ flip": (base + flip) / 2,
        "tiles 3x3, half overlap": nine_tiles(det, x),
    }


def main() -> None:
    torch.set_num_threads(1)
    det = zoo.load_detector(sys.argv[1] if len(sys.argv) > 1 else "effnetlite0_fakeface")
    srcs = S.parse_sources(TRAINED_ON + ["ffhq1024", "stylegan3"])
    cache = S.ImageCache()
    val, test = readouts(det, srcs, "val", cache), readouts(det, srcs, "test", cache)
    keep = np.isin(val["src"], TRAINED_ON)
    pair = np.isin(test["src"], ["ffhq256", "stylegan1"])
    print("| readout | FFHQ 256 real | StyleGAN v1 | StyleGAN3 | AUC SG1 vs FFHQ | oracle FFHQ / SG1 |")
    print("|---|---|---|---|---|---|")
    for name in ("tiles 2x2 (today)", "+ flip", "tiles 3x3, half overlap"):
        cal = E.calibrate(val[name][keep], val["y"][keep])
        z, y, src = test[name], test["y"], test["src"]
        pred = E.sigmoid(z / cal.temperature) >= cal.threshold
        acc = {s: 100 * (pred[src == s] == y[src == s]).mean() for s in ("ffhq256", "stylegan1", "stylegan3")}
        zp, yp = z[pair], y[pair]
        best = max(((zp[yp == 0] < c).mean() + (zp[yp == 1] >= c).mean(), c) for c in np.unique(zp))[1]
        oracle = 100 * (zp[yp == 0] < best).mean(), 100 * (zp[yp == 1] >= best).mean()
        print(
            f"| {name} | {acc['ffhq256']:.1f} | {acc['stylegan1']:.1f} | {acc['stylegan3']:.1f} | "
            f"{E.roc_auc(yp, zp):.4f} | {oracle[0]:.1f} / {oracle[1]:.1f} |"
        )


if __name__ == "__main__":
    main()

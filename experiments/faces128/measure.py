"""Measure generators on the held-out reals at their own resolution (issue 16, item 4), as a JSON table.

    python experiments/faces128/measure.py OUT.json NAME=NETWORK@HELDOUT.zip ... [--num-gen 500] [--ref] [--subsets K]

For each generator: FID / KID / precision / recall (k=3) on EfficientNet-Lite0 features (224 px) and on VGG16
relu5_3 features (128 px), the share of samples in which MTCNN finds a face, and its discriminator's logits on
the held-out reals and on its own samples (gap and AUC). Generated image i uses seed i, psi 1. Real features
are computed once per held-out set. With --ref, a real-vs-real row per held-out set: --num-gen images of the
training zip beside it (..._heldout.zip -> ..._train.zip) measured like a generator's.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from machinegaze import checkpoints, metrics, zoo


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a real's logit > a fake's), ties count half."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@torch.no_grad()
def d_logits(D, images: torch.Tensor, batch: int = 32) -> np.ndarray:
    """D's logits on the first multiple of 4 images (a StyleGAN2 D's minibatch-stddev groups are 4)."""
    images = images[: len(images) // 4 * 4]
    return torch.cat([D(images[i : i + batch], None)[:, 0] for i in range(0, len(images), batch)]).numpy()


def measure(images: torch.Tensor, reals: dict, nets: dict, subsets: int = 0) -> dict:
    """All measures of a set of images against one held-out set's cached features. With subsets K > 1, also the
    mean and standard deviation of each FID / precision / recall over K disjoint equal parts of the images (how
    much a 1/K-size sample would move them: the sampling noise of a smaller protocol)."""
    row = {}
    for feat in metrics.FEATURES:
        fn, net = nets[feat]
        fake = fn(images, net)
        row.update(metrics.quality_from_features(reals[feat], fake, feat))
        if subsets > 1:
            parts = [metrics.quality_from_features(reals[feat], p, feat) for p in np.array_split(fake, subsets)]
            for key in parts[0]:
                if key.startswith(("FID", "precision", "recall")):
                    vals = np.array([p[key] for p in parts])
                    row[f"{key}@1/{subsets}"] = [float(vals.mean()), float(vals.std(ddof=1))]
    row["face_share"] = metrics.face_share(images, nets["mtcnn"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("models", nargs="+", help="NAME=NETWORK@HELDOUT.zip")
    ap.add_argument("--num-gen", type=int, default=500)
    ap.add_argument("--max-real", type=int, default=0, help="at most this many held-out reals (0 = all)")
    ap.add_argument("--ref", action="store_true", help="a real-vs-real row per held-out set")
    ap.add_argument("--subsets", type=int, default=0, help="also mean/sd over this many disjoint parts (noise)")
    ap.add_argument(
        "--real-res", type=int, default=0, help="held-out reals at this size for the features (0 = the model's)"
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    nets = {
        "effnet": (metrics.embed, zoo.load_efficientnet_lite0()),
        "vgg16": (metrics.embed_vgg16, zoo.vgg16_features()),
    }
    with_mtcnn = dict(nets, mtcnn=zoo.load_mtcnn())
    cache: dict[str, tuple[torch.Tensor, dict]] = {}
    loaded: dict[tuple[str, int], torch.Tensor] = {}

    def reals_at(path: str, size: int) -> torch.Tensor:
        if (path, size) not in loaded:
            loaded[path, size] = metrics.real_images(path, size, max_images=a.max_real)
        return loaded[path, size]

    rows = {}
    for spec in a.models:
        name, rest = spec.split("=", 1)
        network, heldout = rest.rsplit("@", 1)
        t0 = time.time()
        G = zoo.load_generator(zoo.resolve_network(network))
        res = G.img_resolution
        rres = a.real_res or res
        key = f"{heldout}@{rres}"
        if key not in cache:
            reals = reals_at(heldout, rres)
            cache[key] = (reals, {k: fn(reals, net) for k, (fn, net) in nets.items()})
            rows[f"reals {rres}px (held-out)"] = {
                "face_share": metrics.face_share(reals, with_mtcnn["mtcnn"]),
                "num": len(reals),
            }
            if a.ref:
                ref = metrics.real_images(heldout.replace("_heldout", "_train"), rres, max_images=a.num_gen)
                rows[f"real-vs-real {rres}px"] = measure(ref, cache[key][1], with_mtcnn)
        reals, rf = cache[key]
        fakes = metrics.generate_images(G, a.num_gen, seed=0)
        row = measure(fakes, rf, with_mtcnn, a.subsets)
        D = checkpoints.load_networks(zoo.resolve_network(network), roles=("D",)).D
        if D is not None:
            lr, lf = d_logits(D, reals_at(heldout, res)), d_logits(D, fakes)
            row.update(
                D_real=float(lr.mean()), D_fake=float(lf.mean()), D_gap=float(lr.mean() - lf.mean()), D_auc=auc(lr, lf)
            )
        meta = checkpoints.load_networks(zoo.resolve_network(network), roles=()).meta
        row.update(
            resolution=res,
            real_res=rres,
            kimg=meta.get("kimg"),
            wall_s=meta.get("wall_s"),
            measure_s=round(time.time() - t0),
        )
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

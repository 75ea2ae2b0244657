"""gaze align / dataset / train / metrics: faces in, datasets out, StyleGAN2 training and its scores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from machinegaze import GazeError, zoo
from machinegaze.cli._common import parse_float, print_list, progress_bar, set_threads
from machinegaze.cli._options import DeviceOpt, PrecisionOpt, resolve


def align_cmd(
    in_dir: Path = typer.Argument(..., help="folder of photos (searched recursively)"),
    out_dir: Path = typer.Argument(..., help="where aligned PNGs go (same relative names)"),
    size: int = typer.Option(128, help="output size in pixels"),
    select: str = typer.Option("auto", help="which face: auto (largest, most central), largest, best, all"),
    pad: str = typer.Option("reflect", help="off-photo fill: reflect (FFHQ's blurred mirror) or black"),
    min_face: float = typer.Option(20.0, help="smallest face to look for (px)"),
) -> None:
    """Detect faces (MTCNN) and crop, rotate and scale them FFHQ-style. Photos without a face are listed and skipped."""
    from machinegaze.align import AlignConfig, align_folder

    cfg = AlignConfig(size=size, select=select, pad=pad, min_face_size=min_face)
    with progress_bar("aligning") as cb:
        rep = align_folder(in_dir, out_dir, cfg, progress=cb)
    s = rep.summary()
    typer.echo(
        f"{s['aligned_images']} of {s['total']} images aligned ({s['faces_written']} faces written to {out_dir}); "
        f"{s['no_face']} without a face, {s['corrupt']} corrupt (skipped)"
    )
    print_list("no face found (skipped)", rep.no_face)
    print_list("corrupt (skipped)", [f"{f}: {r}" for f, r in rep.corrupt])
    typer.echo(f"report: {out_dir / 'align_report.json'}")


dataset_app = typer.Typer(no_args_is_help=True, help="Build and inspect image datasets (folders or .zip).")


@dataset_app.command("build")
def dataset_build_cmd(
    src: list[str] = typer.Argument(..., help="folders or zips of images; NAME=PATH names a source"),
    out: Path = typer.Option(..., "--out", help="dataset zip to write"),
    size: int = typer.Option(64, help="output size in pixels"),
    align: bool = typer.Option(False, "--align/--no-align", help="FFHQ-align faces (else centre-crop)"),
    select: str = typer.Option("auto", help="with --align: which face (auto, largest, best)"),
    max_outside: float = typer.Option(
        1.0, help="with --align: reject faces whose crop is more than this fraction off the photo"
    ),
    license: Optional[str] = typer.Option(None, help="licence line for all sources (default: known per source)"),
) -> None:
    """Write an aligned/resized dataset zip with a manifest.json (per image: source, original file, licence)."""
    from machinegaze.dataset import BuildConfig, build_dataset

    if select == "all":
        raise GazeError("--select all is not supported for datasets (one face per photo)")
    cfg = BuildConfig(size=size, align=align, select=select, max_outside=max_outside, license=license)
    with progress_bar("building") as cb:
        rep = build_dataset(src, out, cfg, progress=cb)
    typer.echo(f"wrote {rep.written} images to {out} in {rep.wall_s:.0f} s")
    keys = ["files", "written", "no_face", "too_much_padding", "corrupt", "not_image", "duplicate", "grey"]
    typer.echo("source".ljust(14) + "".join(k.rjust(17 if k == "too_much_padding" else 10) for k in keys))
    for name, c in rep.counts.items():
        typer.echo(name[:13].ljust(14) + "".join(str(c[k]).rjust(17 if k == "too_much_padding" else 10) for k in keys))
    print_list("corrupt (skipped)", [f"{r['source']}/{r['original']}: {r['reason']}" for r in rep.rejected["corrupt"]])
    print_list("no face found (skipped)", [f"{r['source']}/{r['original']}" for r in rep.rejected["no_face"]])


@dataset_app.command("info")
def dataset_info_cmd(
    path: Path = typer.Argument(..., help="dataset folder or zip"),
    splits: str = typer.Option("train=0.9,test=0.1", help="split fractions by group (identity)"),
) -> None:
    """Counts per source and per split (splits are by group/identity, deterministic)."""
    from collections import Counter

    from machinegaze.data import ImageDataset, parse_splits, split_of

    fr = parse_splits(splits)
    ds = ImageDataset(path)
    groups = [ds.group(i) for i in range(len(ds.names))]
    per_split = Counter(split_of(g, fr) for g in groups)
    per_source = Counter(ds.names[i].split("/")[0] if "/" in ds.names[i] else "." for i in range(len(ds.names)))
    typer.echo(f"{path}: {len(ds.names)} images at {ds.resolution}px, {len(set(groups))} groups")
    for k, v in sorted(per_source.items()):
        typer.echo(f"  source {k}: {v}")
    for k in fr:
        typer.echo(f"  split {k}: {per_split.get(k, 0)}")


def train_cmd(
    data: str = typer.Option(..., "--data", help="folder or .zip of (aligned) face images"),
    outdir: Path = typer.Option(..., "--outdir", help="run folder: snapshots, metrics.jsonl, fakes grids"),
    kimg: float = typer.Option(100.0, "--kimg", help="train until D has seen this many thousand real images"),
    batch: int = typer.Option(32, "--batch", help="global minibatch (split across torchrun processes)"),
    batch_gpu: int = typer.Option(0, "--batch-gpu", help="images per chunk per process (0 = batch / processes)"),
    res: int = typer.Option(64, "--res", help="image resolution (power of two)"),
    cfg: str = typer.Option("small", "--cfg", help="network preset: tiny | small | light | medium | paper"),
    split: str = typer.Option("", "--split", help="train on one split of the dataset, e.g. 'train' ('' = all)"),
    gamma: Optional[str] = typer.Option(None, "--gamma", help="R1 weight (default: 0.0002 * res^2 / batch)"),
    pl_weight: str = typer.Option("0", "--pl-weight", help="path-length regularisation weight (0 = off)"),
    augment: str = typer.Option("color,translation,cutout", "--augment", help="DiffAugment ops, or 'none'"),
    mirror: bool = typer.Option(True, "--mirror/--no-mirror", help="random x-flips of real images"),
    lr: str = typer.Option("0.0025", "--lr", help="Adam learning rate of G (and of D without --dlr)"),
    dlr: Optional[str] = typer.Option(None, "--dlr", help="Adam learning rate of D (default: --lr)"),
    seed: int = typer.Option(0, "--seed"),
    tick_kimg: float = typer.Option(1.0, "--tick-kimg", help="write a metrics line every this many kimg"),
    snap_kimg: float = typer.Option(5.0, "--snap-kimg", help="write a snapshot every this many kimg"),
    threads: int = typer.Option(0, "--threads", help="torch threads per process (0 = CPU count / processes)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest snapshot in --outdir"),
    d_arch: str = typer.Option(
        "stylegan", "--d-arch", help="discriminator: stylegan (logistic + R1) | projected (frozen EfficientNet, hinge)"
    ),
    d_norm: str = typer.Option("group", "--d-norm", help="projected D: norm in the heads: group | batch | none"),
    d_backbone_res: int = typer.Option(
        0, "--d-backbone-res", help="projected D: resize images to this size for EfficientNet (0 = --res)"
    ),
    init_from: str = typer.Option(
        "", "--init-from", help="start from a network (name or file), e.g. faces64 to grow it to --res 128"
    ),
    d_warmup_kimg: str = typer.Option(
        "0", "--d-warmup-kimg", help="train D alone (G frozen) for the first this many kimg, e.g. after --init-from"
    ),
    g_freeze_below: int = typer.Option(
        0, "--g-freeze-below", help="train only G's synthesis blocks of at least this resolution (0 = all of G)"
    ),
    g_detail_weight: str = typer.Option(
        "0",
        "--g-detail-weight",
        help="with --g-freeze-below: weight of a penalty on the colour the trainable blocks add: 4x4 means and chroma (0 = off)",
    ),
    device: Optional[str] = DeviceOpt,
):
    """Train a StyleGAN2 (NVlabs recipe + DiffAugment). Runs under `torchrun --nproc_per_node N -m machinegaze.cli train`
    (one GPU per process, NCCL; gloo on CPUs)."""
    from machinegaze.train import TrainConfig, train

    dev = resolve(device)[0]
    conf = TrainConfig(
        data=data,
        outdir=str(outdir),
        kimg=kimg,
        batch=batch,
        batch_gpu=batch_gpu,
        res=res,
        cfg=cfg,
        split=split,
        gamma=parse_float(gamma, "gamma") if gamma is not None else None,
        pl_weight=parse_float(pl_weight, "pl-weight"),
        augment=augment,
        mirror=mirror,
        lr=parse_float(lr, "lr"),
        dlr=parse_float(dlr, "dlr") if dlr is not None else None,
        seed=seed,
        tick_kimg=tick_kimg,
        snap_kimg=snap_kimg,
        threads=threads,
        resume=resume,
        d_arch=d_arch,
        d_norm=d_norm,
        d_backbone_res=d_backbone_res,
        init_from=init_from,
        d_warmup_kimg=parse_float(d_warmup_kimg, "d-warmup-kimg"),
        g_freeze_below=g_freeze_below,
        g_detail_weight=parse_float(g_detail_weight, "g-detail-weight"),
    )
    if int(os.environ.get("RANK", "0")) != 0:
        train(conf, device=dev)
        return
    with progress_bar("train") as cb:
        last = train(conf, progress=cb, device=dev)
    print(f"wrote {last}")


def metrics_cmd(
    network: Optional[str] = typer.Option(
        None, "--network", help="network .pkl/.safetensors or model name (default: bundled)"
    ),
    data: str = typer.Option(..., "--data", help="folder or .zip of real images to compare with"),
    num_gen: int = typer.Option(2000, "--num-gen", help="generated images"),
    max_real: int = typer.Option(0, "--max-real", help="use at most this many real images (0 = all)"),
    split: str = typer.Option("", "--split", help="use one split of the real data, e.g. 'test'"),
    trunc: str = typer.Option("1", "--trunc", help="truncation psi"),
    seed: int = typer.Option(0, "--seed", help="first seed (image i uses seed + i)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the result as JSON"),
    features: str = typer.Option(
        "effnet", "--features", help="feature set: effnet (EfficientNet-Lite0, 224 px) | vgg16 (relu5_3, 128 px)"
    ),
    pr: bool = typer.Option(False, "--pr", help="also precision and recall (k-NN manifolds, k=3)"),
    faces: bool = typer.Option(False, "--faces", help="also the share of images in which MTCNN finds a face"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """FID-EffNetLite0 and KID-EffNetLite0 (EfficientNet-Lite0 ImageNet features at 224 px, not Inception FID);
    --features vgg16, --pr and --faces add the independent measures (one process). Under torchrun every process
    embeds its share of the images; rank 0 prints and writes the result."""
    import json
    from contextlib import nullcontext

    from machinegaze import distributed
    from machinegaze.data import atomic_write_bytes
    from machinegaze.metrics import MetricsConfig, evaluate_generator

    set_threads(threads)
    dev, prec = resolve(device, precision)
    if features not in ("effnet", "vgg16"):
        raise GazeError(f"--features: unknown feature set '{features}' (choose from: effnet, vgg16)")
    if features != "effnet" or pr or faces:
        _quality_metrics(
            network, data, conf_kwargs(num_gen, max_real, trunc, seed, split), features, faces, dev, prec, out
        )
        return
    world = distributed.init(dev)
    path = zoo.resolve_network(network)
    G = zoo.load_generator(path, dev)
    conf = MetricsConfig(**conf_kwargs(num_gen, max_real, trunc, seed, split))
    with progress_bar("metrics") if world.main else nullcontext() as cb:
        res = evaluate_generator(G, data, conf, progress=cb, precision=prec, world=world)
    distributed.finish()
    if not world.main:
        return
    res["network"] = str(path)
    res["data"] = data
    print(
        f"FID-EffNetLite0 {res['FID-EffNetLite0']:.2f}  KID-EffNetLite0 {res['KID-EffNetLite0'] * 1000:.2f}e-3  "
        f"({res['num_gen']} generated vs {res['num_real']} real at {res['resolution']} px, psi {res['truncation_psi']:g})"
    )
    if out is not None:
        atomic_write_bytes(out, (json.dumps(res, indent=1) + "\n").encode())


def conf_kwargs(num_gen: int, max_real: int, trunc: str, seed: int, split: str) -> dict:
    return dict(num_gen=num_gen, max_real=max_real, truncation_psi=parse_float(trunc, "trunc"), seed=seed, split=split)


def _quality_metrics(network, data, conf_kw: dict, features: str, faces: bool, dev, prec: str, out) -> None:
    """`gaze metrics --features/--pr/--faces`: FID, KID, precision/recall (and the face share) in one process."""
    import json

    from machinegaze.data import atomic_write_bytes
    from machinegaze.metrics import FEATURE_LABEL, MetricsConfig, evaluate_quality

    path = zoo.resolve_network(network)
    G = zoo.load_generator(path, dev)
    with progress_bar("metrics") as cb:
        res = evaluate_quality(G, data, MetricsConfig(**conf_kw), features, faces, progress=cb, precision=prec)
    res["network"], res["data"] = str(path), data
    lab = FEATURE_LABEL[features]
    line = (
        f"FID-{lab} {res[f'FID-{lab}']:.2f}  KID-{lab} {res[f'KID-{lab}'] * 1000:.2f}e-3  "
        f"precision {res[f'precision-{lab}']:.3f}  recall {res[f'recall-{lab}']:.3f}"
    )
    if faces:
        line += f"  faces {res['face_share']:.3f} (reals {res['face_share_real']:.3f})"
    print(f"{line}  ({res['num_gen']} generated vs {res['num_real']} real at {res['resolution']} px)")
    if out is not None:
        atomic_write_bytes(out, (json.dumps(res, indent=1) + "\n").encode())

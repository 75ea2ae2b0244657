"""The `gaze` command line: parse flags, call one library function, print a summary. No math here.

User errors (GazeError, bad flags) print one line and exit non-zero, never a traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from machinegaze import GazeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="machinegaze: see what face GANs and face classifiers see.")
console = Console(stderr=True)


# ---------------------------------------------------------------- flag parsing helpers
def parse_range_list(s: str, what: str = "seeds") -> list[int]:
    """NVlabs-style '0-7,12' -> [0..7, 12]. Bad ranges are user errors."""
    out: list[int] = []
    if s is None or not str(s).strip():
        raise GazeError(f"--{what}: empty list")
    for part in str(s).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1])
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise GazeError(f"--{what}: range '{part}' goes backwards (did you mean {hi}-{lo}?)")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise GazeError(f"--{what}: '{part}' is not an integer or a range like 0-7") from None
    if what == "seeds":
        bad = [v for v in out if not 0 <= v < 2 ** 32]
        if bad:
            raise GazeError(f"--seeds: {bad[0]} is out of range (seeds are 0 .. 2^32-1, as in NVlabs' scripts)")
    return out


def parse_float(s: str, what: str) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        raise GazeError(f"--{what}: '{s}' is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise GazeError(f"--{what}: '{s}' is not a finite number")
    return v


def progress_bar(description: str):
    """A Rich progress bar usable as a machinegaze.progress callback: `with progress_bar(..) as cb: f(progress=cb)`."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    @contextmanager
    def cm():
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                      console=console, transient=False) as bar:
            task = bar.add_task(description, total=None, info="")

            def cb(p):
                info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.info.items())
                bar.update(task, completed=p.step, total=p.total, info=info)
            yield cb
    return cm()


# ---------------------------------------------------------------- commands
# Each capability adds its commands below this line (keep them thin).

# ---- StyleGAN2: generate / mix / interpolate / convert
def _load_generator(network: Optional[str]):
    from machinegaze import checkpoints, zoo
    nets = checkpoints.load_networks(zoo.resolve_network(network))
    return nets.generator, nets


@app.command()
def generate(network: Optional[str] = typer.Option(None, "--network", help="Network .pkl/.pt/.safetensors or model name (default: bundled)"),
             seeds: str = typer.Option("0-7", "--seeds", help="Seeds, e.g. 0-7,12"),
             trunc: str = typer.Option("1.0", "--trunc", help="Truncation psi"),
             class_idx: Optional[int] = typer.Option(None, "--class", help="Class label (conditional networks)"),
             noise_mode: str = typer.Option("const", "--noise-mode", help="const | random | none"),
             translate: Optional[str] = typer.Option(None, "--translate", help="StyleGAN3: translate x,y (e.g. 0.1,0.05)"),
             rotate: Optional[str] = typer.Option(None, "--rotate", help="StyleGAN3: rotate, degrees"),
             seed_convention: str = typer.Option("nvlabs", "--seed-convention", help="nvlabs | rosinality (z from seeds)"),
             outdir: Path = typer.Option(Path("out"), "--outdir")):
    """Generate images from seeds (one PNG per seed + a grid) and save their latents (ws.npz, key 'w')."""
    from machinegaze import generate as gen
    seed_list = parse_range_list(seeds, "seeds")
    xy = None
    if translate is not None:
        parts = translate.split(",")
        if len(parts) != 2:
            raise GazeError(f"--translate must be two numbers x,y (e.g. 0.1,0.05), got {translate!r}")
        xy = (parse_float(parts[0], "translate"), parse_float(parts[1], "translate"))
    cfg = gen.GenerateConfig(trunc=parse_float(trunc, "trunc"), class_idx=class_idx, noise_mode=noise_mode,
                             translate=xy, rotate=None if rotate is None else parse_float(rotate, "rotate"),
                             seed_convention=seed_convention)
    G, _ = _load_generator(network)
    with progress_bar("generate") as cb:
        images, ws = gen.generate_images(G, seed_list, cfg, progress=cb)
    paths = gen.write_generated(images, seed_list, outdir)
    gen.save_w(Path(outdir) / "ws.npz", ws)
    print(f"wrote {len(paths)} images and ws.npz to {outdir}")


@app.command()
def mix(network: Optional[str] = typer.Option(None, "--network"),
        rows: str = typer.Option("0-3", "--rows", help="Row seeds (their non-mixed layers are kept)"),
        cols: str = typer.Option("4-7", "--cols", help="Column seeds (their --styles layers are copied in)"),
        styles: str = typer.Option("coarse", "--styles", help="coarse | middle | fine | layer list like 0-5"),
        trunc: str = typer.Option("1.0", "--trunc"),
        class_idx: Optional[int] = typer.Option(None, "--class"),
        noise_mode: str = typer.Option("const", "--noise-mode"),
        outdir: Path = typer.Option(Path("out"), "--outdir")):
    """The style-mixing grid: sources on the top row and left column, mixes inside."""
    from machinegaze import mix as mixmod
    from machinegaze.data import save_image
    row_seeds, col_seeds = parse_range_list(rows, "rows"), parse_range_list(cols, "cols")
    G, _ = _load_generator(network)
    cfg = mixmod.MixConfig(styles=styles, trunc=parse_float(trunc, "trunc"), noise_mode=noise_mode, class_idx=class_idx)
    grid, mixes = mixmod.style_mixing_grid(G, row_seeds, col_seeds, cfg)
    outdir.mkdir(parents=True, exist_ok=True)
    for (r, c), img in mixes.items():
        save_image(img, outdir / f"{r}-{c}.png")
    save_image(grid, outdir / "grid.png")
    print(f"wrote {len(mixes)} mixes and grid.png to {outdir} (layers {mixmod.parse_styles(G, styles)} from the columns)")


@app.command()
def interpolate(network: Optional[str] = typer.Option(None, "--network"),
                seeds: str = typer.Option("1,5,9", "--seeds"),
                frames: int = typer.Option(60, "--frames"),
                fps: int = typer.Option(30, "--fps"),
                trunc: str = typer.Option("1.0", "--trunc"),
                class_idx: Optional[int] = typer.Option(None, "--class"),
                noise_mode: str = typer.Option("const", "--noise-mode"),
                out: Path = typer.Option(Path("walk.mp4"), "--out", help=".mp4 or .gif")):
    """A looping latent walk through the seeds, smooth in W."""
    from machinegaze import generate as gen
    seed_list = parse_range_list(seeds, "seeds")
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise GazeError(f"--out must end in .mp4 or .gif, got {out.name}")
    G, _ = _load_generator(network)
    with progress_bar("interpolate") as cb:
        imgs = gen.interpolate(G, seed_list, frames=frames, trunc=parse_float(trunc, "trunc"), class_idx=class_idx,
                               noise_mode=noise_mode, progress=cb)
    gen.write_video(gen.frames_to_uint8(imgs), out, fps=fps)
    print(f"wrote {out} ({frames} frames)")


@app.command()
def convert(src: Path = typer.Argument(..., help="NVlabs StyleGAN2/3 .pkl, rosinality .pt (or our .safetensors)"),
            dst: Path = typer.Argument(..., help="Output .safetensors"),
            half: bool = typer.Option(False, "--half", help="Store float tensors as fp16")):
    """Convert an NVlabs StyleGAN2/StyleGAN3 pickle or a rosinality .pt to machinegaze .safetensors (never runs pickled code)."""
    from machinegaze import checkpoints
    if dst.suffix != ".safetensors":
        raise GazeError(f"output must end in .safetensors, got {dst.name}")
    checkpoints.convert(src, dst, half=half)
    print(f"wrote {dst}")


# ---- align / dataset (faces: MTCNN + FFHQ alignment; dataset zips)
def _print_list(title: str, items: list[str], limit: int = 20) -> None:
    if not items:
        return
    typer.echo(f"{title} ({len(items)}):")
    for it in items[:limit]:
        typer.echo(f"  {it}")
    if len(items) > limit:
        typer.echo(f"  ... and {len(items) - limit} more")


@app.command("align")
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
    typer.echo(f"{s['aligned_images']} of {s['total']} images aligned ({s['faces_written']} faces written to {out_dir}); "
               f"{s['no_face']} without a face, {s['corrupt']} corrupt (skipped)")
    _print_list("no face found (skipped)", rep.no_face)
    _print_list("corrupt (skipped)", [f"{f}: {r}" for f, r in rep.corrupt])
    typer.echo(f"report: {out_dir / 'align_report.json'}")


dataset_app = typer.Typer(no_args_is_help=True, help="Build and inspect image datasets (folders or .zip).")
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("build")
def dataset_build_cmd(
    src: list[str] = typer.Argument(..., help="folders or zips of images; NAME=PATH names a source"),
    out: Path = typer.Option(..., "--out", help="dataset zip to write"),
    size: int = typer.Option(64, help="output size in pixels"),
    align: bool = typer.Option(False, "--align/--no-align", help="FFHQ-align faces (else centre-crop)"),
    select: str = typer.Option("auto", help="with --align: which face (auto, largest, best)"),
    max_outside: float = typer.Option(1.0, help="with --align: reject faces whose crop is more than this fraction off the photo"),
    license: Optional[str] = typer.Option(None, help="licence line for all sources (default: known per source)"),
) -> None:
    """Write an aligned/resized dataset zip with a manifest.json (per image: source, original file, licence)."""
    from machinegaze.data import BuildConfig, build_dataset

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
    _print_list("corrupt (skipped)", [f"{r['source']}/{r['original']}: {r['reason']}" for r in rep.rejected["corrupt"]])
    _print_list("no face found (skipped)", [f"{r['source']}/{r['original']}" for r in rep.rejected["no_face"]])


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


@app.command()
def tour(outdir: Path = typer.Option(Path("tour"), "--outdir"),
         network: Optional[str] = typer.Option(None, "--network", help="Default: the bundled face GAN"),
         faces: Optional[Path] = typer.Option(None, "--faces", help="A folder of your own faces for the detector stop"),
         quick: bool = typer.Option(False, "--quick", help="Fewer frames and steps")):
    """Run every capability on the bundled models and write OUTDIR/index.html."""
    from machinegaze.perf import tune_allocator
    from machinegaze.tour import TourConfig, run_tour
    tune_allocator()

    def on_stop(s):
        status = f"skipped ({s.skipped})" if s.skipped else f"{len(s.files)} files"
        console.print(f"  {s.title}: {status} [{s.seconds:.1f} s]", highlight=False, markup=False)
    index, stops = run_tour(TourConfig(outdir=outdir, network=network, faces=faces, quick=quick), on_stop=on_stop)
    print(f"wrote {index}")


# ---- detect: is this face real? (machinegaze.detect)
detect_app = typer.Typer(no_args_is_help=True, help="Is this face real? Train, evaluate and run fake-face detectors.")
app.add_typer(detect_app, name="detect")
_DETECT_SOURCES_HELP = ("comma-separated sources: utkface, lfw, ffhq256, ffhq1024, orl, stylegan1, stylegan3, "
                        "real:FOLDER, fake:FOLDER, stylegan2:NETWORK")


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        if threads < 1:
            raise GazeError(f"--threads must be >= 1, got {threads}")
        import torch
        torch.set_num_threads(threads)


@detect_app.command("train")
def detect_train_cmd(
    out: Path = typer.Option(..., "--out", help="detector file to write (.safetensors)"),
    train: str = typer.Option("utkface,lfw,ffhq256,stylegan1,stylegan3", "--train", help=_DETECT_SOURCES_HELP),
    arch: str = typer.Option("effnet_lite0", "--arch", help="effnet_lite0 (ImageNet transfer) | smallcnn (from scratch)"),
    size: int = typer.Option(128, "--size", help="input size in pixels"),
    jpeg_quality: int = typer.Option(75, "--jpeg-quality", help="JPEG quality of the preprocessing policy"),
    policy: bool = typer.Option(True, "--policy/--no-policy", help="same size + same JPEG quality for every image"),
    freeze_epochs: int = typer.Option(1, "--freeze-epochs", help="epochs training the head only"),
    epochs: int = typer.Option(3, "--epochs", help="epochs after unfreezing (discriminative LRs, one-cycle)"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: str = typer.Option("2e-3", "--lr", help="head learning rate"),
    lr_mult: float = typer.Option(100.0, "--lr-mult", help="discriminative LRs: the layers nearest the input get "
                                  "lr/lr-mult (fastai's slice(lr/mult, lr)); lower it to adapt early layers more"),
    balance_sources: bool = typer.Option(False, "--balance-sources/--no-balance-sources",
                                         help="weight every source equally within its class"),
    max_per_source: int = typer.Option(400, "--max-per-source", help="training images per source"),
    crop: Optional[int] = typer.Option(None, "--crop", help="train on random crops of this size (native pixels); "
                                       "predict sees the whole --size image"),
    seed: int = typer.Option(0, "--seed"),
    data: Optional[Path] = typer.Option(None, "--data", help="face data folder (default: $GAZE_FACES or ../shared/data/faces)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    full: bool = typer.Option(True, "--fp16/--fp32", help="store weights as fp16"),
):
    """Fine-tune a detector on the train split of the sources; calibrate it on their validation split."""
    from machinegaze import checkpoints
    from machinegaze.detect.train import TrainConfig, train_detector
    if out.suffix != ".safetensors":
        raise GazeError(f"--out must end in .safetensors, got {out.name}")
    _set_threads(threads)
    cfg = TrainConfig(arch=arch, size=size, jpeg_quality=jpeg_quality, policy=policy, freeze_epochs=freeze_epochs,
                      epochs=epochs, batch_size=batch_size, lr=parse_float(lr, "lr"), max_per_source=max_per_source,
                      crop=crop, lr_mult=lr_mult, balance_sources=balance_sources, seed=seed)
    with progress_bar("train") as cb:
        res = train_detector(train, cfg, data, progress=cb)
    import dataclasses
    checkpoints.save_detector(out, res.model, meta={"train": train.split(","), "config": dataclasses.asdict(cfg),
                                                    "history": res.history}, half=full)
    for h in res.history:
        extra = f"  val loss {h['val_loss']:.3f}  val acc {100 * h['val_accuracy']:.1f}%" if "val_loss" in h else ""
        print(f"epoch {h['epoch']} ({h['phase']}): train loss {h['train_loss']:.3f}{extra}")
    print(f"trained on {len(res.train_items)} images in {res.seconds:.0f} s; temperature "
          f"{float(res.model.temperature):.3f}, threshold {float(res.model.threshold):.3f}; wrote {out}")


@detect_app.command("eval")
def detect_eval_cmd(
    model: str = typer.Option("default", "--model", help="detector file or name (default: the bundled one)"),
    test: str = typer.Option("utkface,lfw,ffhq256,stylegan1,stylegan3", "--test",
                             help=_DETECT_SOURCES_HELP + " (built-in sources: their held-out test split)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for metrics.json, predictions.csv, figures, report.html"),
    max_per_source: int = typer.Option(400, "--max-per-source"),
    n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap resamples for the 95% intervals"),
    data: Optional[Path] = typer.Option(None, "--data"),
    threads: Optional[int] = typer.Option(None, "--threads"),
):
    """Accuracy, AP, ROC AUC, confusion matrix, per-source and per-subgroup accuracy (95% CIs), calibration."""
    from machinegaze import zoo
    from machinegaze.detect import evaluate as ev
    from machinegaze.detect.sources import ImageCache, held_out, parse_sources
    _set_threads(threads)
    det = zoo.load_detector(model)
    sources = parse_sources(test, data)
    items = held_out(sources, max_per_source)
    cache = ImageCache()
    with progress_bar("eval") as cb:
        res = ev.evaluate_detector(det, items, sources, cache, n_boot=n_boot, progress=cb)
    s = res.summary
    (tn, fp), (fn, tp) = s["confusion"]
    print(f"{s['n']} images ({s['n_real']} real, {s['n_fake']} fake), threshold {res.threshold:.3f}")
    for k in ("accuracy", "balanced_accuracy", "accuracy_real", "accuracy_fake"):
        print(f"  {k:18s} {100 * s[k]:5.1f}%  [{100 * s[k + '_ci'][0]:.1f}, {100 * s[k + '_ci'][1]:.1f}]")
    for k in ("roc_auc", "average_precision"):
        print(f"  {k:18s} {s[k]:.3f}   [{s[k + '_ci'][0]:.3f}, {s[k + '_ci'][1]:.3f}]")
    print(f"  confusion          real->real {tn}  real->fake {fp}  fake->real {fn}  fake->fake {tp}")
    print(f"  ECE                {100 * s['ece']:.1f}% (uncalibrated {100 * s['ece_uncalibrated']:.1f}%)")
    for r in res.per_source:
        print(f"  {r['group']:18s} {100 * r['accuracy']:5.1f}%  [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]  n={r['n']}")
    if out is not None:
        from machinegaze.detect.report import write_eval_report
        res.write(out)
        html = write_eval_report(res, out, model=det, sources=sources, cache=cache)
        print(f"wrote {out}/metrics.json, predictions.csv and {html}")


@detect_app.command("predict")
def detect_predict_cmd(
    paths: list[Path] = typer.Argument(..., help="image files and/or folders"),
    model: str = typer.Option("default", "--model", help="detector file or name (default: the bundled one)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write a CSV with columns path,prob_fake,verdict"),
    batch_size: int = typer.Option(32, "--batch-size"),
    threads: Optional[int] = typer.Option(None, "--threads"),
):
    """P(fake) and a verdict (by the detector's calibrated threshold) for every image."""
    from rich.table import Table

    from machinegaze import zoo
    from machinegaze.detect.predict import predict_paths, write_predictions_csv
    _set_threads(threads)
    det = zoo.load_detector(model)
    skipped: list[tuple[str, str]] = []
    with progress_bar("predict") as cb:
        preds = predict_paths(det, paths, batch_size=batch_size, progress=cb, skipped=skipped)
    table = Table("path", "P(fake)", "verdict", title=f"threshold {float(det.threshold):.3f}")
    for p in preds:
        table.add_row(p.path, f"{p.prob_fake:.3f}", p.verdict)
    Console().print(table)
    n_fake = sum(p.verdict == "fake" for p in preds)
    print(f"{len(preds)} images: {n_fake} fake, {len(preds) - n_fake} real")
    if out is not None:
        write_predictions_csv(preds, out)
        print(f"wrote {out}")
    if skipped:  # the readable images were still predicted; the exit status says not all of them were
        for path, reason in skipped:
            print(f"skipped: {reason}", file=sys.stderr)
        print(f"error: {len(skipped)} of {len(skipped) + len(preds)} files could not be read (listed above)",
              file=sys.stderr)
        raise typer.Exit(1)


@detect_app.command("experiment")
def detect_experiment_cmd(
    file: Path = typer.Argument(..., help="experiment TOML, e.g. experiments/detect_seeds.toml"),
    out: Path = typer.Option(Path("runs/detect"), "--out", help="folder for results.{json,md,csv}, per-run files, models"),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated experiment names to run"),
    data: Optional[Path] = typer.Option(None, "--data"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    report: bool = typer.Option(True, "--report/--no-report", help="also write report.html"),
):
    """Run train/test compositions from a TOML file and print one comparison table."""
    from machinegaze.detect.experiment import markdown_tables, run_file
    _set_threads(threads)
    with progress_bar("experiments") as cb:
        rows = run_file(file, out, data, [s.strip() for s in only.split(",")] if only else None, cb)
    print(markdown_tables(rows))
    if report:
        from machinegaze.detect.report import write_experiment_report
        print(f"wrote {write_experiment_report(out)}")


@detect_app.command("report")
def detect_report_cmd(
    run_dir: Path = typer.Argument(..., help="an experiment folder (results.json) or an eval folder (metrics.json)"),
    threads: Optional[int] = typer.Option(None, "--threads"),
):
    """(Re)build report.html with matplotlib figures from saved experiment or evaluation results."""
    from machinegaze.detect.report import write_report
    _set_threads(threads)
    print(f"wrote {write_report(run_dir)}")


# ---- Inceptionism: gaze dream
@app.command()
def dream(image: Optional[Path] = typer.Argument(None, help="Photo to dream on (not needed with --from-noise)"),
          out: Path = typer.Option(Path("dream.png"), "--out", "-o", help=".png/.jpg, or .mp4/.gif with --zoom-frames"),
          net: str = typer.Option("efficientnet", "--net", help="efficientnet | vgg16 | discriminator | detector"),
          network: Optional[str] = typer.Option(None, "--network", help="StyleGAN2 file or model name (--net discriminator)"),
          layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Layer to amplify (NAME, or NAME:CHANNEL)"),
          class_: Optional[str] = typer.Option(None, "--class", "-c", help="ImageNet class to amplify: name or index"),
          objective: Optional[str] = typer.Option(None, "--objective", help="e.g. 'layer:_blocks.10._relu0 + 0.5*class:espresso'"),
          guide: Optional[Path] = typer.Option(None, "--guide", help="Guide image: dream towards its features"),
          octaves: int = typer.Option(4, "--octaves"),
          octave_scale: str = typer.Option("1.4", "--octave-scale"),
          steps: int = typer.Option(10, "--steps", help="Gradient steps per octave"),
          step_size: str = typer.Option("0.02", "--step-size"),
          jitter: int = typer.Option(32, "--jitter", help="Random roll per step, px"),
          smooth: str = typer.Option("0", "--smooth", help="Blur the gradient (sigma, px)"),
          tile: int = typer.Option(512, "--tile", help="Tile size for big images (0: never tile)"),
          size: int = typer.Option(512, "--size", help="Resize the photo's longest side to this (0: keep)"),
          seed: int = typer.Option(0, "--seed"),
          from_noise: bool = typer.Option(False, "--from-noise", help="Start from noise (feature visualisation)"),
          noise_size: int = typer.Option(224, "--noise-size"),
          noise_steps: int = typer.Option(256, "--noise-steps"),
          zoom_frames: int = typer.Option(0, "--zoom-frames", help="Feedback-zoom video with this many frames"),
          zoom: str = typer.Option("1.05", "--zoom", help="Zoom factor per frame"),
          fps: int = typer.Option(12, "--fps"),
          list_layers: bool = typer.Option(False, "--list-layers", help="Print the network's layers and shapes"),
          list_classes: bool = typer.Option(False, "--list-classes", help="Print the class names")):
    """DeepDream a photo (or visualise a layer/class from noise, or make a zoom video)."""
    from machinegaze import dream as dm
    if list_layers or list_classes:
        dnet = dm.load_net(net, network)
        if list_classes:
            for i, name in enumerate(dnet.class_names or []):
                print(f"{i}\t{name}")
            if not dnet.class_names:
                print(f"{net}: no class names (use output indices)")
            return
        print(f"layers of {dnet.name} (output shapes for a {dnet.probe_size}x{dnet.probe_size} input; default: {dnet.default_layer})")
        for info in dnet.layers():
            print(f"{info.name:32s} {info.kind:20s} {'x'.join(map(str, info.shape[1:]))}")
        return
    terms = [t for t in (objective, f"layer:{layer}" if layer and ":" not in layer else layer,
                         f"class:{class_}" if class_ is not None else None) if t]
    cfg = dm.DreamConfig(net=net, objective=" + ".join(terms) or None, octaves=octaves,
                         octave_scale=parse_float(octave_scale, "octave-scale"), steps=steps,
                         step_size=parse_float(step_size, "step-size"), jitter=jitter, smooth=parse_float(smooth, "smooth"),
                         tile=tile, size=size, seed=seed, from_noise=from_noise, noise_size=noise_size,
                         noise_steps=noise_steps, zoom_frames=zoom_frames, zoom=parse_float(zoom, "zoom"), fps=fps)
    with progress_bar("dream") as cb:
        result = dm.run(cfg, image, out, guide=guide, network=network, progress=cb)
    what = f"{len(result.frames)} frames" if result.frames else f"{result.image.shape[-1]}x{result.image.shape[-2]}"
    print(f"wrote {out} ({what}; objective {result.objective}: {result.history[0]:.4g} -> {result.history[-1]:.4g})"
          if result.history else f"wrote {out}")


# ---- amplifying the uncanny (Broad et al. 2020)
@app.command("uncanny")
def uncanny_cmd(
    network: Optional[str] = typer.Option(None, "--network", help="network with a discriminator (.pkl/.safetensors or model name; default: bundled)"),
    steps: int = typer.Option(500, "--steps", help="fine-tuning steps"),
    snapshot_every: int = typer.Option(50, "--snapshot-every", help="measure, write a grid and a resumable snapshot every K steps"),
    outdir: Path = typer.Option(Path("uncanny"), "--outdir"),
    critic: str = typer.Option("d", "--critic", help="d (the network's discriminator) | detector:PATH_OR_NAME"),
    start_from: str = typer.Option("G_ema", "--start-from", help="G_ema | G | another network file or model name"),
    max_collapse: Optional[str] = typer.Option(None, "--max-collapse", help="stop when diversity (mean pairwise LPIPS) falls below T"),
    keep_peak: bool = typer.Option(False, "--keep-peak", help="write peak.safetensors + peak.png: max P(fake) x diversity/diversity_0"),
    batch: int = typer.Option(8, "--batch"),
    lr: str = typer.Option("0.0025", "--lr", help="Adam learning rate (betas 0, 0.99 as NVlabs' G)"),
    seed: int = typer.Option(0, "--seed", help="seed of the training z and noise"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --outdir from its last snapshot"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
):
    """Fine-tune the generator against its frozen critic until its faces turn uncanny, then collapse."""
    from machinegaze import zoo
    from machinegaze.uncanny import UncannyConfig, run_uncanny
    _set_threads(threads)
    cfg = UncannyConfig(steps=steps, snapshot_every=snapshot_every, critic=critic, start_from=start_from,
                        batch=batch, lr=parse_float(lr, "lr"), seed=seed, keep_peak=keep_peak,
                        max_collapse=None if max_collapse is None else parse_float(max_collapse, "max-collapse"))
    path = zoo.resolve_network(network)
    with progress_bar("uncanny") as cb:
        res = run_uncanny(path, outdir, cfg, resume=resume, progress=cb)
    first, last = res.metrics[0], res.metrics[-1]
    if res.resumed_from is not None:
        print(f"resumed from step {res.resumed_from}")
    print(f"step {first['step']} -> {last['step']}: critic P(fake) {first['critic_fake']:.3f} -> {last['critic_fake']:.3f}, "
          f"diversity {first['diversity']:.4f} -> {last['diversity']:.4f}, redness {first['redness']:+.3f} -> "
          f"{last['redness']:+.3f}, distance {last['param_distance']:.4f}")
    if res.collapse_step is not None:
        print(f"collapsed: diversity fell below {cfg.max_collapse} at step {res.collapse_step}; stopped")
    if "peak" in res.files:
        print(f"peak uncanniness at step {res.peak_step}: wrote {res.files['peak']} and {res.files['peak_grid']}")
    print(f"wrote {outdir}/metrics.jsonl, progression.mp4, summary.html ({len(res.metrics)} snapshots, {res.seconds:.0f} s)")


# ---- projection (GAN inversion) and breeding
@app.command("project")
def project_cmd(
    target: Path = typer.Option(..., "--target", help="photo to project (png/jpg/...)"),
    network: Optional[str] = typer.Option(None, "--network", help="Network .pkl/.safetensors or model name (default: bundled)"),
    space: Optional[str] = typer.Option(None, "--space", help="w | w+ (default: the preset's; fast: w+, nvlabs: w)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="optimisation steps (default: the preset's; fast 150, nvlabs 1000)"),
    preset: str = typer.Option("fast", "--preset", help="fast (default) | nvlabs (NVlabs projector.py, 1000 steps)"),
    align: bool = typer.Option(False, "--align/--no-align", help="FFHQ-align the face first (else centre-crop)"),
    seed: int = typer.Option(0, "--seed", help="seed of the noise init and the candidate draw"),
    class_idx: Optional[int] = typer.Option(None, "--class", help="class label (conditional networks)"),
    video: bool = typer.Option(True, "--video/--no-video", help="write proj.mp4 (target | projection over the steps)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    outdir: Path = typer.Option(Path("out"), "--outdir"),
):
    """Find the latent whose image matches a photo: target.png, proj.png, projected_w.npz, proj.mp4, result.json."""
    from machinegaze.perf import tune_allocator
    from machinegaze.project import ProjectConfig, run_project
    _set_threads(threads)
    tune_allocator()
    cfg = ProjectConfig(preset=preset, space=space, steps=steps, seed=seed, class_idx=class_idx, align=align, video=video)
    with progress_bar(f"project ({preset})") as cb:
        run = run_project(network, target, outdir, cfg, progress=cb)
    r = run.result
    print(f"LPIPS {r['lpips']:.4f} after {r['recipe']['steps']} steps in {r['wall_s']:.1f} s ({preset}, {r['recipe']['space']})")
    for who in ("target", "projection"):
        s = (r.get("realism") or {}).get(who)
        if s:
            print(f"  D on the {who}: logit {s['d_logit']:+.3f} (sigmoid {s['d_sigmoid']:.3f}), "
                  f"more real than {s['percentile_among_generated']:.0f}% of the network's own images"
                  + ("  -> out of domain" if s["out_of_domain"] else ""))
    print(f"wrote {', '.join(p.name for p in run.files.values())} to {outdir}")


@app.command("breed")
def breed_cmd(
    w: Optional[list[Path]] = typer.Option(None, "--w", help="parent latent .npz (key 'w'); repeat; used before --seed parents"),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="parent from a seed; repeat"),
    network: Optional[str] = typer.Option(None, "--network"),
    genes: Optional[str] = typer.Option(None, "--genes", help="fraction from the second parent per layer group, e.g. coarse=0.8,middle=0.3,fine=0"),
    crossover: Optional[str] = typer.Option(None, "--crossover", help="uniform | grouped: whole layers/groups from either parent (instead of --genes)"),
    crossover_seed: int = typer.Option(0, "--crossover-seed"),
    crossover_rate: str = typer.Option("0.5", "--crossover-rate", help="chance that a layer/group comes from the second parent"),
    mutate: str = typer.Option("0", "--mutate", help="mutation strength: a random step in W (0: none; try 0.1-0.3)"),
    mutation_seed: int = typer.Option(0, "--mutation-seed"),
    grid: bool = typer.Option(False, "--grid", help="parent x parent grid of children (needs 2+ parents)"),
    trunc: str = typer.Option("1.0", "--trunc", help="truncation psi for seed parents"),
    class_idx: Optional[int] = typer.Option(None, "--class"),
    noise_mode: str = typer.Option("const", "--noise-mode"),
    out: Path = typer.Option(Path("child.png"), "--out", help="child image (.png/.jpg); its latent goes to the same stem .npz"),
):
    """Breed two latents gene by gene (coarse/middle/fine), by crossover, with optional mutation."""
    import torch

    from machinegaze import generate as gen
    from machinegaze import mix as mixmod
    from machinegaze.data import save_image
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise GazeError(f"--out must be an image file (.png/.jpg/.webp), got {out.name}")
    G, _ = _load_generator(network)
    parents = []
    for p in w or []:
        lw = gen.load_w(p, G)
        if lw.shape[0] != 1:
            raise GazeError(f"{p}: holds {lw.shape[0]} latents; a parent file must hold one")
        parents.append(lw)
    psi = parse_float(trunc, "trunc")
    for s in seed or []:
        parents.append(gen.seeds_to_ws(G, [s], trunc=psi, class_idx=class_idx))
    cfg = mixmod.BreedConfig(genes=genes, crossover=crossover, crossover_seed=crossover_seed,
                             crossover_rate=parse_float(crossover_rate, "crossover-rate"), mutate=parse_float(mutate, "mutate"),
                             mutation_seed=mutation_seed, trunc=psi, class_idx=class_idx, noise_mode=noise_mode)
    if grid:
        image, kids = mixmod.breed_grid(G, torch.cat(parents) if parents else torch.empty(0, G.num_ws, G.w_dim), cfg)
    else:
        if len(parents) != 2:
            raise GazeError(f"breeding needs exactly two parents (--w and/or --seed), got {len(parents)} (or use --grid)")
        kids = mixmod.make_child(G, parents[0], parents[1], cfg)
        image = gen.synthesize(G, kids, noise_mode=noise_mode).clamp(-1, 1)
    save_image(image, out)
    npz = gen.save_w(out.with_suffix(".npz"), kids)
    print(f"wrote {out} and {npz} ({kids.shape[0]} child{'ren' if kids.shape[0] > 1 else ''})")


@app.command("train")
def train_cmd(
    data: str = typer.Option(..., "--data", help="folder or .zip of (aligned) face images"),
    outdir: Path = typer.Option(..., "--outdir", help="run folder: snapshots, metrics.jsonl, fakes grids"),
    kimg: float = typer.Option(100.0, "--kimg", help="train until D has seen this many thousand real images"),
    batch: int = typer.Option(32, "--batch", help="global minibatch (split across torchrun processes)"),
    batch_gpu: int = typer.Option(0, "--batch-gpu", help="images per chunk per process (0 = batch / processes)"),
    res: int = typer.Option(64, "--res", help="image resolution (power of two)"),
    cfg: str = typer.Option("small", "--cfg", help="network preset: tiny | small | medium | paper"),
    split: str = typer.Option("", "--split", help="train on one split of the dataset, e.g. 'train' ('' = all)"),
    gamma: Optional[str] = typer.Option(None, "--gamma", help="R1 weight (default: 0.0002 * res^2 / batch)"),
    pl_weight: str = typer.Option("0", "--pl-weight", help="path-length regularisation weight (0 = off)"),
    augment: str = typer.Option("color,translation,cutout", "--augment", help="DiffAugment ops, or 'none'"),
    mirror: bool = typer.Option(True, "--mirror/--no-mirror", help="random x-flips of real images"),
    lr: str = typer.Option("0.0025", "--lr", help="Adam learning rate (G and D)"),
    seed: int = typer.Option(0, "--seed"),
    tick_kimg: float = typer.Option(1.0, "--tick-kimg", help="write a metrics line every this many kimg"),
    snap_kimg: float = typer.Option(5.0, "--snap-kimg", help="write a snapshot every this many kimg"),
    threads: int = typer.Option(0, "--threads", help="torch threads per process (0 = CPU count / processes)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest snapshot in --outdir"),
):
    """Train a StyleGAN2 (NVlabs recipe + DiffAugment). Runs under `torchrun --nproc_per_node N -m machinegaze.cli train`."""
    from machinegaze.train import TrainConfig, train
    conf = TrainConfig(data=data, outdir=str(outdir), kimg=kimg, batch=batch, batch_gpu=batch_gpu, res=res, cfg=cfg,
                       split=split, gamma=parse_float(gamma, "gamma") if gamma is not None else None,
                       pl_weight=parse_float(pl_weight, "pl-weight"), augment=augment, mirror=mirror,
                       lr=parse_float(lr, "lr"), seed=seed, tick_kimg=tick_kimg, snap_kimg=snap_kimg, threads=threads,
                       resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        train(conf)
        return
    with progress_bar("train") as cb:
        last = train(conf, progress=cb)
    print(f"wrote {last}")


@app.command("metrics")
def metrics_cmd(
    network: Optional[str] = typer.Option(None, "--network", help="network .pkl/.safetensors or model name (default: bundled)"),
    data: str = typer.Option(..., "--data", help="folder or .zip of real images to compare with"),
    num_gen: int = typer.Option(2000, "--num-gen", help="generated images"),
    max_real: int = typer.Option(0, "--max-real", help="use at most this many real images (0 = all)"),
    split: str = typer.Option("", "--split", help="use one split of the real data, e.g. 'test'"),
    trunc: str = typer.Option("1", "--trunc", help="truncation psi"),
    seed: int = typer.Option(0, "--seed", help="first seed (image i uses seed + i)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the result as JSON"),
):
    """FID-EffNetLite0 and KID-EffNetLite0 (EfficientNet-Lite0 ImageNet features at 224 px, not Inception FID)."""
    import json

    from machinegaze import checkpoints, zoo
    from machinegaze.data import atomic_write_bytes
    from machinegaze.metrics import MetricsConfig, evaluate_generator
    _set_threads(threads)
    path = zoo.resolve_network(network)
    G = checkpoints.load_networks(path).generator
    conf = MetricsConfig(num_gen=num_gen, max_real=max_real, truncation_psi=parse_float(trunc, "trunc"), seed=seed,
                         split=split)
    with progress_bar("metrics") as cb:
        res = evaluate_generator(G, data, conf, progress=cb)
    res["network"] = str(path)
    res["data"] = data
    print(f"FID-EffNetLite0 {res['FID-EffNetLite0']:.2f}  KID-EffNetLite0 {res['KID-EffNetLite0'] * 1000:.2f}e-3  "
          f"({res['num_gen']} generated vs {res['num_real']} real at {res['resolution']} px, psi {res['truncation_psi']:g})")
    if out is not None:
        atomic_write_bytes(out, (json.dumps(res, indent=1) + "\n").encode())


# ---- the lab in a browser: gaze serve (machinegaze.web)
@app.command()
def serve(host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)"),
          port: int = typer.Option(8000, "--port"),
          network: Optional[str] = typer.Option(None, "--network", help="StyleGAN2 .pkl/.safetensors or model name (default: bundled)"),
          detector: Optional[str] = typer.Option(None, "--detector", help="Detector file or name (default: bundled; 'none' switches detection off)"),
          data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Gallery folder (default: ~/.local/share/machinegaze)"),
          max_upload_mb: str = typer.Option("20", "--max-upload-mb", help="Largest upload accepted (413 above)"),
          workers: int = typer.Option(1, "--workers", help="Threads running long jobs (and quick requests at once)"),
          queue: int = typer.Option(8, "--queue", help="Jobs that may wait (429 when full)"),
          uncanny_dir: Optional[list[Path]] = typer.Option(None, "--uncanny-dir", help="A `gaze uncanny` run folder to browse (repeatable)"),
          threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (1 is fastest on a busy machine)")):
    """Serve the lab (Detect, Generate & Mix, Project, Dream, Uncanny, Gallery) as a local web page."""
    from machinegaze.web.server import serve as run_server
    from machinegaze.web import ServeConfig
    _set_threads(threads)
    cfg = ServeConfig(host=host, port=port, network=network, detector=detector, data_dir=data_dir,
                      max_upload_mb=parse_float(max_upload_mb, "max-upload-mb"), workers=workers, queue=queue,
                      uncanny_dirs=tuple(uncanny_dir or ()))
    run_server(cfg, say=lambda msg: console.print(msg, highlight=False, markup=False))


# --- end of commands ---


def _error(msg: str) -> None:
    """One line on stderr, never wrapped."""
    msg = " ".join(str(msg).split())
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()


def main(argv: Optional[list[str]] = None) -> None:
    from machinegaze.perf import tune_allocator
    tune_allocator()  # keep freed activation memory in-process: up to ~3x faster CPU inference (benchmarks/generator.py)
    try:
        rc = app(args=argv, standalone_mode=False)  # click returns a command's typer.Exit code in this mode
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except GazeError as e:
        _error(str(e))
        sys.exit(1)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click usage errors and anything unexpected: one line, non-zero
        import click
        if isinstance(e, click.exceptions.ClickException):
            _error(e.format_message())
            sys.exit(e.exit_code or 2)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if os.environ.get("GAZE_DEBUG"):
            raise
        _error(f"{type(e).__name__}: {e} (set GAZE_DEBUG=1 for a traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()

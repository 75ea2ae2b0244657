"""gaze detect train / eval / predict / experiment / report: the fake-face detector."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from machinegaze import GazeError
from machinegaze.cli._common import parse_float, progress_bar, set_threads
from machinegaze.cli._options import DeviceOpt, PrecisionOpt, resolve
from machinegaze.device import describe

detect_app = typer.Typer(no_args_is_help=True, help="Is this face real? Train, evaluate and run fake-face detectors.")
_DETECT_SOURCES_HELP = (
    "comma-separated sources: utkface, lfw, ffhq256, ffhq1024, orl, stylegan1, stylegan3, sd21_sdfd, sd14_blonde, "
    "real:FOLDER, fake:FOLDER, stylegan2:NETWORK"
)


def _one_process(command: str) -> None:
    """eval and experiment do not shard: under torchrun every rank would repeat the whole job."""
    from machinegaze import distributed

    if distributed.world_from_env().on:
        raise GazeError(
            f"gaze detect {command} runs in one process; launch it without torchrun (detect train and predict shard)"
        )


def _teacher_and_init(distill: str | None, init_from: str | None):
    """The teacher (any detector) and the starting detector (a single network) that --distill / --init-from name."""
    from machinegaze import zoo
    from machinegaze.detect.model import Detector

    teacher = zoo.load_detector(distill) if distill else None
    init = zoo.load_detector(init_from) if init_from else None
    if init is not None and not isinstance(init, Detector):
        raise GazeError(f"--init-from needs a single detector, and {init_from} combines several (use one member)")
    if init is not None:
        init = init.float()
    if teacher is not None:
        teacher = teacher.float()
    return teacher, init


def _as_init(cfg, s):
    """cfg with what an --init-from detector's spec fixes: its network (arch, width, dropout) and its input (size,
    JPEG policy, patch, pool)."""
    import dataclasses

    policy = dict(jpeg_quality=s.jpeg_quality or cfg.jpeg_quality, policy=s.jpeg_quality is not None)
    net = dict(arch=s.arch, size=s.size, width=s.width, dropout=s.dropout, patch=s.patch, pool=s.pool)
    return dataclasses.replace(cfg, **policy, **net)


@detect_app.command("train")
def detect_train_cmd(
    out: Path = typer.Option(..., "--out", help="detector file to write (.safetensors)"),
    train: str = typer.Option("utkface,lfw,ffhq256,stylegan1,stylegan3", "--train", help=_DETECT_SOURCES_HELP),
    arch: str = typer.Option(
        "effnet_lite0",
        "--arch",
        help="effnet_lite0 (ImageNet transfer) | smallcnn | npr (upsampling residual) | spectrum (FFT features)",
    ),
    size: int = typer.Option(128, "--size", help="input size in pixels"),
    jpeg_quality: int = typer.Option(75, "--jpeg-quality", help="JPEG quality of the preprocessing policy"),
    policy: bool = typer.Option(True, "--policy/--no-policy", help="same size + same JPEG quality for every image"),
    freeze_epochs: int = typer.Option(1, "--freeze-epochs", help="epochs training the head only"),
    epochs: int = typer.Option(3, "--epochs", help="epochs after unfreezing (discriminative LRs, one-cycle)"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: str = typer.Option("2e-3", "--lr", help="head learning rate"),
    lr_mult: float = typer.Option(
        100.0,
        "--lr-mult",
        help="discriminative LRs: the layers nearest the input get "
        "lr/lr-mult (fastai's slice(lr/mult, lr)); lower it to adapt early layers more",
    ),
    balance_sources: bool = typer.Option(
        False, "--balance-sources/--no-balance-sources", help="weight every source equally within its class"
    ),
    max_per_source: int = typer.Option(400, "--max-per-source", help="training images per source"),
    crop: Optional[int] = typer.Option(
        None, "--crop", help="train on random crops of this size (native pixels); predict sees the whole --size image"
    ),
    patch: Optional[int] = typer.Option(
        None, "--patch", help="native-resolution patches: train on patches, classify by the mean patch logit"
    ),
    augment: bool = typer.Option(
        False, "--augment/--no-augment", help="Wang et al. blur/JPEG/resize/crop augmentation while training"
    ),
    pool: int = typer.Option(1, "--pool", help="average-pool the input by 2 or 4 first: 4x or 16x cheaper, coarser"),
    width: int = typer.Option(32, "--width", help="channel width of the smallcnn / npr bodies"),
    dropout: float = typer.Option(0.2, "--dropout", help="dropout before the head (0: off)"),
    seed: int = typer.Option(0, "--seed"),
    distill: Optional[str] = typer.Option(
        None, "--distill", help="teacher detector (name or file): learn its verdicts as well as the labels"
    ),
    hard_weight: float = typer.Option(
        0.5, "--hard-weight", help="with --distill: weight of the true label in the target (the rest: the teacher's)"
    ),
    init_from: Optional[str] = typer.Option(
        None, "--init-from", help="start from this trained detector (its architecture and input settings win)"
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="face data folder (default: $GAZE_FACES or ../shared/data/faces)"
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    full: bool = typer.Option(True, "--fp16/--fp32", help="store weights as fp16"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Fine-tune a detector on the train split of the sources; calibrate it on their validation split. Under
    torchrun every process trains on its share of each batch (gradients averaged); rank 0 writes the file.
    `--distill default --init-from effnetlite0_fakeface` folds the two-network default into one network."""
    from machinegaze import checkpoints, distributed
    from machinegaze.detect.train import TrainConfig, train_detector

    if out.suffix != ".safetensors":
        raise GazeError(f"--out must end in .safetensors, got {out.name}")
    set_threads(threads)
    dev, prec = resolve(device, precision)
    teacher, init = _teacher_and_init(distill, init_from)
    cfg = TrainConfig(
        arch=arch,
        size=size,
        jpeg_quality=jpeg_quality,
        policy=policy,
        freeze_epochs=freeze_epochs,
        epochs=epochs,
        batch_size=batch_size,
        lr=parse_float(lr, "lr"),
        max_per_source=max_per_source,
        crop=crop,
        patch=patch,
        augment=augment,
        width=width,
        dropout=dropout,
        lr_mult=lr_mult,
        balance_sources=balance_sources,
        seed=seed,
        hard_weight=hard_weight,
        pool=pool,
    )
    if init is not None:  # the starting detector decides what the network is and what it sees
        cfg = _as_init(cfg, init.spec)
    world = distributed.init(dev)
    with progress_bar("train") if world.main else nullcontext() as cb:
        res = train_detector(train, cfg, data, progress=cb, device=dev, precision=prec, teacher=teacher, init=init)
    distributed.finish()
    if not world.main:
        return
    extra_meta = {**({"distilled_from": distill} if distill else {}), **({"init_from": init_from} if init_from else {})}
    checkpoints.save_detector(out, res.model, meta=_train_meta(train, cfg, res, extra_meta), half=full)
    _print_training(res, dev, world, out)


def _train_meta(train: str, cfg, res, extra: dict) -> dict:
    import dataclasses

    return {"train": train.split(","), "config": dataclasses.asdict(cfg), "history": res.history, **extra}


def _print_training(res, dev, world, out: Path) -> None:
    for h in res.history:
        extra = f"  val loss {h['val_loss']:.3f}  val acc {100 * h['val_accuracy']:.1f}%" if "val_loss" in h else ""
        print(f"epoch {h['epoch']} ({h['phase']}): train loss {h['train_loss']:.3f}{extra}")
    print(
        f"trained on {len(res.train_items)} images in {res.seconds:.0f} s on {describe(dev)}"
        + (f" x {world.size} processes" if world.on else "")
        + "; temperature "
        f"{float(res.model.temperature):.3f}, threshold {float(res.model.threshold):.3f}; wrote {out}"
    )


@detect_app.command("combine")
def detect_combine_cmd(
    model: list[str] = typer.Option(..., "--model", help="a member detector (file or name); give two or more"),
    out: Path = typer.Option(..., "--out", help="combined detector file to write (.safetensors)"),
    val: str = typer.Option(
        "utkface,lfw,ffhq256,ffhq1024,stylegan1,sd21_sdfd,sd14_blonde",
        "--val",
        help=_DETECT_SOURCES_HELP + " (their validation split)",
    ),
    max_flip: float = typer.Option(
        0.01, "--max-flip", help="per real source: share of faces called real that a later member may call fake"
    ),
    max_per_source: int = typer.Option(100000, "--max-per-source"),
    split: str = typer.Option(
        "val",
        "--split",
        help="val: the sources' validation split | all: every image (folders kept apart from training)",
    ),
    data: Optional[Path] = typer.Option(None, "--data"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Combine detectors: a face is fake when any member says so. Later members are held to at most --max-flip
    false alarms per real source on the validation split, where the combined temperature is fitted too."""
    from machinegaze import checkpoints, zoo
    from machinegaze.detect.combine import CombineConfig, combine_on_sources

    if out.suffix != ".safetensors":
        raise GazeError(f"--out must end in .safetensors, got {out.name}")
    if len(model) < 2:
        raise GazeError("give two or more --model detectors to combine")
    if split not in ("val", "all"):
        raise GazeError(f"--split must be val or all, got {split!r}")
    set_threads(threads)
    dev, prec = resolve(device, precision)
    _one_process("combine")
    members = [zoo.load_detector(m, device=dev) for m in model]
    if any(hasattr(m, "members") for m in members):
        raise GazeError("a member is itself a combined detector: combine its members instead")
    with progress_bar("combine") as cb:
        det, items = combine_on_sources(
            members, val, CombineConfig(max_flip), data, max_per_source, cb, prec, None if split == "all" else "val"
        )
    checkpoints.save_detector(
        out,
        det,
        meta={"members": list(model), "val": val.split(","), "split": split, "max_flip": max_flip, "n_val": len(items)},
    )
    offsets = ", ".join(f"{float(o):.3f}" for o in det.offsets)
    print(
        f"combined {len(members)} detectors on {len(items)} validation images: offsets {offsets}, "
        f"temperature {float(det.temperature):.3f}; wrote {out}"
    )


@detect_app.command("eval")
def detect_eval_cmd(
    model: str = typer.Option("default", "--model", help="detector file or name (default: the bundled one)"),
    test: str = typer.Option(
        "utkface,lfw,ffhq256,stylegan1,stylegan3",
        "--test",
        help=_DETECT_SOURCES_HELP + " (built-in sources: their held-out test split)",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="folder for metrics.json, predictions.csv, figures, report.html"
    ),
    max_per_source: int = typer.Option(400, "--max-per-source"),
    n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap resamples for the 95% intervals"),
    data: Optional[Path] = typer.Option(None, "--data"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Accuracy, AP, ROC AUC, confusion matrix, per-source and per-subgroup accuracy (95% CIs), calibration."""
    from machinegaze import zoo
    from machinegaze.detect import evaluate as ev
    from machinegaze.detect.sources import ImageCache, held_out, parse_sources

    set_threads(threads)
    dev, prec = resolve(device, precision)
    _one_process("eval")
    det = zoo.load_detector(model, device=dev)
    sources = parse_sources(test, data)
    items = held_out(sources, max_per_source)
    cache = ImageCache()
    with progress_bar("eval") as cb:
        res = ev.evaluate_detector(det, items, sources, cache, n_boot=n_boot, progress=cb, precision=prec)
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
        print(
            f"  {r['group']:18s} {100 * r['accuracy']:5.1f}%  [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]  n={r['n']}"
        )
    if out is not None:
        from machinegaze.detect.report import write_eval_report

        res.write(out)
        html = write_eval_report(res, out, model=det, sources=sources, cache=cache)
        print(f"wrote {out}/metrics.json, predictions.csv and {html}")


@detect_app.command("predict")
def detect_predict_cmd(
    paths: list[Path] = typer.Argument(..., help="image files and/or folders"),
    model: str = typer.Option("default", "--model", help="detector file or name (default: the bundled one)"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="CSV with one row per face: path,face,box,prob_fake,verdict (written as it goes)"
    ),
    face_check: bool = typer.Option(
        True,
        "--face-check/--no-face-check",
        help="find faces first (MTCNN) and classify each; --no-face-check: every image is one pre-cropped face",
    ),
    margin: float = typer.Option(0.4, "--margin", help="face crop: the box's long side plus this much on each side"),
    min_face: float = typer.Option(
        32.0, "--min-face", help="smallest face looked for, in pixels of the detection copy"
    ),
    detect_size: int = typer.Option(
        640, "--detect-size", help="faces are looked for on a copy shrunk to this long side; crops use every pixel"
    ),
    resume: bool = typer.Option(False, "--resume", help="skip files already in the --out CSV and append the rest"),
    batch_size: int = typer.Option(32, "--batch-size", help="images per chunk (torchrun deals whole chunks)"),
    workers: int = typer.Option(1, "--workers", help="processes decoding images and finding faces (0: this one)"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Find the faces in every image and give each a calibrated P(fake) and a verdict (by the detector's
    threshold); an image without a face gets one `no_face` row. Under torchrun every process predicts its
    share of the files and rank 0 writes the table and the CSV."""
    from rich.table import Table

    from machinegaze import distributed, zoo
    from machinegaze.detect.predict import NO_FACE, PredictConfig, run_predict
    from machinegaze.device import autocast

    set_threads(threads)
    cfg = PredictConfig(face_check, margin, min_face, detect_size, batch_size, workers)
    dev, prec = resolve(device, precision)
    world = distributed.init(dev)
    det = zoo.load_detector(model, device=dev)
    mtcnn = zoo.load_mtcnn() if face_check else None
    with progress_bar("predict") if world.main else nullcontext() as cb, autocast(dev, prec):
        run = run_predict(det, paths, cfg, out, resume, world, mtcnn, cb)
    distributed.finish()
    if run is None:  # not rank 0
        return
    rows = run.rows
    if len(rows) <= 50:
        table = Table("path", "face", "box", "P(fake)", "verdict", title=f"threshold {float(det.threshold):.3f}")
        for r in rows:
            table.add_row(*r.row()[:3], "" if r.prob_fake is None else f"{r.prob_fake:.3f}", r.verdict)
        Console().print(table)
    n_img = len({r.path for r in rows})
    n_fake = sum(r.verdict == "fake" for r in rows)
    n_none = sum(r.verdict == NO_FACE for r in rows)
    resumed = f" ({run.n_resumed} already in {out})" if run.n_resumed else ""
    print(
        f"{n_img} images{resumed}: {len(rows) - n_none} faces ({n_fake} fake, {len(rows) - n_none - n_fake} real), "
        f"{n_none} images without a face"
    )
    if out is not None:
        print(f"wrote {out}")
    if run.skipped:  # the readable images were still predicted; the exit status says not all of them were
        for _, reason in run.skipped:
            print(f"skipped: {reason}", file=sys.stderr)
        print(
            f"error: {len(run.skipped)} of {len(run.skipped) + n_img} files could not be read (listed above)",
            file=sys.stderr,
        )
        raise typer.Exit(1)


@detect_app.command("experiment")
def detect_experiment_cmd(
    file: Path = typer.Argument(..., help="experiment TOML, e.g. experiments/detect_seeds.toml"),
    out: Path = typer.Option(
        Path("runs/detect"), "--out", help="folder for results.{json,md,csv}, per-run files, models"
    ),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated experiment names to run"),
    data: Optional[Path] = typer.Option(None, "--data"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    report: bool = typer.Option(True, "--report/--no-report", help="also write report.html"),
    device: Optional[str] = DeviceOpt,
    precision: str = PrecisionOpt,
):
    """Run train/test compositions from a TOML file and print one comparison table."""
    from machinegaze.detect.experiment import markdown_tables, run_file

    set_threads(threads)
    dev, prec = resolve(device, precision)
    _one_process("experiment")
    names = [s.strip() for s in only.split(",")] if only else None
    with progress_bar("experiments") as cb:
        rows = run_file(file, out, data, names, cb, device=dev, precision=prec)
    print(markdown_tables(rows))
    if report and (out / "results.json").is_file():  # a leave-one-generator-out file writes detect_logo.*
        from machinegaze.detect.report import write_experiment_report

        print(f"wrote {write_experiment_report(out)}")


@detect_app.command("report")
def detect_report_cmd(
    run_dir: Path = typer.Argument(..., help="an experiment folder (results.json) or an eval folder (metrics.json)"),
    threads: Optional[int] = typer.Option(None, "--threads"),
):
    """(Re)build report.html with matplotlib figures from saved experiment or evaluation results."""
    from machinegaze.detect.report import write_report

    set_threads(threads)
    print(f"wrote {write_report(run_dir)}")

"""Detector reports: matplotlib figures (ROC, precision-recall, confusion matrix, reliability, per-source and
per-subgroup accuracy with CIs, top losses, Grad-CAM) in one self-contained HTML page.

Works from what evaluation and experiments save on disk (metrics.json + predictions.csv per run,
results.json per experiment, models/*.safetensors), so a report can be rebuilt without rerunning anything.
Figures that need pixels (top losses, Grad-CAM) are drawn when the images and the model are at hand.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from machinegaze import GazeError
from machinegaze.data import atomic_write_bytes, to_uint8
from machinegaze.detect import evaluate as ev
from machinegaze.detect.sources import Item, Preprocess, preprocess_of, to_tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


# ---------------------------------------------------------------- loading saved evaluations
def load_eval(run_dir: str | os.PathLike) -> ev.EvalResult:
    """An EvalResult back from metrics.json + predictions.csv (as written by EvalResult.write)."""
    d = Path(run_dir)
    mpath, ppath = d / "metrics.json", d / "predictions.csv"
    if not mpath.is_file() or not ppath.is_file():
        raise GazeError(f"{d}: not an evaluation folder (needs metrics.json and predictions.csv)")
    m = json.loads(mpath.read_text())
    items, logits = [], []
    with open(ppath, newline="") as fh:
        for row in csv.DictReader(fh):
            attrs = tuple(tuple(kv.split("=", 1)) for kv in row.get("attrs", "").split(";") if "=" in kv)
            items.append(Item(row["path"], 1 if row["label"] == "fake" else 0, row["source"], row["path"], attrs))
            logits.append(float(row["logit"]))
    return ev.EvalResult(
        items,
        np.array(logits),
        float(m["temperature"]),
        float(m["threshold"]),
        m["summary"],
        m["per_source"],
        m["per_subgroup"],
        m.get("preprocess") or {},
    )


# ---------------------------------------------------------------- figures from predictions
def fig_roc_pr(res: ev.EvalResult):
    plt = _plt()
    y, p = res.labels, np.asarray(res.logits, dtype=np.float64)  # ranking by logit: probabilities can saturate
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = ev.roc_curve(y, p)
        a.plot(fpr, tpr, lw=2, label=f"AUC {ev.roc_auc(y, p):.3f}")
        prec, rec, _ = ev.precision_recall_curve(y, p)
        b.step(np.r_[0, rec], np.r_[prec[0], prec], where="post", lw=2, label=f"AP {ev.average_precision(y, p):.3f}")
        b.axhline(y.mean(), color="grey", ls=":", label="chance")
    a.plot([0, 1], [0, 1], color="grey", ls=":")
    a.set(xlabel="false-positive rate (real called fake)", ylabel="true-positive rate (fakes caught)", title="ROC")
    b.set(xlabel="recall (fakes caught)", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    a.legend(loc="lower right")
    b.legend(loc="lower left")
    return fig


def fig_confusion(res: ev.EvalResult):
    """fastai-style confusion matrix: counts, rows = actual, columns = predicted."""
    plt = _plt()
    cm = np.array(res.summary["confusion"])
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    ax.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
                fontsize=13,
            )
    ax.set_xticks([0, 1], ["real", "fake"])
    ax.set_yticks([0, 1], ["real", "fake"])
    ax.set(xlabel="predicted", ylabel="actual", title=f"confusion (threshold {res.threshold:.2f})")
    return fig


def fig_reliability(res: ev.EvalResult):
    plt = _plt()
    y = res.labels
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for prob, name in ((ev.sigmoid(res.logits), "uncalibrated"), (res.prob, f"T = {res.temperature:.2f}")):
        mp, fy, cnt = ev.reliability_bins(y, prob)
        m = cnt > 0
        ece = ev.expected_calibration_error(y, prob)
        ax.plot(mp[m], fy[m], "o-", label=f"{name} (ECE {100 * ece:.1f}%)")
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set(xlabel="predicted P(fake)", ylabel="observed fraction fake", title="reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return fig


def fig_group_accuracy(rows: Sequence[dict], title: str):
    """Horizontal bars of accuracy with 95 % bootstrap intervals, one per group."""
    plt = _plt()
    rows = list(rows)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    if rows:
        yv = np.arange(len(rows))
        acc = np.array([r["accuracy"] for r in rows])
        lo = np.array([r["ci"][0] for r in rows])
        hi = np.array([r["ci"][1] for r in rows])
        colors = ["tab:red" if r["n_fake"] == r["n"] else "tab:blue" for r in rows]
        ax.barh(yv, acc, color=colors, alpha=0.6)
        ax.errorbar(acc, yv, xerr=[acc - lo, hi - acc], fmt="none", ecolor="black", capsize=3)
        ax.set_yticks(yv, [f"{r['group']} (n={r['n']})" for r in rows], fontsize=8)
        ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="accuracy (95% bootstrap CI); blue = real faces, red = fakes", title=title)
    return fig


def fig_history(history: Sequence[dict]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    if all("val_loss" in h for h in history):
        ax.plot(ep, [h["val_loss"] for h in history], "o-", label="val loss")
    n_frozen = sum(h["phase"] == "frozen" for h in history)
    if n_frozen:
        ax.axvline(n_frozen + 0.5, color="grey", ls=":", label="unfreeze")
    ax.set(xlabel="epoch", ylabel="BCE", title="training")
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- figures that need pixels
def _images(items: Sequence[Item], pre: Preprocess, sources=None, cache=None) -> np.ndarray | None:
    from machinegaze.detect.sources import ImageCache

    if any(it.seed is not None for it in items) and not sources:
        return None
    try:
        return (cache or ImageCache()).arrays(list(items), pre, sources)
    except GazeError:
        return None  # images moved or unreadable: the report goes on without pixels


def fig_top_losses(res: ev.EvalResult, images: np.ndarray, idx: np.ndarray):
    """The most confidently wrong images, titled actual / predicted / P(fake) / loss (fastai's view)."""
    plt = _plt()
    y, p = res.labels, res.prob
    loss = ev.losses(y, p)
    n = len(idx)
    cols = min(6, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        ax.imshow(images[i])
        pred = "fake" if p[i] >= res.threshold else "real"
        ax.set_title(
            f"{'fake' if y[i] else 'real'}/{pred} p={p[i]:.2f}\nloss {loss[i]:.2f} {res.items[i].source}", fontsize=7
        )
    fig.suptitle("top losses (actual/predicted, P(fake), loss, source)", fontsize=9)
    return fig


def fig_grad_cam(model, images: np.ndarray, titles: Sequence[str]):
    """Each image with its Grad-CAM for the 'fake' logit overlaid (where the detector looks)."""
    plt = _plt()
    x = to_tensor(images)
    overlay = to_uint8(ev.cam_overlay(x, ev.grad_cam(model, x, target=1)))
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.0), squeeze=False)
    for k in range(n):
        axes[0, k].imshow(images[k])
        axes[0, k].set_title(titles[k], fontsize=7)
        axes[1, k].imshow(overlay[k])
        axes[0, k].axis("off")
        axes[1, k].axis("off")
    fig.suptitle("Grad-CAM of the 'fake' logit (top: input as the detector sees it; bottom: heat map)", fontsize=9)
    return fig


def pixel_figures(
    res: ev.EvalResult, model=None, sources=None, cache=None, k_losses: int = 12, k_cam: int = 8
) -> dict[str, bytes]:
    """Top-losses grid (needs the images) and Grad-CAM panel (needs the model too), as PNG bytes."""
    out: dict[str, bytes] = {}
    if not res.items:
        return out
    if getattr(model, "spec", None) is not None:
        pre = preprocess_of(model)
    elif res.preprocess:
        pre = Preprocess(int(res.preprocess["size"]), res.preprocess.get("jpeg_quality"))
    else:
        pre = Preprocess()
    idx = ev.top_losses(res.labels, res.prob, k_losses)
    imgs = _images([res.items[i] for i in idx], pre, sources, cache)
    if imgs is None:
        return out
    full = np.zeros((len(res.items),) + imgs.shape[1:], np.uint8)
    full[idx] = imgs
    out["top_losses.png"] = _png(fig_top_losses(res, full, idx))
    if model is not None:
        y, p = res.labels, res.prob
        # Half confidently caught fakes, half the worst mistakes: what the detector keys on, right and wrong.
        fakes = np.nonzero(y == 1)[0]
        caught = fakes[np.argsort(-p[fakes])][: k_cam // 2]
        pick = np.r_[caught, idx[: k_cam - len(caught)]].astype(int)
        cam_imgs = _images([res.items[i] for i in pick], pre, sources, cache)
        if cam_imgs is not None and len(pick):
            titles = [f"{'fake' if y[i] else 'real'} p={p[i]:.2f}\n{res.items[i].source}" for i in pick]
            out["grad_cam.png"] = _png(fig_grad_cam(model, cam_imgs, titles))
    return out


# ---------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;margin:4px}h2{border-bottom:1px solid #ddd;margin-top:2em}
.note{color:#555;font-size:13px}"""


def _page(title: str, body: str) -> bytes:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    ).encode()


def _fmt_ci(v: float, ci: Sequence[float], pct: bool = True) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    f = (lambda t: f"{100 * t:.1f}") if pct else (lambda t: f"{t:.3f}")
    return f"{f(v)} [{f(ci[0])}, {f(ci[1])}]"


def _summary_table(s: dict) -> str:
    rows = [
        ("images (real / fake)", f"{s['n']} ({s['n_real']} / {s['n_fake']})"),
        ("accuracy %", _fmt_ci(s["accuracy"], s["accuracy_ci"])),
        ("balanced accuracy %", _fmt_ci(s["balanced_accuracy"], s["balanced_accuracy_ci"])),
        ("accuracy on real %", _fmt_ci(s["accuracy_real"], s["accuracy_real_ci"])),
        ("accuracy on fakes %", _fmt_ci(s["accuracy_fake"], s["accuracy_fake_ci"])),
        ("ROC AUC", _fmt_ci(s["roc_auc"], s["roc_auc_ci"], False)),
        ("average precision", _fmt_ci(s["average_precision"], s["average_precision_ci"], False)),
        ("ECE % (calibrated / raw)", f"{100 * s['ece']:.1f} / {100 * s.get('ece_uncalibrated', float('nan')):.1f}"),
    ]
    return (
        "<table>"
        + "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td></tr>" for a, b in rows)
        + "</table>"
    )


def eval_section(
    res: ev.EvalResult, pixels: dict[str, bytes] | None = None, history: Sequence[dict] | None = None
) -> str:
    parts = [
        _summary_table(res.summary),
        f"<p class='note'>threshold {res.threshold:.3f} on calibrated P(fake) (temperature {res.temperature:.3f}), "
        "both fitted on the validation split; intervals are 95% bootstrap (1000 resamples, stratified by label).</p>",
        _img_tag(_png(fig_roc_pr(res)), "ROC and PR"),
        _img_tag(_png(fig_confusion(res)), "confusion"),
        _img_tag(_png(fig_reliability(res)), "reliability"),
    ]
    if history:
        parts.append(_img_tag(_png(fig_history(history)), "training"))
    parts.append(_img_tag(_png(fig_group_accuracy(res.per_source, "accuracy per source")), "per source"))
    if res.per_subgroup:
        parts.append(
            _img_tag(_png(fig_group_accuracy(res.per_subgroup, "accuracy per subgroup (n >= 10)")), "per subgroup")
        )
    for name in ("top_losses.png", "grad_cam.png"):
        if pixels and name in pixels:
            parts.append(_img_tag(pixels[name], name))
    return "\n".join(parts)


def write_eval_report(
    res: ev.EvalResult,
    out_dir: str | os.PathLike,
    model=None,
    sources=None,
    cache=None,
    title: str = "machinegaze detector evaluation",
) -> Path:
    """report.html (+ top_losses.png / grad_cam.png when pixels are available) into out_dir."""
    out = Path(out_dir)
    pixels = pixel_figures(res, model, sources, cache)
    for name, png in pixels.items():
        atomic_write_bytes(out / name, png)
    path = out / "report.html"
    atomic_write_bytes(path, _page(title, eval_section(res, pixels)))
    return path


def write_experiment_report(run_dir: str | os.PathLike, pixels: bool = True) -> Path:
    """report.html for an experiment folder: the comparison tables, then one section per run."""
    from machinegaze.detect.experiment import markdown_tables

    d = Path(run_dir)
    rpath = d / "results.json"
    if not rpath.is_file():
        raise GazeError(f"{d}: no results.json (run `gaze detect experiment` first)")
    rows = json.loads(rpath.read_text())["rows"]
    body = [
        f"<pre>{html.escape(markdown_tables(rows))}</pre>",
        _img_tag(_png(fig_experiment_overview(rows)), "overview"),
    ]
    models: dict[str, object] = {}
    for r in rows:
        res = load_eval(d / r["run"])
        model = None
        mfile = d / "models" / f"{r['model']}.safetensors"
        if pixels and mfile.is_file():
            from machinegaze import checkpoints

            model = models.setdefault(r["model"], checkpoints.load_detector(mfile))
        pix = pixel_figures(res, model) if pixels else {}
        body.append(
            f"<h2>{html.escape(r['run'])}: {html.escape(r.get('title', ''))}</h2>"
            f"<p class='note'>train: {html.escape(', '.join(r['train']))} ({r['n_train']} images); "
            f"test: {html.escape(', '.join(r['test']))}; arch {r['arch']}; policy {'on' if r['policy'] else 'off'}</p>"
        )
        body.append(eval_section(res, pix, r.get("history")))
    path = d / "report.html"
    atomic_write_bytes(path, _page("machinegaze detector experiments", "\n".join(body)))
    return path


def fig_experiment_overview(rows: Sequence[dict]):
    """Accuracy on real, accuracy on fakes and ROC AUC per run, with 95 % intervals."""
    plt = _plt()
    names = [f"{r['experiment']} ({'policy' if r['policy'] else 'no policy'})" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.35 * len(rows) + 1.5), sharey=True)
    for ax, (key, label) in zip(
        axes, (("accuracy_real", "accuracy on real"), ("accuracy_fake", "accuracy on fakes"), ("roc_auc", "ROC AUC"))
    ):
        v = np.array([r[key] for r in rows], dtype=float)
        lo = np.array([r[key + "_ci"][0] for r in rows], dtype=float)
        hi = np.array([r[key + "_ci"][1] for r in rows], dtype=float)
        yv = np.arange(len(rows))
        ok = np.isfinite(v)
        ax.errorbar(v[ok], yv[ok], xerr=[v[ok] - lo[ok], hi[ok] - v[ok]], fmt="o", capsize=3)
        ax.set(xlim=(0, 1.02), title=label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(len(rows)), names, fontsize=8)
    axes[0].invert_yaxis()
    return fig


def write_report(run_dir: str | os.PathLike) -> Path:
    """Rebuild report.html for an experiment folder (results.json) or an evaluation folder (metrics.json)."""
    d = Path(run_dir)
    if (d / "results.json").is_file():
        return write_experiment_report(d)
    if (d / "metrics.json").is_file():
        res = load_eval(d)
        pixels = {n: (d / n).read_bytes() for n in ("top_losses.png", "grad_cam.png") if (d / n).is_file()}
        if not pixels:
            pixels = pixel_figures(res)
        path = d / "report.html"
        atomic_write_bytes(path, _page("machinegaze detector evaluation", eval_section(res, pixels)))
        return path
    raise GazeError(f"{d}: neither an experiment folder (results.json) nor an evaluation folder (metrics.json)")

"""Leave-one-generator-out (LOGO): does a detector catch fakes from a generator it never saw?

For each generator left out (and "none": trained on every generator), for each representation, train on the
reals plus every other generator, calibrate on their validation split, and test on

* the left-out generator: all of its images (capped), none ever trained on;
* held-out reals: the identity-disjoint test split of every real source;
* the generators it did train on: their test split.

Ensembles average the members' calibrated logits (logit / temperature); their threshold is fitted on the
validation split like a single detector's. Accuracies carry 95 % Wilson score intervals.

    [logo]
    reals = ["utkface", "lfw", "ffhq256"]
    generators = ["stylegan1", "stylegan3", "sd21_sdfd", "sd14_blonde"]
    held_out = ["stylegan1", "stylegan3", "sd21_sdfd", "sd14_blonde", "none"]
    ensembles = [["npr", "spectrum"]]

    [defaults]          # TrainConfig fields shared by every representation
    size = 256

    [[representation]]  # a name and its TrainConfig overrides
    name = "npr"
    arch = "npr"
    patch = 64

Every (fold, representation) run is saved as it finishes (`runs/FOLD__REP.npz`) and skipped when the file is
there, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from machinegaze import GazeError
from machinegaze.data import atomic_write_bytes
from machinegaze.detect import evaluate as ev
from machinegaze.detect.sources import REAL, ImageCache, Item, gather, parse_sources, select
from machinegaze.detect.train import TrainConfig, train_detector
from machinegaze.progress import ProgressFn, report

NONE = "none"  # the fold that leaves no generator out


@dataclass(frozen=True)
class LogoPlan:
    reals: tuple[str, ...]
    generators: tuple[str, ...]
    held_out: tuple[str, ...]
    representations: tuple[tuple[str, TrainConfig], ...]
    ensembles: tuple[tuple[str, ...], ...] = ()
    baseline: str | None = None  # a saved detector (e.g. "default", the bundled one) scored on the "none" fold


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n ((nan, nan) when n = 0)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, mid - half), min(1.0, mid + half))


def _names(v, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise GazeError(f"{where}: expected a list of names")
    return tuple(v)


def logo_plan_from_dict(doc: dict, where: str = "logo") -> LogoPlan:
    """Parse a LOGO TOML document (sections [logo], [defaults], [[representation]]); one GazeError per mistake."""
    unknown = set(doc) - {"logo", "defaults", "representation"}
    if unknown:
        raise GazeError(f"{where}: unknown section(s) {sorted(unknown)}")
    lg = dict(doc["logo"])
    bad = set(lg) - {"reals", "generators", "held_out", "ensembles", "baseline"}
    if bad:
        raise GazeError(f"{where}: unknown key(s) in [logo]: {sorted(bad)}")
    reals = _names(lg.get("reals"), f"{where} [logo] reals")
    gens = _names(lg.get("generators"), f"{where} [logo] generators")
    held = _names(lg.get("held_out", [*gens, NONE]), f"{where} [logo] held_out")
    if set(held) - set(gens) - {NONE}:
        raise GazeError(f"{where}: held_out names {sorted(set(held) - set(gens) - {NONE})} are not generators")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    defaults = dict(doc.get("defaults", {}))
    reps = []
    for r in doc.get("representation", []):
        r = dict(r)
        name = r.pop("name", None)
        if not name or set(r) - fields or set(defaults) - fields:
            raise GazeError(f"{where}: representation {name!r}: needs a name and TrainConfig fields only")
        try:
            reps.append((str(name), TrainConfig(**{**defaults, **r})))
        except TypeError as e:
            raise GazeError(f"{where}: representation {name}: {e}") from None
    if not reps:
        raise GazeError(f"{where}: no [[representation]] entries")
    names = [n for n, _ in reps]
    ens = tuple(_names(e, f"{where} [logo] ensembles") for e in lg.get("ensembles", []))
    for e in ens:
        if len(e) < 2 or set(e) - set(names):
            raise GazeError(f"{where}: ensemble {list(e)} must name two or more representations of {names}")
    base = lg.get("baseline")
    return LogoPlan(reals, gens, held, tuple(reps), ens, str(base) if base else None)


# ---------------------------------------------------------------- one fold
def fold_test_items(plan: LogoPlan, fold: str, cfg: TrainConfig, data_root=None) -> list[Item]:
    """Held-out reals (test split), the left-out generator (all of it) and trained generators (test split)."""
    items = gather(parse_sources(list(plan.reals), data_root), "test", cfg.split_cap("test"), cfg.seed)
    for g in plan.generators:
        (src,) = parse_sources([g], data_root)
        items += select(src.items(), None if g == fold else "test", cfg.split_cap("test"), cfg.seed)
    return items


def _run_one(plan: LogoPlan, fold: str, cfg: TrainConfig, cache: ImageCache, data_root, progress) -> dict:
    gens = [g for g in plan.generators if g != fold]
    sources = parse_sources([*plan.reals, *gens], data_root)
    res = train_detector(sources, cfg, data_root, cache, progress)
    all_sources = parse_sources([*plan.reals, *plan.generators], data_root)
    pre = cfg.preprocess
    val_logits = ev.predict_logits(res.model, cache.arrays(res.val_items, pre, all_sources))
    test = fold_test_items(plan, fold, cfg, data_root)
    test_logits = ev.predict_logits(res.model, cache.arrays(test, pre, all_sources, progress))
    return {
        "val_keys": [_key(it) for it in res.val_items],
        "val_y": np.array([it.label for it in res.val_items]),
        "val_logits": val_logits,
        "test_keys": [_key(it) for it in test],
        "test_logits": test_logits,
        "temperature": float(res.model.temperature),
        "threshold": float(res.model.threshold),
        "seconds": res.seconds,
        "n_train": len(res.train_items),
    }


def _baseline_run(plan: LogoPlan, cache: ImageCache, data_root, progress) -> dict:
    """The saved detector `plan.baseline` on the "none" fold's test images, with its own preprocessing."""
    from machinegaze import zoo
    from machinegaze.detect.sources import preprocess_of

    model = zoo.load_detector(plan.baseline)
    test = fold_test_items(plan, NONE, plan.representations[0][1], data_root)
    sources = parse_sources([*plan.reals, *plan.generators], data_root)
    logits = ev.predict_logits(model, cache.arrays(test, preprocess_of(model), sources, progress))
    return {
        "val_keys": np.array([], dtype=str),
        "val_y": np.zeros(0),
        "val_logits": np.zeros(0),
        "test_keys": [_key(it) for it in test],
        "test_logits": logits,
        "temperature": float(model.temperature),
        "threshold": float(model.threshold),
        "seconds": 0.0,
        "n_train": 0,
    }


def run_path(out: Path, fold: str, rep: str) -> Path:
    """Where one (fold, representation) run is saved; source specs such as 'fake:/a/b' become file-safe."""
    return out / "runs" / re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{fold}__{rep}.npz")


def _key(it: Item) -> str:
    return f"{it.path}#{it.seed}" if it.seed is not None else it.path


def _save_run(path: Path, run: dict) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in run.items()})
    atomic_write_bytes(path, buf.getvalue())


def _load_run(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        run = {k: z[k] for k in z.files}
    for k in ("temperature", "threshold", "seconds", "n_train"):
        run[k] = float(run[k])
    run["val_keys"], run["test_keys"] = list(run["val_keys"]), list(run["test_keys"])
    return run


# ---------------------------------------------------------------- scoring
def ensemble_run(runs: list[dict]) -> dict:
    """Mean calibrated logit of the members (aligned by image), with temperature/threshold fitted on val."""
    val = np.mean([r["val_logits"] / r["temperature"] for r in runs], axis=0)
    test = np.mean([r["test_logits"] / r["temperature"] for r in runs], axis=0)
    for r in runs[1:]:
        if list(r["test_keys"]) != list(runs[0]["test_keys"]) or list(r["val_keys"]) != list(runs[0]["val_keys"]):
            raise GazeError("ensemble members were evaluated on different images (use one seed, size and caps)")
    cal = ev.calibrate(val, runs[0]["val_y"])
    return {
        **runs[0],
        "val_logits": val,
        "test_logits": test,
        "temperature": cal.temperature,
        "threshold": cal.threshold,
        "seconds": sum(r["seconds"] for r in runs),
    }


def _acc(correct: np.ndarray) -> dict:
    k, n = int(correct.sum()), int(len(correct))
    lo, hi = wilson(k, n)
    return {"accuracy": k / n if n else float("nan"), "ci": [lo, hi], "n": n}


def score_run(plan: LogoPlan, fold: str, rep: str, run: dict, items: list[Item]) -> dict:
    """Accuracy (Wilson CIs) on the left-out generator, on held-out reals, per source and per real subgroup."""
    by_key = {_key(it): it for it in items}
    its = [by_key[k] for k in run["test_keys"]]
    y = np.array([it.label for it in its])
    z = np.asarray(run["test_logits"], dtype=np.float64)
    prob = ev.sigmoid(z / run["temperature"])
    correct = (prob >= run["threshold"]).astype(int) == y
    src = np.array([it.source for it in its])
    reals = y == REAL
    row = {
        "held_out": fold,
        "representation": rep,
        "n_train": int(run["n_train"]),
        "seconds": run["seconds"],
        "temperature": run["temperature"],
        "threshold": run["threshold"],
        "reals": _acc(correct[reals]),
        "per_source": {str(s): _acc(correct[src == s]) for s in dict.fromkeys(src)},
    }
    if fold != NONE:
        m = src == fold
        row["held_out_generator"] = _acc(correct[m])
        row["held_out_auc"] = ev.roc_auc(np.r_[y[m], y[reals]], np.r_[z[m], z[reals]])
        row["held_out_auc_by_real"] = {
            str(s): ev.roc_auc(np.r_[y[m], y[src == s]], np.r_[z[m], z[src == s]]) for s in dict.fromkeys(src[reals])
        }
    row["subgroups"] = _subgroups(its, correct)
    return row


def _subgroups(items: list[Item], correct: np.ndarray, min_n: int = 5) -> dict:
    """Accuracy on real faces by attribute ('utkface race=Black', ...), plus the blonde-woman trap."""
    groups: dict[str, list[bool]] = {}
    for it, c in zip(items, correct):
        if it.label != REAL:
            continue
        a = dict(it.attrs)
        keys = [f"{it.source} {k}={v}" for k, v in it.attrs]
        if a.get("gender") == "female" and "hair" in a:
            keys.append(f"{it.source} women, " + ("blond hair" if a["hair"] == "blond" else "other hair"))
        for k in keys:
            groups.setdefault(k, []).append(bool(c))
    return {k: _acc(np.array(v)) for k, v in sorted(groups.items()) if len(v) >= min_n}


# ---------------------------------------------------------------- the whole plan
def run_logo(
    plan: LogoPlan, out_dir: str | os.PathLike, data_root=None, progress: ProgressFn = None, only=None
) -> list[dict]:
    """Every fold x representation (resuming from saved runs), then ensembles; write detect_logo.json/.md."""
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    cache = ImageCache()
    folds = [f for f in plan.held_out if not only or f in only]
    todo = [(f, name, cfg) for f in folds for name, cfg in plan.representations]
    rows: list[dict] = []
    for i, (fold, name, cfg) in enumerate(todo):
        report(progress, i, len(todo), stage="logo", fold=fold, representation=name)
        path = run_path(out, fold, name)
        if not path.is_file():
            _save_run(path, _run_one(plan, fold, cfg, cache, data_root, progress))
        rows = collect(plan, out, data_root)
        write_logo(out, rows)
    if plan.baseline and NONE in folds:
        path = run_path(out, NONE, "baseline")
        if not path.is_file():
            _save_run(path, _baseline_run(plan, cache, data_root, progress))
        rows = collect(plan, out, data_root)
        write_logo(out, rows)
    report(progress, len(todo), len(todo), stage="logo")
    return rows


def collect(plan: LogoPlan, out: Path, data_root=None) -> list[dict]:
    """Score every saved run (and every ensemble whose members are all there)."""
    rows = []
    for fold in plan.held_out:
        runs = {}
        for name, _cfg in plan.representations:
            p = run_path(out, fold, name)
            if p.is_file():
                runs[name] = _load_run(p)
        if not runs:
            continue
        cfg0 = plan.representations[0][1]
        items = fold_test_items(plan, fold, cfg0, data_root)
        for name, run in runs.items():
            rows.append(score_run(plan, fold, name, run, items))
        for ens in plan.ensembles:
            if all(m in runs for m in ens):
                rows.append(score_run(plan, fold, "+".join(ens), ensemble_run([runs[m] for m in ens]), items))
        base = run_path(out, fold, "baseline")
        if fold == NONE and plan.baseline and base.is_file():
            rows.append(score_run(plan, fold, f"baseline ({plan.baseline})", _load_run(base), items))
    return rows


def _fmt(a: dict | None) -> str:
    if not a or not a["n"]:
        return "–"
    return f"{100 * a['accuracy']:.1f} [{100 * a['ci'][0]:.1f}, {100 * a['ci'][1]:.1f}] (n={a['n']})"


def logo_markdown(rows: list[dict]) -> str:
    """The LOGO table (left-out generator and held-out reals) and the all-generator per-source table."""
    lines = [
        "| left out | representation | acc. on left-out generator | AUC vs reals | AUC vs FFHQ reals "
        "| acc. on held-out reals |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["held_out"] != NONE:
            lines.append(
                f"| {r['held_out']} | {r['representation']} | {_fmt(r['held_out_generator'])} | "
                f"{r['held_out_auc']:.3f} | {r['held_out_auc_by_real'].get('ffhq256', float('nan')):.3f} | "
                f"{_fmt(r['reals'])} |"
            )
    alls = [r for r in rows if r["held_out"] == NONE]
    if alls:
        srcs = list(dict.fromkeys(s for r in alls for s in r["per_source"]))
        lines += [
            "",
            "Trained on every generator (identity-disjoint test splits):",
            "",
            "| representation | " + " | ".join(srcs) + " |",
            "|---|" + "---|" * len(srcs),
        ]
        for r in alls:
            lines.append(f"| {r['representation']} | " + " | ".join(_fmt(r["per_source"].get(s)) for s in srcs) + " |")
        lines += ["", *bias_markdown(alls)]
    lines += ["", *blonde_trap_markdown(rows)]
    return "\n".join(lines) + "\n"


def bias_markdown(rows: list[dict]) -> list[str]:
    """Accuracy on real faces by subgroup (one column per row, i.e. per representation)."""
    keys = list(dict.fromkeys(k for r in rows for k in r["subgroups"]))
    lines = [
        "Real faces by subgroup, trained on every generator (accuracy %, 95 % Wilson CI):",
        "",
        "| subgroup | " + " | ".join(r["representation"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(r["subgroups"].get(k)) for r in rows) + " |")
    return lines


def blonde_trap_markdown(rows: list[dict]) -> list[str]:
    """Real FFHQ women with blond vs other hair, with and without sd14_blonde ('blonde woman') in training."""
    b, o = "ffhq256 women, blond hair", "ffhq256 women, other hair"
    lines = [
        "The blonde-woman trap: real FFHQ women called real (%, 95 % Wilson CI), by training set:",
        "",
        "| left out | representation | blond hair | other hair |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if b in r["subgroups"] or o in r["subgroups"]:
            lines.append(
                f"| {r['held_out']} | {r['representation']} | {_fmt(r['subgroups'].get(b))} | "
                f"{_fmt(r['subgroups'].get(o))} |"
            )
    return lines if len(lines) > 4 else []


def write_logo(out: Path, rows: list[dict]) -> None:
    atomic_write_bytes(out / "detect_logo.json", json.dumps({"rows": rows}, indent=1).encode())
    atomic_write_bytes(out / "detect_logo.md", logo_markdown(rows).encode())

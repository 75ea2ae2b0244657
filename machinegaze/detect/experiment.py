"""Detector experiments as data: a TOML file lists train/test compositions; one run gives one comparison table.

    [defaults]                  # any TrainConfig field, plus n_boot and policies
    epochs = 3
    policies = [true, false]    # run every experiment with and without the preprocessing policy

    [[experiment]]
    name = "E1"
    title = "non-FFHQ real vs StyleGAN fakes"
    train = ["utkface", "lfw", "stylegan1", "stylegan3"]
    test = ["utkface", "lfw", "stylegan1", "stylegan3"]
    table = "main"              # or "cross-generator"; rows are grouped into tables by this key
    arch = "smallcnn"           # optional per-experiment overrides of TrainConfig fields

Experiments with the same training composition and settings share one trained detector (E3 evaluates E1's
detector on FFHQ). Test images are always the held-out test split of each test source, so a source that is
both trained and tested on contributes different identities to each side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from machinegaze import GazeError
from machinegaze.data import atomic_write_bytes
from machinegaze.detect import evaluate as ev
from machinegaze.detect.sources import FAKE, REAL, ImageCache, held_out, parse_sources
from machinegaze.detect.train import TrainConfig, TrainResult, train_detector
from machinegaze.progress import ProgressFn, report

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_EXPERIMENT_KEYS = {"name", "title", "train", "test", "table", "policies"} | _TRAIN_FIELDS


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    title: str = ""
    table: str = "main"
    policies: tuple[bool, ...] = (True, False)
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class ExperimentPlan:
    defaults: TrainConfig
    experiments: tuple[ExperimentSpec, ...]
    n_boot: int = 1000


def _str_list(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
        raise GazeError(f"{where}: expected a non-empty list of source names")
    return tuple(v)


def load_plan(path: str | os.PathLike) -> ExperimentPlan:
    """Parse and check an experiment TOML file (every mistake is one GazeError line)."""
    p = Path(path)
    if not p.is_file():
        raise GazeError(f"no such experiment file: {p}")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise GazeError(f"{p}: not valid TOML ({e})") from None
    return plan_from_dict(doc, str(p))


def plan_from_dict(doc: dict, where: str = "experiments") -> ExperimentPlan:
    unknown_top = set(doc) - {"defaults", "experiment"}
    if unknown_top:
        raise GazeError(f"{where}: unknown section(s) {sorted(unknown_top)} (use [defaults] and [[experiment]])")
    d = dict(doc.get("defaults", {}))
    n_boot = int(d.pop("n_boot", 1000))
    policies = d.pop("policies", [True, False])
    bad = set(d) - _TRAIN_FIELDS
    if bad:
        raise GazeError(f"{where}: unknown setting(s) in [defaults]: {sorted(bad)} (known: {sorted(_TRAIN_FIELDS)})")
    try:
        defaults = TrainConfig(**d)
    except TypeError as e:
        raise GazeError(f"{where}: bad [defaults]: {e}") from None
    exps = []
    raw = doc.get("experiment", [])
    if not isinstance(raw, list) or not raw:
        raise GazeError(f"{where}: no [[experiment]] entries")
    for i, e in enumerate(raw):
        w = f"{where}: experiment #{i + 1}"
        if "name" not in e:
            raise GazeError(f"{w}: missing 'name'")
        bad = set(e) - _EXPERIMENT_KEYS
        if bad:
            raise GazeError(f"{w} ({e['name']}): unknown key(s) {sorted(bad)}")
        pol = e.get("policies", policies)
        if not isinstance(pol, list) or not pol or not all(isinstance(b, bool) for b in pol):
            raise GazeError(f"{w}: 'policies' must be a list of true/false")
        ov = tuple(sorted((k, v) for k, v in e.items() if k in _TRAIN_FIELDS and k != "policy"))
        exps.append(
            ExperimentSpec(
                str(e["name"]),
                _str_list(e.get("train"), f"{w} train"),
                _str_list(e.get("test"), f"{w} test"),
                str(e.get("title", "")),
                str(e.get("table", "main")),
                tuple(pol),
                ov,
            )
        )
    names = [x.name for x in exps]
    if len(set(names)) != len(names):
        raise GazeError(f"{where}: experiment names must be unique")
    return ExperimentPlan(defaults, tuple(exps), n_boot)


def _config_for(plan: ExperimentPlan, exp: ExperimentSpec, policy: bool) -> TrainConfig:
    try:
        return dataclasses.replace(plan.defaults, policy=policy, **dict(exp.overrides))
    except TypeError as e:
        raise GazeError(f"experiment {exp.name}: bad setting ({e})") from None


def _model_key(train: tuple[str, ...], cfg: TrainConfig) -> str:
    blob = json.dumps([sorted(train), dataclasses.asdict(cfg)], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def per_source_auc(result: ev.EvalResult) -> dict[str, float]:
    """For each test source: AUC of that source against all test images of the other class.

    For a fake source this is how well its fakes are told from the real test faces, independent of the
    threshold; for a real source, how well its faces are told from the fakes.
    """
    y = result.labels
    p = np.asarray(result.logits, dtype=np.float64)  # logits, not probabilities: those can saturate into ties
    src = np.array([it.source for it in result.items], dtype=object)
    out = {}
    for s in sorted(set(src)):
        m = src == s
        label = int(y[m][0])
        other = y != label
        yy = np.r_[y[m], y[other]]
        pp = np.r_[p[m], p[other]]
        out[s] = ev.roc_auc(yy, pp) if other.any() else float("nan")
    return out


def run_plan(
    plan: ExperimentPlan,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    only: list[str] | None = None,
    progress: ProgressFn = None,
    save_models: bool = True,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list[dict]:
    """Run every (experiment, policy) of the plan, training and testing on `device` at `precision`; write
    results.json / results.md / results.csv into out_dir."""
    from machinegaze import checkpoints

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exps = [e for e in plan.experiments if not only or e.name in only]
    if only and len(exps) != len(set(only)):
        missing = sorted(set(only) - {e.name for e in exps})
        raise GazeError(f"no experiment named {', '.join(missing)} in the plan")
    # Check every source name before spending any time on training.
    for e in exps:
        parse_sources(list(e.train), data_root)
        parse_sources(list(e.test), data_root)
    cache = ImageCache()
    trained: dict[str, TrainResult] = {}
    rows: list[dict] = []
    runs = [(e, pol) for e in exps for pol in e.policies]
    for k, (e, pol) in enumerate(runs):
        cfg = _config_for(plan, e, pol)
        key = _model_key(e.train, cfg)
        report(progress, k, len(runs), stage="experiment", name=e.name, policy=pol)
        if key not in trained:
            tr_sources = parse_sources(list(e.train), data_root)
            trained[key] = train_detector(tr_sources, cfg, data_root, cache, progress, device, precision)
            if save_models:
                checkpoints.save_detector(
                    out / "models" / f"{key}.safetensors",
                    trained[key].model,
                    meta={"train": list(e.train), "config": dataclasses.asdict(cfg), "history": trained[key].history},
                )
        res = trained[key]
        te_sources = parse_sources(list(e.test), data_root)
        items = held_out(te_sources, cfg.split_cap("test"), cfg.seed)
        result = ev.evaluate_detector(
            res.model, items, te_sources, cache, n_boot=plan.n_boot, progress=progress, precision=precision
        )
        run_name = f"{e.name}-{'policy' if pol else 'nopolicy'}"
        result.write(out / run_name)
        s = result.summary
        rows.append(
            {
                "experiment": e.name,
                "title": e.title,
                "table": e.table,
                "policy": pol,
                "arch": cfg.arch,
                "train": list(e.train),
                "test": list(e.test),
                "model": key,
                "run": run_name,
                "n_train": len(res.train_items),
                "n_val": len(res.val_items),
                "n_test": s["n"],
                "n_test_real": s["n_real"],
                "n_test_fake": s["n_fake"],
                "train_seconds": res.seconds,
                "train_images_per_s": res.images_per_s,
                "temperature": result.temperature,
                "threshold": result.threshold,
                **{
                    m: s[m]
                    for m in (
                        "accuracy",
                        "accuracy_ci",
                        "balanced_accuracy",
                        "balanced_accuracy_ci",
                        "roc_auc",
                        "roc_auc_ci",
                        "average_precision",
                        "average_precision_ci",
                        "accuracy_real",
                        "accuracy_real_ci",
                        "accuracy_fake",
                        "accuracy_fake_ci",
                        "ece",
                        "ece_uncalibrated",
                    )
                },
                "per_source": result.per_source,
                "per_source_auc": per_source_auc(result),
                "history": res.history,
            }
        )
        _write_results(out, plan, rows)
    report(progress, len(runs), len(runs), stage="experiment")
    return rows


# ---------------------------------------------------------------- tables
def _pct(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _ci(v: float, ci: list[float]) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{_pct(v)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def markdown_tables(rows: list[dict]) -> str:
    """The comparison tables (percentages with 95 % bootstrap CIs), one per `table` key."""
    if rows and "held_out" in rows[0]:  # leave-one-generator-out rows
        from machinegaze.detect.logo import logo_markdown

        return logo_markdown(rows)
    lines: list[str] = []
    for table in dict.fromkeys(r["table"] for r in rows):
        rs = [r for r in rows if r["table"] == table]
        if table == "cross-generator":
            fakes = sorted({s["group"] for r in rs for s in r["per_source"] if s["n_fake"] == s["n"] and s["n"]})
            lines += [
                f"### {table}",
                "",
                "| run | policy | trained on fakes | "
                + " | ".join(f"{f}: acc on fakes | {f}: AUC vs reals" for f in fakes)
                + " | acc on reals |",
                "|" + "---|" * (3 + 2 * len(fakes) + 1),
            ]
            for r in rs:
                accs = {s["group"]: s for s in r["per_source"]}
                train_fakes = ", ".join(s for s in r["train"] if s in fakes or s.startswith(("fake:", "stylegan")))
                cells = []
                for f in fakes:
                    a = accs.get(f)
                    mark = "" if f in r["train"] else " †"
                    cells.append(_ci(a["accuracy"], a["ci"]) + mark if a else "–")
                    cells.append(f"{r['per_source_auc'].get(f, float('nan')):.3f}" if f in r["per_source_auc"] else "–")
                lines.append(
                    f"| {r['experiment']} | {'on' if r['policy'] else 'off'} | {train_fakes} | "
                    + " | ".join(cells)
                    + f" | {_ci(r['accuracy_real'], r['accuracy_real_ci'])} |"
                )
            lines += [
                "",
                "† generator never seen in training. Accuracies in %, 95 % bootstrap CI; AUC: that "
                "generator's test fakes vs all real test faces.",
                "",
            ]
        else:
            lines += [
                f"### {table}",
                "",
                "| run | policy | arch | train | test | n test (real/fake) | accuracy | balanced acc. | ROC AUC | "
                "AP | acc. real | acc. fake | ECE |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rs:
                auc = (
                    "–"
                    if not np.isfinite(r["roc_auc"])
                    else f"{r['roc_auc']:.3f} [{r['roc_auc_ci'][0]:.3f}, {r['roc_auc_ci'][1]:.3f}]"
                )
                ap = "–" if not np.isfinite(r["average_precision"]) else f"{r['average_precision']:.3f}"
                lines.append(
                    f"| {r['experiment']} | {'on' if r['policy'] else 'off'} | {r['arch']} | {', '.join(r['train'])} | "
                    f"{', '.join(r['test'])} | {r['n_test_real']}/{r['n_test_fake']} | "
                    f"{_ci(r['accuracy'], r['accuracy_ci'])} | {_ci(r['balanced_accuracy'], r['balanced_accuracy_ci'])} | "
                    f"{auc} | {ap} | {_ci(r['accuracy_real'], r['accuracy_real_ci'])} | "
                    f"{_ci(r['accuracy_fake'], r['accuracy_fake_ci'])} | {_pct(r['ece'])} |"
                )
            lines += [
                "",
                "Per-source accuracy (%, 95 % CI):",
                "",
                "| run | policy | " + " | ".join(["per source"]) + " |",
                "|---|---|---|",
            ]
            for r in rs:
                per = "; ".join(f"{s['group']} {_ci(s['accuracy'], s['ci'])} (n={s['n']})" for s in r["per_source"])
                lines.append(f"| {r['experiment']} | {'on' if r['policy'] else 'off'} | {per} |")
            lines.append("")
    return "\n".join(lines)


def _write_results(out: Path, plan: ExperimentPlan, rows: list[dict]) -> None:
    import csv
    import io

    meta = {"defaults": dataclasses.asdict(plan.defaults), "n_boot": plan.n_boot}
    atomic_write_bytes(out / "results.json", json.dumps({"plan": meta, "rows": rows}, indent=2).encode())
    atomic_write_bytes(out / "results.md", markdown_tables(rows).encode())
    buf = io.StringIO()
    cols = [
        "experiment",
        "policy",
        "arch",
        "train",
        "test",
        "n_train",
        "n_test",
        "accuracy",
        "accuracy_lo",
        "accuracy_hi",
        "balanced_accuracy",
        "roc_auc",
        "roc_auc_lo",
        "roc_auc_hi",
        "average_precision",
        "accuracy_real",
        "accuracy_fake",
        "ece",
    ]
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow(
            [
                r["experiment"],
                r["policy"],
                r["arch"],
                "+".join(r["train"]),
                "+".join(r["test"]),
                r["n_train"],
                r["n_test"],
                f"{r['accuracy']:.4f}",
                f"{r['accuracy_ci'][0]:.4f}",
                f"{r['accuracy_ci'][1]:.4f}",
                f"{r['balanced_accuracy']:.4f}",
                f"{r['roc_auc']:.4f}",
                f"{r['roc_auc_ci'][0]:.4f}",
                f"{r['roc_auc_ci'][1]:.4f}",
                f"{r['average_precision']:.4f}",
                f"{r['accuracy_real']:.4f}",
                f"{r['accuracy_fake']:.4f}",
                f"{r['ece']:.4f}",
            ]
        )
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())


def run_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    only: list[str] | None = None,
    progress: ProgressFn = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list[dict]:
    """Run an experiment file: compositions ([[experiment]]) or leave-one-generator-out ([logo], see logo.py;
    `only` then names the folds)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".toml":
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise GazeError(f"{p}: not valid TOML ({e})") from None
        if "logo" in doc:
            from machinegaze.detect import logo

            return logo.run_logo(logo.logo_plan_from_dict(doc, str(p)), out_dir, data_root, progress, only)
    return run_plan(load_plan(path), out_dir, data_root, only, progress, device=device, precision=precision)


__all__ = [
    "ExperimentPlan",
    "ExperimentSpec",
    "load_plan",
    "plan_from_dict",
    "run_plan",
    "run_file",
    "markdown_tables",
    "per_source_auc",
    "REAL",
    "FAKE",
]

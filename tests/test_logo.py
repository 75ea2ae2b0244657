"""Leave-one-generator-out runner: plan parsing, Wilson intervals, ensembles, resume, a tiny real run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from machinegaze import GazeError
from machinegaze.detect import logo
from machinegaze.detect.experiment import markdown_tables, run_file

torch.set_num_threads(1)


def test_wilson_interval_by_hand():
    lo, hi = logo.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = logo.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert all(math.isnan(v) for v in logo.wilson(0, 0))


def _doc(reals, gens, **logo_extra):
    return {
        "logo": {"reals": reals, "generators": gens, **logo_extra},
        "defaults": {"size": 32, "policy": False, "max_per_source": 40, "augment": True, "batch_size": 16},
        "representation": [
            {
                "name": "npr",
                "arch": "npr",
                "patch": 16,
                "width": 8,
                "freeze_epochs": 0,
                "epochs": 4,
                "lr": 4e-3,
                "lr_mult": 1.0,
            },
            {"name": "spectrum", "arch": "spectrum", "freeze_epochs": 0, "epochs": 4, "lr": 4e-3, "lr_mult": 1.0},
        ],
    }


def test_plan_mistakes_are_one_line_errors():
    good = _doc(["utkface"], ["stylegan1", "stylegan3"], ensembles=[["npr", "spectrum"]])
    plan = logo.logo_plan_from_dict(good)
    assert plan.held_out == ("stylegan1", "stylegan3", "none") and plan.representations[0][1].arch == "npr"
    for bad in (
        {**good, "logo": {**good["logo"], "held_out": ["sd99"]}},
        {**good, "logo": {**good["logo"], "ensembles": [["npr", "nope"]]}},
        {**good, "representation": [{"name": "x", "colour": "red"}]},
        {**good, "representation": []},
        {**good, "extra": {}},
    ):
        with pytest.raises(GazeError):
            logo.logo_plan_from_dict(bad)


def test_ensemble_averages_calibrated_logits():
    y = np.array([0, 0, 1, 1])
    a = {
        "val_keys": list("abcd"),
        "test_keys": ["e"],
        "val_y": y,
        "val_logits": np.array([-2.0, -1, 1, 2]),
        "test_logits": np.array([4.0]),
        "temperature": 2.0,
        "threshold": 0.5,
        "seconds": 1.0,
        "n_train": 8,
    }
    b = {**a, "val_logits": np.array([-1.0, -3, 3, 1]), "test_logits": np.array([-1.0]), "temperature": 1.0}
    e = logo.ensemble_run([a, b])
    assert np.allclose(e["val_logits"], [-1.0, -1.75, 1.75, 1]) and np.allclose(e["test_logits"], [0.5])
    with pytest.raises(GazeError):
        logo.ensemble_run([a, {**b, "test_keys": ["f"]}])


def _write_set(folder, n, kind, seed):
    """Smooth 32 px 'photos' (real) or fakes upsampled from 16 px by nearest neighbour (a generator's trace)."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        base = torch.rand(1, 3, 16, 16, generator=g)
        if kind == "real":
            img = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=32, mode="bicubic", align_corners=False)
            img = (img + 0.08 * torch.rand(1, 3, 32, 32, generator=g)).clamp(0, 1)
        else:
            img = F.interpolate(base * (0.6 if kind == "b" else 1.0), scale_factor=2, mode="nearest")
        arr = (img[0].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


def test_tiny_leave_one_out_run_resumes_and_tabulates(tmp_path):
    _write_set(tmp_path / "real", 60, "real", 0)
    _write_set(tmp_path / "ga", 40, "a", 1)
    _write_set(tmp_path / "gb", 40, "b", 2)
    ga, gb = f"fake:{tmp_path / 'ga'}", f"fake:{tmp_path / 'gb'}"
    doc = _doc([f"real:{tmp_path / 'real'}"], [ga, gb], held_out=[ga], ensembles=[["npr", "spectrum"]])
    toml = "\n".join(
        [
            "[logo]",
            f"reals = [{doc['logo']['reals'][0]!r}]",
            f"generators = [{ga!r}, {gb!r}]",
            f"held_out = [{ga!r}]",
            'ensembles = [["npr", "spectrum"]]',
            "[defaults]",
            *[f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in doc["defaults"].items()],
            *[
                "[[representation]]\n"
                + "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in r.items())
                for r in doc["representation"]
            ],
        ]
    )
    (tmp_path / "logo.toml").write_text(toml.replace("'", '"'))
    out = tmp_path / "out"
    rows = run_file(tmp_path / "logo.toml", out)
    assert [r["representation"] for r in rows] == ["npr", "spectrum", "npr+spectrum"]
    for r in rows:
        acc, (lo, hi) = r["held_out_generator"]["accuracy"], r["held_out_generator"]["ci"]
        assert r["held_out"] == ga and lo <= acc <= hi and r["held_out_generator"]["n"] == 40
        assert r["reals"]["n"] > 0 and f"real:{tmp_path / 'real'}" in r["per_source"]
    # NPR sees the nearest-upsampling trace of a generator it never trained on.
    assert rows[0]["held_out_generator"]["accuracy"] >= 0.8
    files = sorted((out / "runs").iterdir())
    assert len(files) == 2 and all("/" not in f.name[1:] and f.suffix == ".npz" for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = run_file(tmp_path / "logo.toml", out)  # resumes: nothing retrained, same numbers
    assert [f.stat().st_mtime_ns for f in files] == stamps and again == rows
    table = markdown_tables(rows)
    assert "npr+spectrum" in table and (out / "detect_logo.json").is_file() and (out / "detect_logo.md").is_file()

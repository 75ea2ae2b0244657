"""One process vs torchrun with 2 processes on this machine: `gaze generate` over N seeds and
`gaze detect predict` over N images (the generated ones), with wall time, speed-up, total CPU time and peak RSS
per rank. Each rank runs through a small wrapper that records its own getrusage at exit.

Usage: python benchmarks/scale.py [--n 1000] [--procs 2] [--workdir DIR]
Numbers are CPU numbers (torch threads = 1 per process, so 2 processes use 2 cores where 1 uses one).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(report_dir: str, argv: list[str]) -> None:
    """Run `gaze ARGS` in this process and write this rank's rusage to report_dir/rank{R}.json at exit."""

    def dump():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # DataLoader workers, once joined
        rank = os.environ.get("RANK", "0")
        cpu = ru.ru_utime + ru.ru_stime + kids.ru_utime + kids.ru_stime
        Path(report_dir, f"rank{rank}.json").write_text(
            json.dumps({"rank": int(rank), "cpu_s": cpu, "peak_rss_mb": ru.ru_maxrss / 1024})
        )

    atexit.register(dump)
    from machinegaze.cli import main

    main(argv)


def run(procs: int, gaze_args: list[str], workdir: Path, tag: str) -> dict:
    rep = workdir / f"rusage-{tag}-{procs}"
    rep.mkdir(parents=True, exist_ok=True)
    me = [str(Path(__file__).resolve()), "--worker", str(rep), "--"]
    if procs == 1:
        cmd = [sys.executable, *me, *gaze_args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
            *me,
            *gaze_args,
        ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{tag} with {procs} process(es) failed:\n{r.stderr[-3000:]}")
    ranks = sorted((json.loads(p.read_text()) for p in rep.glob("rank*.json")), key=lambda d: d["rank"])
    return {"wall_s": wall, "cpu_s": sum(d["cpu_s"] for d in ranks), "rss_mb": [d["peak_rss_mb"] for d in ranks]}


def same_files(a: Path, b: Path) -> bool:
    na, nb = sorted(p.name for p in a.iterdir()), sorted(p.name for p in b.iterdir())
    return na == nb and all((a / n).read_bytes() == (b / n).read_bytes() for n in na)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="gaze-scale-"))
    seeds = f"0-{a.n - 1}"
    rows = []
    res = {}
    for p in (1, a.procs):
        res[("generate", p)] = run(
            p, ["generate", "--seeds", seeds, "--device", "cpu", "--outdir", str(work / f"gen{p}")], work, "generate"
        )
    gen_same = same_files(work / "gen1", work / f"gen{a.procs}")
    imgs = work / "gen1"
    for p in (1, a.procs):
        res[("predict", p)] = run(
            p, ["detect", "predict", str(imgs), "--device", "cpu", "--out", str(work / f"pred{p}.csv")], work, "predict"
        )
    pred_same = (work / "pred1.csv").read_bytes() == (work / f"pred{a.procs}.csv").read_bytes()
    print(f"{a.n} items, CPU, 1 torch thread per process; outputs identical: generate {gen_same}, predict {pred_same}")
    print(
        f"{'task':10s} {'procs':>5s} {'wall s':>8s} {'items/s':>8s} {'speed-up':>9s} {'CPU s':>8s} "
        f"{'CPU ratio':>9s}  peak RSS per rank (MB)"
    )
    for task in ("generate", "predict"):
        base = res[(task, 1)]
        for p in (1, a.procs):
            r = res[(task, p)]
            rows.append(dict(task=task, procs=p, **r))
            print(
                f"{task:10s} {p:5d} {r['wall_s']:8.1f} {a.n / r['wall_s']:8.1f} {base['wall_s'] / r['wall_s']:8.2f}x "
                f"{r['cpu_s']:8.1f} {r['cpu_s'] / base['cpu_s']:8.2f}x  {', '.join(f'{m:.0f}' for m in r['rss_mb'])}"
            )
    (work / "scale.json").write_text(
        json.dumps({"n": a.n, "rows": rows, "identical": {"generate": gen_same, "predict": pred_same}}, indent=1)
    )
    print(f"(files in {work})")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sep = sys.argv.index("--")
        worker(sys.argv[2], sys.argv[sep + 1 :])
    else:
        main()

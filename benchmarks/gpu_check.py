"""One-shot device check (<= 8 minutes on one GPU): parity, speed and memory of machinegaze on a device,
written as a JSON report.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out gpu_check.json [--nvlabs-dir PATH] [--device cuda]
    PYTHONPATH=. python3 benchmarks/gpu_check.py --device cpu --quick --out /tmp/c.json   (the CPU test)

Sections (each records its own error instead of stopping the run):
  parity      golden StyleGAN2 files on the device in fp32: max |device - CPU| and |device - NVIDIA's output|
              (must be < 1e-3)
  generate    1024 px config-f (num_fp16_res=4, conv_clamp=256; random weights, seed 0) img/s at batch 1/8/32,
              fp32 and mixed (fp16 in the flagged blocks), peak device memory
  nvlabs      with --nvlabs-dir (a stylegan2-ada-pytorch or stylegan3 checkout): NVIDIA's Generator built from
              its own source with the same kwargs and our weights, timed the same way in this process, plus the
              fp32 output difference; whether their custom CUDA ops compiled (else their reference ops ran)
  project     projection steps/s at 256 px: synthesis forward+backward w.r.t. W+ and noise, LPIPS-VGG, Adam
  uncanny     fine-tuning steps/s at 256 px: G forward+backward through the frozen D, Adam on G
  detector    EfficientNet-Lite0 detector at 256 px: train img/s (fwd+bwd+Adam) and predict img/s
Timings: warm-up first, device synchronised before every clock read, best of the repeats.
The project/uncanny rows time the same network work as `gaze project` / `gaze uncanny` steps, in this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machinegaze import device as devmod  # noqa: E402
from machinegaze.generate import synthesize_batch  # noqa: E402
from machinegaze.nets.stylegan2 import Discriminator, Generator  # noqa: E402


def timed(fn, dev: torch.device, warmup: int, reps: int) -> float:
    """Best seconds per call of fn() after warm-up, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        devmod.synchronize(dev)
        t = time.perf_counter()
        fn()
        devmod.synchronize(dev)
        best = min(best, time.perf_counter() - t)
    return best


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mb(dev: torch.device):
    b = devmod.peak_memory_bytes(dev)
    return None if b is None else round(b / 2**20, 1)


def gen_config(quick: bool, res: int = 1024) -> dict:
    if quick:
        return dict(
            z_dim=32,
            w_dim=32,
            c_dim=0,
            img_resolution=32,
            img_channels=3,
            mapping_kwargs=dict(num_layers=2),
            synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256),
        )
    return dict(
        z_dim=512,
        w_dim=512,
        c_dim=0,
        img_resolution=res,
        img_channels=3,
        mapping_kwargs=dict(num_layers=8),
        synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256),
    )


# ---------------------------------------------------------------- sections
def check_parity(dev: torch.device, golden: Path, quick: bool) -> dict:
    from machinegaze.checkpoints import load_networks
    from machinegaze.generate import seeds_to_ws, synthesize

    out = {}
    for name in ("sg2_skip_32", "sg2_cond_64"):
        if not (golden / f"{name}.pkl").is_file():
            out[name] = {"skipped": f"{golden / name}.pkl not found"}
            continue
        g = np.load(golden / f"{name}.npz")
        nets = load_networks(golden / f"{name}.pkl")
        seeds = [int(s) for s in g["seeds"]]
        res = {}
        for where in ("cpu", str(dev)):
            G = nets.generator.to(where)
            c = torch.from_numpy(g["c"]).float().to(where) if g["c"].shape[1] else None
            ws = G.mapping(torch.from_numpy(g["z"]).float().to(where), c, truncation_psi=0.7)
            res[where] = (ws.detach().cpu().numpy(), synthesize(G, ws, noise_mode="const").numpy())
        d_dev = float(np.abs(res[str(dev)][1] - res["cpu"][1]).max())
        d_ref = float(np.abs(res[str(dev)][1] - g["img_psi07"]).max())
        out[name] = {
            "seeds": seeds,
            "max_abs_vs_cpu": d_dev,
            "max_abs_vs_nvidia": d_ref,
            "ws_max_abs_vs_nvidia": float(np.abs(res[str(dev)][0] - g["ws_psi07"]).max()),
            "pass": d_dev < 1e-3 and d_ref < 1e-3,
        }
        if name == "sg2_skip_32":
            ws_s = seeds_to_ws(nets.generator.to(dev), seeds, trunc=0.7).cpu().numpy()
            out[name]["seeds_to_ws_max_abs_vs_nvidia"] = float(np.abs(ws_s - g["ws_psi07"]).max())
    return out


def _throughput(G, synth_fn, dev, batches, warmup, reps) -> list[dict]:
    rows = []
    for b in batches:
        ws = G.mapping(torch.randn(b, G.z_dim, device=dev, generator=torch.Generator(dev).manual_seed(0)), None)
        for prec in ("fp32", "mixed"):
            reset_peak(dev)
            try:
                with torch.no_grad():
                    s = timed(lambda ws=ws, prec=prec: synth_fn(ws, prec), dev, warmup, reps)
                rows.append({"batch": b, "precision": prec, "img_per_s": round(b / s, 2), "peak_mb": peak_mb(dev)})
            except torch.cuda.OutOfMemoryError as e:  # a card too small for batch 32 at 1024 px: say so
                rows.append({"batch": b, "precision": prec, "error": f"out of memory: {str(e)[:120]}"})
                torch.cuda.empty_cache()
    return rows


def check_generate(dev: torch.device, quick: bool, nvlabs_dir) -> dict:
    torch.manual_seed(0)
    cfg = gen_config(quick)
    G = Generator(**cfg).eval().requires_grad_(False).to(dev)
    batches, warmup, reps = ((1, 2), 1, 2) if quick else ((1, 8, 32), 2, 5)
    has_switch = bool(devmod.synthesis_kwargs(G.synthesis, "mixed"))
    out = {
        "config": cfg,
        "fp16_blocks": has_switch,
        "note": None if has_switch else "this build's synthesis has no force_fp32 switch: 'mixed' ran in fp32",
        "ours": _throughput(G, lambda ws, p: synthesize_batch(G, ws, "const", p), dev, batches, warmup, reps),
    }
    if nvlabs_dir is None:
        out["nvlabs"] = {"skipped": "no --nvlabs-dir given (a stylegan2-ada-pytorch or stylegan3 checkout)"}
        return out
    try:
        out["nvlabs"] = check_nvlabs(G, cfg, Path(nvlabs_dir), dev, batches, warmup, reps)
    except Exception as e:
        out["nvlabs"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    return out


def check_nvlabs(G, cfg: dict, repo: Path, dev, batches, warmup, reps) -> dict:
    """NVIDIA's Generator from its source (never from a pickle), our weights loaded by name, timed the same way."""
    if not (repo / "training").is_dir():
        raise FileNotFoundError(f"{repo} has no training/ folder")
    sys.path.insert(0, str(repo))
    import importlib

    modname = (
        "training.networks_stylegan2"
        if (repo / "training" / "networks_stylegan2.py").is_file()
        else "training.networks"
    )
    nv = importlib.import_module(modname)
    ops = {}
    for op in ("bias_act", "upfirdn2d"):
        m = importlib.import_module(f"torch_utils.ops.{op}")
        try:
            ops[op] = bool(m._init()) if dev.type == "cuda" else False
        except Exception as e:  # their build failed outright: their code then uses the reference ops
            ops[op] = f"failed: {type(e).__name__}"
    ref = nv.Generator(**cfg).eval().requires_grad_(False).to(dev)
    missing, unexpected = ref.load_state_dict(G.state_dict(), strict=False)
    ws = G.mapping(torch.randn(2, G.z_dim, device=dev, generator=torch.Generator(dev).manual_seed(1)), None)
    with torch.no_grad():
        a = synthesize_batch(G, ws, "const", "fp32")
        b = ref.synthesis(ws, noise_mode="const", force_fp32=True).float()
    rows = _throughput(
        G,
        lambda w, p: ref.synthesis(w, noise_mode="const", force_fp32=(p == "fp32")),
        dev,
        batches,
        1,
        max(1, reps // 2),
    )  # fewer repeats: their reference ops can be slow
    return {
        "module": modname,
        "custom_cuda_ops_compiled": ops,
        "note": None
        if all(v is True for v in ops.values())
        else "NVIDIA's custom CUDA kernels did not all compile: their reference PyTorch ops ran",
        "missing_keys": list(missing),
        "unexpected_keys": list(unexpected),
        "fp32_max_abs_diff_vs_ours": float((a - b).abs().max()),
        "rows": rows,
    }


def check_project(dev: torch.device, quick: bool, prec: str) -> dict:
    from machinegaze import zoo

    torch.manual_seed(0)
    G = Generator(**gen_config(quick, res=256)).eval().requires_grad_(False).to(dev)
    try:
        lpips = zoo.load_lpips("vgg", device=dev)
        lp_note = "LPIPS-VGG (pretrained)"
    except Exception as e:
        from machinegaze.nets.lpips import LPIPS

        lpips, lp_note = LPIPS("vgg").to(dev), f"LPIPS-VGG random weights ({e})"
    target = torch.rand(1, 3, G.img_resolution, G.img_resolution, device=dev) * 2 - 1
    w = G.mapping(torch.randn(1, G.z_dim, device=dev), None).detach().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.01, betas=(0.9, 0.999))

    def step():
        img = synthesize_batch(G, w, "const", prec)
        with devmod.autocast(dev, prec):
            loss = lpips(img, target).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    reset_peak(dev)
    s = timed(step, dev, 2, 3 if quick else 20)
    return {
        "resolution": G.img_resolution,
        "precision": prec,
        "steps_per_s": round(1 / s, 2),
        "distance": lp_note,
        "peak_mb": peak_mb(dev),
    }


def check_uncanny(dev: torch.device, quick: bool, prec: str) -> dict:
    torch.manual_seed(0)
    cfg = gen_config(quick, res=256)
    G = Generator(**cfg).train().to(dev)
    D = (
        Discriminator(
            c_dim=0,
            img_resolution=cfg["img_resolution"],
            img_channels=3,
            channel_base=cfg["synthesis_kwargs"]["channel_base"],
            channel_max=cfg["synthesis_kwargs"]["channel_max"],
        )
        .eval()
        .requires_grad_(False)
        .to(dev)
    )
    opt = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99))
    batch = 2 if quick else 8

    def step():
        z = torch.randn(batch, G.z_dim, device=dev)
        img = synthesize_batch(G, G.mapping(z, None), "random", prec)
        loss = torch.nn.functional.softplus(-D(img)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    reset_peak(dev)
    s = timed(step, dev, 2, 3 if quick else 20)
    return {
        "resolution": cfg["img_resolution"],
        "batch": batch,
        "precision": prec,
        "steps_per_s": round(1 / s, 2),
        "peak_mb": peak_mb(dev),
    }


def check_detector(dev: torch.device, quick: bool, prec: str) -> dict:
    from machinegaze import zoo
    from machinegaze.detect.model import DetectorSpec, build_detector

    size, batch = (64, 4) if quick else (256, 32)
    try:
        det = zoo.new_detector(DetectorSpec(arch="effnet_lite0", size=size), pretrained=True)
        note = "effnet_lite0, ImageNet body"
    except Exception as e:
        det, note = build_detector(DetectorSpec(arch="effnet_lite0", size=size)), f"random weights ({e})"
    det = devmod.to_channels_last(det.to(dev), dev, prec)
    fmt = torch.channels_last if devmod.prefers_channels_last(dev, prec) else torch.contiguous_format
    x = (torch.rand(batch, 3, size, size, device=dev) * 2 - 1).contiguous(memory_format=fmt)
    y = (torch.arange(batch, device=dev) % 2).float()
    opt = torch.optim.AdamW(det.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=devmod.autocast_dtype(dev, prec) is torch.float16)

    def train_step():
        with devmod.autocast(dev, prec):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(det(x).float().reshape(-1), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    @torch.no_grad()
    def predict():
        with devmod.autocast(dev, prec):
            det(x)

    reps = 2 if quick else 10
    det.train()
    reset_peak(dev)
    st = timed(train_step, dev, 2, reps)
    train_mb = peak_mb(dev)
    det.eval()
    sp = timed(predict, dev, 2, reps)
    return {
        "size": size,
        "batch": batch,
        "precision": prec,
        "weights": note,
        "train_img_per_s": round(batch / st, 1),
        "predict_img_per_s": round(batch / sp, 1),
        "train_peak_mb": train_mb,
    }


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps (default: $GAZE_DEVICE or auto)")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16 for project/uncanny/detector")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test)")
    ap.add_argument("--nvlabs-dir", default=None, help="a stylegan2-ada-pytorch or stylegan3 checkout")
    ap.add_argument("--golden-dir", default=str(ROOT.parent / "shared" / "golden" / "stylegan2"))
    ap.add_argument("--out", default="gpu_check.json")
    a = ap.parse_args(argv)
    dev = devmod.resolve_device(a.device)
    prec = devmod.resolve_precision(a.precision, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report = {
        "device": devmod.describe(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "quick": a.quick,
        "precision": prec,
        "sections": {},
    }
    t0 = time.perf_counter()
    sections = [
        ("parity", lambda: check_parity(dev, Path(a.golden_dir), a.quick)),
        ("generate", lambda: check_generate(dev, a.quick, a.nvlabs_dir)),
        ("project", lambda: check_project(dev, a.quick, prec)),
        ("uncanny", lambda: check_uncanny(dev, a.quick, prec)),
        ("detector", lambda: check_detector(dev, a.quick, prec)),
    ]
    for name, fn in sections:
        t = time.perf_counter()
        try:
            report["sections"][name] = fn()
        except Exception as e:
            report["sections"][name] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-2000:],
            }
        report["sections"][name]["seconds"] = round(time.perf_counter() - t, 1)
        print(f"{name}: {json.dumps(report['sections'][name], default=str)[:400]}", flush=True)
        with contextlib.suppress(Exception):
            Path(a.out).write_text(json.dumps(report, indent=1, default=str))  # partial report if killed later
    report["seconds"] = round(time.perf_counter() - t0, 1)
    parity = report["sections"]["parity"]
    report["parity_pass"] = (
        all(v.get("pass", True) for v in parity.values() if isinstance(v, dict)) and "error" not in parity
    )
    report["errors"] = [k for k, v in report["sections"].items() if "error" in v]
    Path(a.out).write_text(json.dumps(report, indent=1, default=str))
    print(
        f"wrote {a.out} ({report['seconds']} s; parity {'pass' if report['parity_pass'] else 'FAIL'}; "
        f"errors in: {', '.join(report['errors']) or 'none'})"
    )
    return 0 if report["parity_pass"] and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Bounded load test of `gaze serve` on loopback: N requests (default 200), C at once (default 8).

Detect (POST /api/detect with a face) when the server has a detector, else generate (POST /api/generate, a new
seed per request). Reports errors by status and latency p50/p95/max, against two baselines measured in the same
run: GET /api/status (the HTTP floor) and the same library call made directly in this process (no HTTP, no queue).

Starts its own server (python -m machinegaze.cli serve on a free 127.0.0.1 port, temporary data dir) unless
--url names one; only loopback URLs are accepted. Stops by itself: --max-seconds bounds the whole run.

Usage: python benchmarks/web_load.py [--requests 200] [--concurrency 8] [--network PATH] [--detector PATH]
                                     [--endpoint auto|detect|generate] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "stylegan2" / "sg2_skip_32.pkl"
FACES = ROOT.parent / "shared" / "data" / "faces" / "real"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_only(url: str) -> str:
    host = urlparse(url).hostname or ""
    if not (host in ("localhost", "::1") or host.startswith("127.")):
        raise SystemExit(f"refusing {url}: this load test only targets loopback addresses (127.0.0.0/8, ::1)")
    return url.rstrip("/")


def start_server(args, data_dir: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "machinegaze.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        data_dir,
        "--workers",
        str(args.workers),
        "--queue",
        str(args.queue),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.network:
        cmd += ["--network", args.network]
    if args.detector:
        cmd += ["--detector", args.detector]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/api/status", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def run_load(client, n: int, concurrency: int, deadline: float, make_request) -> tuple[list[float], Counter, float]:
    """Fire n requests, `concurrency` at a time; stop submitting at the deadline. (latencies of 2xx, statuses, wall)"""
    lat: list[float] = []
    statuses: Counter = Counter()

    def one(i: int):
        t = time.perf_counter()
        try:
            r = make_request(client, i)
            return r.status_code, time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - a failed request is a counted error, not a crash
            return type(e).__name__, time.perf_counter() - t

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        pending = set()
        i = 0
        while i < n or pending:
            while i < n and len(pending) < concurrency and time.monotonic() < deadline:
                pending.add(pool.submit(one, i))
                i += 1
            if not pending:
                break
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for f in done:
                status, dt = f.result()
                statuses[status] += 1
                if isinstance(status, int) and 200 <= status < 300:
                    lat.append(dt)
            if time.monotonic() >= deadline and i < n:
                statuses["not sent (deadline)"] = n - i
                i = n
    return lat, statuses, time.perf_counter() - t0


def direct_baseline(endpoint: str, network: str, detector: str | None, face: bytes, reps: int = 20) -> list[float]:
    """The same library work in this process, sequentially (what the server adds is HTTP, queueing, storage)."""
    from machinegaze.web import adapters

    out = []
    if endpoint == "detect":
        from machinegaze import zoo
        from machinegaze.detect.fast import fast_detector

        det = zoo.load_detector(detector)
        fast, mtcnn = fast_detector(det), zoo.load_mtcnn()
        pil = adapters.decode_image(face, 40_000_000)
        for _ in range(reps):
            t = time.perf_counter()
            adapters.detect(det, fast, mtcnn, pil)
            out.append(time.perf_counter() - t)
    else:
        from machinegaze import zoo

        G = zoo.load_networks(zoo.resolve_network(network)).generator
        for i in range(reps):
            t = time.perf_counter()
            adapters.render(G, adapters.seed_ws(G, 10_000 + i, 0.7))
            out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--endpoint", choices=("auto", "detect", "generate"), default="auto")
    ap.add_argument("--network", default=None, help="default: the bundled face GAN, else the golden 32 px network")
    ap.add_argument("--detector", default=None, help="default: the bundled detector (if any)")
    ap.add_argument("--url", default=None, help="a running server on loopback (default: start one)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the server and the baseline (default: torch's default)",
    )
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long")
    args = ap.parse_args()
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 64:
        raise SystemExit("--requests must be 1..10000 and --concurrency 1..64")
    import httpx
    import torch

    from machinegaze import GazeError, zoo

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.network is None and args.url is None:
        try:
            zoo.resolve_network("default")
        except GazeError:
            args.network = str(GOLDEN)
    faces = sorted(FACES.rglob("*.jpg")) if FACES.is_dir() else []
    face = faces[0].read_bytes() if faces else None

    proc, tmp = None, None
    if args.url:
        url = loopback_only(args.url)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gaze-load-")
        proc, url = start_server(args, tmp.name)
    deadline = time.monotonic() + args.max_seconds
    try:
        with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=args.concurrency + 2)) as c:
            status = c.get("/api/status").json()
            endpoint = args.endpoint
            if endpoint == "auto":
                endpoint = "detect" if status["tabs"]["detect"]["available"] and face else "generate"
            if endpoint == "detect" and not status["tabs"]["detect"]["available"]:
                raise SystemExit(f"detect is unavailable on this server: {status['tabs']['detect']['reason']}")
            if endpoint == "generate" and not status["tabs"]["generate"]["available"]:
                raise SystemExit(f"generate is unavailable: {status['tabs']['generate']['reason']}")
            print(
                f"server {url}: network {status['network']['path']}, detector {status['detector']['path']}; "
                f"endpoint {endpoint}; {args.requests} requests, {args.concurrency} at once; "
                f"torch threads {args.threads or 'default'} (server), {torch.get_num_threads()} (baseline); "
                f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}"
            )

            if endpoint == "detect":

                def request(client, i):
                    return client.post("/api/detect", files={"file": ("face.jpg", face, "image/jpeg")})
            else:

                def request(client, i):
                    return client.post("/api/generate", json={"seed": i, "psi": 0.7})

            request(c, 0)  # warm-up: the model loads once
            floor, floor_st, _ = run_load(c, 50, 1, deadline, lambda client, i: client.get("/api/status"))
            lat, statuses, wall = run_load(c, args.requests, args.concurrency, deadline, request)
        if args.url is None:
            base = direct_baseline(endpoint, args.network, args.detector, face or b"")
        else:
            base = []
    finally:
        if proc is not None:
            stop_server(proc)
        if tmp is not None:
            tmp.cleanup()

    errors = {k: v for k, v in statuses.items() if not (isinstance(k, int) and 200 <= k < 300)}
    ok = sum(v for k, v in statuses.items() if isinstance(k, int) and 200 <= k < 300)
    ms = lambda xs, q: f"{1000 * pct(xs, q):8.1f}"  # noqa: E731
    print(f"\n{'case':34s} {'n':>5s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}")
    print(f"{'GET /api/status (1 at a time)':34s} {len(floor):5d} {ms(floor, 50)} {ms(floor, 95)} {ms(floor, 100)}")
    if base:
        print(f"{'library call, in-process, serial':34s} {len(base):5d} {ms(base, 50)} {ms(base, 95)} {ms(base, 100)}")
    print(
        f"{f'POST /api/{endpoint} ({args.concurrency} at once)':34s} {len(lat):5d} {ms(lat, 50)} {ms(lat, 95)} "
        f"{ms(lat, 100)}"
    )
    print(f"\n{ok} ok, errors: {errors or 'none'}; {ok / wall:.1f} requests/s over {wall:.1f} s")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()

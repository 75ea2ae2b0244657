"""Helpers shared by the benchmark scripts: the same-run fp32 matmul baseline, peak RSS, and running one case in a
fresh process. Torch is imported lazily so that `python benchmarks/X.py --help` stays fast."""

from __future__ import annotations

import json
import resource
import subprocess
import time


def matmul_gflops(threads: int | None = None, n: int = 2048, reps: int = 10) -> float:
    """The same-run baseline: GFLOP/s of an fp32 n x n x n matrix product, with `threads` threads if given, else
    the current setting. The product runs twice, through BLAS (torch.mm) and through oneDNN (the same product as a
    1x1 convolution, channels-last), and the faster counts: on some hosts MKL's sgemm reaches half of what oneDNN
    does, and a baseline below the machine's real peak would flatter every efficiency measured against it."""
    import torch
    import torch.nn.functional as F

    if threads is not None:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = torch.randn(1, n, n // 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    best = 0.0
    for product in (lambda: a @ b, lambda: F.conv2d(x, w)):
        product()
        t = time.perf_counter()
        for _ in range(reps):
            product()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_child(cmd: list[str]) -> tuple[dict | None, subprocess.CompletedProcess]:
    """Run one case in a fresh process (so its peak RSS is its own): (the JSON on the last line of its stdout, or
    None if it failed; the finished process, for its stderr)."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    return (json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None), r

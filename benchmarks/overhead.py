"""Host cost of a call: stn_cuda against torch on inputs so small that the kernels take
no time, so what is timed is the Python, dispatcher and autograd work around them, which
on a GPU bounds how fast small workloads can go. Median microseconds per call.

    python -m benchmarks.overhead [--device cpu|cuda] [--calls 2000]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import stn_cuda


def cases(device):
    """name -> (torch's call, stn_cuda's), each doing what the other does."""
    x = torch.randn(1, 1, 4, 4, device=device)
    grid = torch.rand(1, 2, 2, 2, device=device) * 2 - 1
    theta = torch.eye(2, 3, device=device).unsqueeze(0)
    xg, gg, tg = (t.clone().requires_grad_() for t in (x, grid, theta))
    size = (1, 1, 2, 2)
    return {
        "grid_sample forward, no grad": (lambda: F.grid_sample(x, grid, align_corners=False),
                                         lambda: stn_cuda.grid_sample(x, grid)),
        "grid_sample forward": (lambda: F.grid_sample(xg, gg, align_corners=False),
                                lambda: stn_cuda.grid_sample(xg, gg)),
        "grid_sample forward+backward": (
            lambda: F.grid_sample(xg, gg, align_corners=False).sum().backward(),
            lambda: stn_cuda.grid_sample(xg, gg).sum().backward()),
        "affine_grid + grid_sample forward+backward (stn_cuda: affine_sample)": (
            lambda: F.grid_sample(xg, F.affine_grid(tg, size, align_corners=False),
                                  align_corners=False).sum().backward(),
            lambda: stn_cuda.affine_sample(xg, tg, size[2:]).sum().backward()),
    }


def per_call(fns, calls, rounds, sync):
    """Median over rounds of the mean time of `calls` back-to-back calls of each of fns,
    in seconds; the fns take turns within each round, so that load falls on all alike."""
    for fn in fns:
        for _ in range(calls // 10):
            fn()
    sync()
    means = [[] for _ in fns]
    for _ in range(rounds):
        for fn, m in zip(fns, means):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            m.append((time.perf_counter() - t0) / calls)
    return [statistics.median(m) for m in means]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads: "
          "median us per call")
    print(f"{'call':>70} {'torch':>7} {'stn':>7} {'stn/torch':>9}")
    for name, (theirs, ours) in cases(device).items():
        t, s = per_call((theirs, ours), args.calls, args.rounds, sync)
        print(f"{name:>70} {t * 1e6:7.2f} {s * 1e6:7.2f} {s / t:9.2f}")


if __name__ == "__main__":
    main()

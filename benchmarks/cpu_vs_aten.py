"""CPU cost of stn_cuda.grid_sample against ATen's CPU grid_sample, side by side in one
process (issue 2's acceptance check): median time of forward and forward+backward.

    python -m benchmarks.cpu_vs_aten [--mode bilinear|nearest|bicubic]
                                     [--padding-mode zeros|border|reflection]
                                     [--volumes] [--reps 15] [--threads N]

--volumes times 5-D inputs (bilinear, that is trilinear, or nearest) in place of images.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import stn_cuda

SHAPES = [(256, 1, 28, 28), (16, 32, 64, 64), (4, 3, 256, 256)]
VOLUME_SHAPES = [(4, 1, 32, 32, 32), (1, 16, 32, 32, 32), (2, 4, 16, 64, 64)]


def median_times(fns, reps):
    """Median time of each of fns, timed in turn within every repetition, so that load
    from other processes falls on all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="bilinear", choices=("bilinear", "nearest", "bicubic"))
    parser.add_argument("--padding-mode", default="zeros", choices=("zeros", "border", "reflection"))
    parser.add_argument("--volumes", action="store_true", help="5-D inputs (not bicubic)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.volumes and args.mode == "bicubic":
        parser.error("--volumes: grid_sample has no bicubic mode for 5-D inputs")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mode={args.mode}, "
          f"padding_mode={args.padding_mode}")
    print(f"{'shape':>20} {'direction':>9} {'aten ms':>9} {'stn ms':>9} {'stn/aten':>9}")
    worst = 0.0
    for shape in VOLUME_SHAPES if args.volumes else SHAPES:
        n, dims = shape[0], len(shape) - 2
        # Near the identity: a slight rotation and scale, and noise per batch element.
        near = torch.eye(dims, dims + 1)
        near[:dims, :dims] = torch.tensor([[0.9, 0.1, 0.0], [-0.1, 0.9, 0.0], [0.0, 0.0, 0.9]])[:dims, :dims]
        near[0, dims] = 0.05
        theta = near.repeat(n, 1, 1) + 0.05 * torch.randn(n, dims, dims + 1)
        grid = F.affine_grid(theta, shape, align_corners=False)
        x = torch.randn(shape)
        xg, gg = x.clone().requires_grad_(), grid.clone().requires_grad_()
        impls = {"aten": lambda a, b: F.grid_sample(a, b, args.mode, args.padding_mode,
                                                    align_corners=False),
                 "stn": lambda a, b: stn_cuda.grid_sample(a, b, args.mode, args.padding_mode)}
        for direction in ("forward", "fwd+bwd"):
            if direction == "forward":
                runs = {name: lambda fn=fn: fn(x, grid) for name, fn in impls.items()}
            else:
                runs = {name: lambda fn=fn: torch.autograd.grad(fn(xg, gg).sum(), (xg, gg))
                        for name, fn in impls.items()}
            times = median_times(runs, args.reps)
            ratio = times["stn"] / times["aten"]
            worst = max(worst, ratio)
            print(f"{str(shape):>20} {direction:>9} {times['aten'] * 1e3:9.3f} {times['stn'] * 1e3:9.3f} {ratio:9.2f}")
    print(f"worst stn/aten ratio: {worst:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()

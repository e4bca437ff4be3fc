"""Peak GPU memory of a spatial-transformer step, fused against unfused:
stn_cuda.affine_sample against F.affine_grid + F.grid_sample, forward then backward
(gradients of input and theta), measured with torch.cuda.max_memory_allocated.

    python -m benchmarks.memory [--out memory.json] [--dtype float32]

"held" is what the forward leaves allocated for the backward (output and saved
tensors: the composition saves its (N, H_out, W_out, 2) grid); "peak" is the most
allocated at once during forward and backward. Both exclude the inputs and
grad_output, allocated before.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

import stn_cuda

from .environment import metadata
from .impls import AFFINE, family
from .workloads import Sampling, Workload, dtype_name, make_case

CASES = (
    Workload("frames-4k", 4, 3, (2160, 3840), (2160, 3840), "four 4K frames: the grid weighs most"),
    Workload("feature-56", 64, 64, (56, 56), (56, 56), "an STN on an early CNN feature map"),
)


def step_memory(fn) -> dict:
    """Bytes held after fn's forward and peak bytes over its forward and backward."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out, backward = fn()
    held = torch.cuda.memory_allocated() - before
    grads = backward(out)
    del out, grads
    torch.cuda.synchronize()
    return {"held_bytes": held, "peak_bytes": torch.cuda.max_memory_allocated() - before}


def measure(workload: Workload, dtype: torch.dtype, device=torch.device("cuda")) -> list:
    case = make_case(workload, dtype, device, Sampling())
    grad_output = torch.randn(workload.batch, workload.channels, *workload.out_size, dtype=dtype, device=device)
    results = []
    for impl in family(AFFINE):
        if impl.skip_reason(case):
            continue
        leaves = (impl.input(case).detach().requires_grad_(), impl.geometry(case).detach().requires_grad_())

        def step():
            return impl(case, *leaves), lambda out: torch.autograd.grad(out, leaves, grad_output)

        with impl.context():
            memory = step_memory(step)
        results.append({"workload": workload.name, "shape": workload.shape, "dtype": dtype_name(dtype),
                        "impl": impl.name, **memory})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    if not (torch.cuda.is_available() and stn_cuda.built_with_cuda()):
        print("benchmarks.memory measures GPU memory: it needs a visible GPU and a CUDA build of stn_cuda",
              file=sys.stderr)
        return 2
    rows = [r for w in CASES for r in measure(w, getattr(torch, args.dtype))]
    for r in rows:
        print(f"{r['workload']:11} {r['shape']:28} {r['dtype']:9} {r['impl']:28} "
              f"held {r['held_bytes'] / 2**20:9.1f} MiB  peak {r['peak_bytes'] / 2**20:9.1f} MiB")
    if args.out:
        meta = metadata(torch.device("cuda"), sys.argv[1:] if argv is None else argv, "benchmarks.memory")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m benchmarks: run the suite and write its results (see benchmarks/__init__.py)."""
import argparse
import signal
import sys
import traceback
from pathlib import Path

import torch
from tqdm import tqdm

import stn_cuda

from . import environment, report
from .suite import run_case
from .timing import copy_bandwidth, make_timer
from .workloads import QUICK, WORKLOADS, Sampling, dtype_name, make_case, select

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def _list(values):
    """Repeatable options that also take comma-separated lists."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time stn_cuda against torch (and kornia, if installed) on named workloads; "
                    "write results.json, results.md and speedup.png.")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="output folder (default: bench-out)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small subset ({', '.join(QUICK)}), float32 only, fewer repetitions")
    parser.add_argument("--device", default="auto",
                        help="auto (the default: cuda when usable, else cpu), cpu or cuda[:N]")
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help=f"{', '.join(DTYPES)}; repeatable or a comma list "
                             "(default: float32, float16 and bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--workload", action="append", metavar="SUBSTRING",
                        help="run the workloads whose name contains SUBSTRING; repeatable or a comma list")
    parser.add_argument("--reps", type=int, help="timed repetitions per measurement "
                        "(default: 50 on CUDA, 10 on the CPU; --quick: 20 and 5)")
    parser.add_argument("--padding-mode", choices=["zeros", "border", "reflection"], default="zeros",
                        help="the samplers' padding_mode (default: zeros)")
    parser.add_argument("--align-corners", action="store_true", help="sample with align_corners=True")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)

    cuda_usable = torch.cuda.is_available() and stn_cuda.built_with_cuda()
    if args.device == "auto":
        args.device = "cuda" if cuda_usable else "cpu"
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: cpu or cuda[:N]")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: cpu or cuda[:N]")
    if args.device.type == "cuda" and not cuda_usable:
        parser.error(f"--device cuda needs a visible GPU (visible: {torch.cuda.is_available()}) "
                     f"and a CUDA build of stn_cuda (built with CUDA: {stn_cuda.built_with_cuda()})")
    dtypes = _list(args.dtype) or (["float32"] if args.quick or args.device.type == "cpu"
                                   else ["float32", "float16", "bfloat16"])
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtype {', '.join(unknown)}; choose from {', '.join(DTYPES)}")
    args.dtypes = [DTYPES[d] for d in dtypes]
    try:
        args.workloads = select(_list(args.workload), args.quick)
    except ValueError as error:
        parser.error(str(error))
    if args.reps is None:
        args.reps = (20 if args.quick else 50) if args.device.type == "cuda" else (5 if args.quick else 10)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def list_workloads():
    width = max(len(w.name) for w in WORKLOADS)
    for w in WORKLOADS:
        cpu = w.on(torch.device("cpu"))
        print(f"{w.name:{width}} {w.shape:28} {w.geometry:7} {w.about}"
              + ("" if cpu == w else f"  [CPU: {cpu.shape}]" if cpu else "  [GPU only]"))


def run_all(args, meta: dict):
    """Checks and times every (workload, dtype); returns the rows and stn_cuda's failures."""
    sampling = Sampling(args.padding_mode, args.align_corners)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)  # the timer's events and streams are the current device's
    timer = make_timer(args.device)
    meta["copy_bandwidth_gbps"] = copy_bandwidth(timer, args.reps) / 1e9
    context = {key: meta[key] for key in ("device", "torch", "commit")}
    workloads = []
    for w in args.workloads:
        if w.on(args.device) is None:
            print(f"skipping {w.name}: GPU only (see benchmarks/workloads.py)", file=sys.stderr)
        else:
            workloads.append(w.on(args.device))
    rows, failed = [], []
    cases = [(w, dtype) for w in workloads for dtype in args.dtypes]
    done = 0
    try:
        with tqdm(cases, desc="benchmarks", unit="case", file=sys.stderr, dynamic_ncols=True) as progress:
            for w, dtype in progress:
                name = f"{w.name} {dtype_name(dtype)}"
                progress.set_postfix_str(name)
                try:
                    case = make_case(w, dtype, args.device, sampling)
                    case_rows, failures, warnings = run_case(case, timer, args.reps,
                                                             meta["copy_bandwidth_gbps"] * 1e9, context)
                except Exception:  # noqa: BLE001 (one case's crash must not lose the others' results)
                    case_rows, failures, warnings = [], [f"crashed:\n{traceback.format_exc()}"], []
                rows += case_rows
                done += 1
                for message in warnings:
                    tqdm.write(f"warning: {name}: {message}", file=sys.stderr)
                for message in failures:
                    tqdm.write(f"FAILED: {name}: {message}", file=sys.stderr)
                    failed.append(f"{name}: {message}")
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from a time limit: report the cases done
        meta["interrupted"] = f"after {done} of {len(cases)} cases"
    return rows, failed


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list:
        list_workloads()
        return 0
    meta = environment.metadata(args.device, argv)
    if meta["stn_cuda_poison"]:
        print("warning: STN_CUDA_POISON is set: stn_cuda NaN-fills every output, and is timed doing so",
              file=sys.stderr)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rows, failed = run_all(args, meta)
    paths = report.write_all(args.out, meta, rows)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if failed:
        print(f"{len(failed)} failure(s):\n  " + "\n  ".join(failed), file=sys.stderr)
    if "interrupted" in meta:
        print(f"interrupted {meta['interrupted']}: the results cover the cases before", file=sys.stderr)
    return 1 if failed or "interrupted" in meta else 0


if __name__ == "__main__":
    sys.exit(main())

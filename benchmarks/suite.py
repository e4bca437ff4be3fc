"""One case (a workload in one dtype on one device): check every implementation that
applies, then time it in each direction, and make the result rows."""
from typing import Callable, Dict, List, Tuple

import torch

from . import checks
from .impls import FAMILIES, IMPLS, Impl, family, reference_of
from .timing import Stats, Timer
from .workloads import DIRECTIONS, Case, dtype_name, min_bytes


def timed_call(impl: Impl, case: Case, direction: str) -> Callable[[], object]:
    """What is timed in one direction, run in impl.context() (which the timer enters
    outside the timed window: its `context` attribute):
      forward           the forward alone, under no_grad (inference)
      backward          torch.autograd.grad through a forward graph built once here
                        (retain_graph), for the gradients of input and geometry
      forward+backward  both, as a training step runs them
    """
    input, geometry = impl.input(case), impl.geometry(case)
    if direction == "forward":
        def call():
            with torch.no_grad():
                return impl(case, input, geometry)
    else:
        leaves = (input.detach().requires_grad_(), geometry.detach().requires_grad_())
        w = case.workload
        grad_output = torch.randn(w.batch, w.channels, *w.out_size, dtype=case.dtype, device=case.device)
        if direction == "backward":
            with impl.context():
                output = impl(case, *leaves)

            def call():
                return torch.autograd.grad(output, leaves, grad_output, retain_graph=True)
        else:
            def call():
                return torch.autograd.grad(impl(case, *leaves), leaves, grad_output)
    call.context = impl.context
    return call


def check_all(case: Case) -> Tuple[Dict[str, checks.Check], Dict[str, str], List[str], List[str]]:
    """Checks every implementation that applies to case. Returns the checks of those to
    time, the reasons the others are not timed, stn_cuda's failures (mismatch or
    exception: the run fails) and warnings (another implementation's mismatch or
    exception)."""
    results, skipped, failures, warnings = {}, {}, [], []
    for impl in IMPLS:
        reason = impl.skip_reason(case)
        if reason is not None:
            skipped[impl.name] = reason
            continue
        report = failures if impl.is_stn_cuda else warnings
        try:
            results[impl.name] = result = checks.check(impl, case)
        except Exception as error:  # noqa: BLE001 (reported; a failure for stn_cuda)
            skipped[impl.name] = f"raised {type(error).__name__}: {error}"
            report.append(f"{impl.name} {skipped[impl.name]}")
            continue
        if result.status == checks.MISMATCH:
            report.append(f"{impl.name} MISMATCH: errors {result.errors}, tolerances {result.tolerances}")
    return results, skipped, failures, warnings


def _speedups(times: Dict[str, float]) -> Dict[str, dict]:
    """Per implementation: reference time / its time, fastest torch time / its time."""
    out = {}
    for name in FAMILIES:
        impls = [impl for impl in family(name) if impl.name in times]
        torch_times = [times[impl.name] for impl in impls if impl.is_torch]
        reference = times.get(reference_of(name).name)
        for impl in impls:
            t = times[impl.name]
            out[impl.name] = {"speedup_vs_reference": reference / t if reference else None,
                              "speedup_vs_best_torch": min(torch_times) / t if torch_times else None}
    return out


def _entry(impl: Impl, case: Case, direction: str, stats: Stats, copy_bandwidth: float) -> dict:
    """An implementation's timing, effective bandwidth (on the family's minimal traffic)
    and options, in a row."""
    nbytes = min_bytes(case, reference_of(impl.family).geometry(case).numel(), direction)
    return {"family": impl.family, "role": impl.role, "sampling": str(impl.sampling(case)),
            "median_ms": stats.median * 1e3, "p20_ms": stats.p20 * 1e3, "p80_ms": stats.p80 * 1e3,
            "reps": stats.reps, "min_bytes": nbytes, "gbps": nbytes / stats.median / 1e9,
            "copy_bw_fraction": nbytes / stats.median / copy_bandwidth}


def run_case(case: Case, timer: Timer, reps: int, copy_bandwidth: float, context: dict,
             directions=DIRECTIONS) -> Tuple[List[dict], List[str], List[str]]:
    """Rows (one per direction), failures and warnings (see check_all) for case.
    context is merged into every row (device, versions, commit)."""
    results, skipped, failures, warnings = check_all(case)
    to_time = [impl for impl in IMPLS if impl.name in results]  # a mismatch is timed too, and flagged
    w = case.workload
    rows = []
    for direction in directions:
        timed = [impl for impl in to_time if direction in impl.directions]
        stats = timer.compare({impl.name: timed_call(impl, case, direction) for impl in timed}, reps)
        speedups = _speedups({name: s.median for name, s in stats.items()})
        entries = {name: {"skipped": reason} for name, reason in skipped.items()}
        for impl in to_time:
            if impl not in timed:
                entries[impl.name] = {"skipped": f"timed in {', '.join(impl.directions)} only"}
        for impl in timed:
            entries[impl.name] = {**_entry(impl, case, direction, stats[impl.name], copy_bandwidth),
                                  **speedups[impl.name], **results[impl.name].as_row()}
        rows.append({
            "workload": w.name, "about": w.about, "geometry": w.geometry, "shape": w.shape,
            "batch": w.batch, "channels": w.channels, "in_size": list(w.in_size),
            "out_size": list(w.out_size), "dtype": dtype_name(case.dtype), "direction": direction,
            "sampling": str(case.sampling), **context,
            "impls": {impl.name: entries[impl.name] for impl in IMPLS if impl.name in entries},
        })
    return rows, failures, warnings

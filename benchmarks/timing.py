"""Timing: the median and spread of many repetitions of each callable.

On CUDA every repetition is bracketed by CUDA events and preceded (outside the
events) by a write of L2_FLUSH_BYTES, so that no implementation finds its inputs
in the L2 cache left there by the previous repetition (the method of
triton.testing.do_bench). On the CPU, time.perf_counter around each call.
Callables compared together are interleaved, round by round, in an order that
rotates each round, so that clock and thermal drift fall on all of them alike. A
callable with a `context` attribute (a context manager factory: stn_cuda's settings)
runs in it, entered before and left after its timed window.
"""
import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Dict, Mapping

import numpy as np
import torch

L2_FLUSH_BYTES = 256 << 20  # several times the L2 of any current GPU (H100: 50 MiB)
COPY_BYTES = {"cuda": 1 << 30, "cpu": 128 << 20}


@dataclass(frozen=True)
class Stats:
    """Seconds per call: median, 20th and 80th percentiles over reps repetitions."""
    median: float
    p20: float
    p80: float
    reps: int

    @classmethod
    def of(cls, samples) -> "Stats":
        p20, median, p80 = np.percentile(samples, [20, 50, 80])
        return cls(float(median), float(p20), float(p80), len(samples))


def in_context(fn):
    """The context fn runs in when timed: fn.context() where fn has one."""
    return getattr(fn, "context", contextlib.nullcontext)()


class Timer:
    """Times callables on one device; make_timer picks the subclass."""

    def __init__(self, device: torch.device, warmup: int):
        self.device = device
        self.warmup = warmup

    def compare(self, fns: Mapping[str, Callable[[], object]], reps: int) -> Dict[str, Stats]:
        """Stats of each callable over reps interleaved repetitions, after warm-up calls."""
        names = list(fns)
        for fn in fns.values():
            with in_context(fn):
                for _ in range(self.warmup):
                    fn()
        self.synchronize()
        pending = {name: [] for name in names}
        for r in range(reps):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                pending[name].append(self._start(fns[name]))
        self.synchronize()
        return {name: Stats.of([self._seconds(p) for p in pending[name]]) for name in names}

    def synchronize(self):
        pass

    def _start(self, fn):
        """Runs fn once; returns what _seconds turns into its duration."""
        raise NotImplementedError

    def _seconds(self, started) -> float:
        raise NotImplementedError


class CpuTimer(Timer):
    def _start(self, fn):
        with in_context(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    def _seconds(self, started) -> float:
        return started


class CudaTimer(Timer):
    def __init__(self, device: torch.device, warmup: int):
        super().__init__(device, warmup)
        self._flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)

    def synchronize(self):
        torch.cuda.synchronize(self.device)

    def _start(self, fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with in_context(fn):
            self._flush.zero_()
            start.record()
            fn()
            end.record()
        return start, end

    def _seconds(self, started) -> float:
        start, end = started
        return start.elapsed_time(end) / 1e3


def make_timer(device: torch.device) -> Timer:
    if device.type == "cuda":
        return CudaTimer(device, warmup=5)
    return CpuTimer(device, warmup=1)


def copy_bandwidth(timer: Timer, reps: int) -> float:
    """Bytes per second of dst.copy_(src) on the timer's device, counting the read and
    the write: the practical peak that effective bandwidths are set against. Buffers of
    COPY_BYTES, beyond any cache."""
    nbytes = COPY_BYTES[timer.device.type]
    src = torch.ones(nbytes, dtype=torch.uint8, device=timer.device)
    dst = torch.empty_like(src)
    stats = timer.compare({"copy": lambda: dst.copy_(src)}, reps)["copy"]
    return 2 * nbytes / stats.median

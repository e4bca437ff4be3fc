"""Speed settings: choices of how a kernel does its work that change no result beyond
rounding (unlike deterministic mode, which promises the same bits run after run).

set_scatter(mode) picks how the CUDA backward of images ('bilinear' and 'nearest')
adds into grad_input, which every output point reaches through its four corners:

  'atomic'  one atomic add per point, corner and channel, as torch's kernel makes
            (the default)
  'warp'    the lanes of a warp whose points share a corner sum their values with
            shuffles first, and one atomic add goes out per run of them: far fewer,
            less contended atomics where a transform zooms in (hundreds of output
            points per input pixel), a few instructions per point elsewhere

The sums agree to rounding, and with atomics their order varies from run to run in
either mode. 'bicubic', volumes and the CPU ignore the setting; so does the
deterministic backward, which has no atomics. python -m benchmarks times 'warp'
beside the default, in the same run.
"""
import contextlib

from . import _C

__all__ = ["set_scatter", "get_scatter", "use_scatter"]

_SCATTER_CODES = {"atomic": 0, "warp": 1}  # kernels.h's Scatter


def set_scatter(mode: str) -> None:
    """Scatter grad_input in the CUDA backward as mode says ('atomic' or 'warp'), from now on."""
    if mode not in _SCATTER_CODES:
        raise ValueError(f"stn_cuda.set_scatter(): expected mode to be 'atomic' or 'warp', got {mode!r}")
    _C.set_scatter(_SCATTER_CODES[mode])


def get_scatter() -> str:
    """The scatter mode in force: 'atomic' or 'warp'."""
    code = _C.scatter()
    return next(mode for mode, c in _SCATTER_CODES.items() if c == code)


@contextlib.contextmanager
def use_scatter(mode: str):
    """set_scatter(mode) within the block, the previous mode after it."""
    previous = get_scatter()
    set_scatter(mode)
    try:
        yield
    finally:
        set_scatter(previous)

"""Deterministic backward: gradients that are bitwise the same run after run.

The CUDA backward of grid_sample and affine_sample scatters grad_input with atomic
adds (and reduces grad_theta, and grad_grid when channels are split, with them), so the
order of the additions, hence the last bits of the result, varies between runs. The
deterministic backward gathers instead: the points (for bicubic, each of their taps) are
sorted by the cell of the input they fall in, and every input pixel sums their
contributions in that fixed order; grad_grid and grad_theta are reduced in a fixed order
too. It is used

  * where stn_cuda.set_deterministic(True) (or the stn_cuda.deterministic() context)
    asks for it, on any device (on the CPU, whose usual backward is deterministic
    already, grad_input comes from the same gather as on the GPU, for testing);
  * on CUDA under torch.use_deterministic_algorithms(True), as torch's own ops do.

It covers every input and mode the samplers take: images and volumes, 'bilinear',
'nearest' and 'bicubic', every padding mode; on CUDA, up to 2^31 - 1 output points per
batch element (a sort's limit; a sixteenth of that for 'bicubic'). The same bits come
back for the same inputs and settings: stn_cuda.set_tuning(channel_vectors=True) sums a
point's grid gradient in another fixed order, so its bits may differ from the default's.
"""
import contextlib

from . import _C

__all__ = ["set_deterministic", "is_deterministic", "deterministic"]


# The flag is the extension's (the backward ops read it: csrc/ops.cpp); this copy lets
# is_deterministic() be traced by torch.compile, which cannot look into _C.
_enabled = False


def set_deterministic(enabled: bool = True) -> None:
    """Use the deterministic backward (or stop asking for it) from now on, on every device."""
    global _enabled
    _enabled = bool(enabled)
    _C.set_deterministic(_enabled)


def is_deterministic() -> bool:
    """Whether set_deterministic(True) (or the deterministic() context) is in force."""
    return _enabled


@contextlib.contextmanager
def deterministic(enabled: bool = True):
    """set_deterministic(enabled) within the block, the previous setting after it."""
    previous = is_deterministic()
    set_deterministic(enabled)
    try:
        yield
    finally:
        set_deterministic(previous)

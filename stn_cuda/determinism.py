"""Deterministic backward: gradients that are bitwise the same run after run.

The CUDA backward of grid_sample and affine_sample scatters grad_input with atomic
adds (and reduces grad_theta, and grad_grid when channels are split, with them), so the
order of the additions, hence the last bits of the result, varies between runs. The
deterministic backward gathers instead: the points are sorted by the cell of the input
they fall in, and every input pixel sums its points in that fixed order; grad_grid and
grad_theta are reduced in a fixed order too. It is used

  * where stn_cuda.set_deterministic(True) (or the stn_cuda.deterministic() context)
    asks for it, on any device (on the CPU, whose usual backward is deterministic
    already, it runs the same algorithm as the GPU, for testing);
  * on CUDA under torch.use_deterministic_algorithms(True), as torch's own ops do.

It covers 4-D input with mode 'bilinear' and 'nearest'. For 5-D volumes and 'bicubic' it
does not exist yet: asking for it raises NotImplementedError, as torch does for its
nondeterministic ops (under torch's warn_only mode, a warning and the usual backward).
"""
import contextlib
import warnings

import torch

__all__ = ["set_deterministic", "is_deterministic", "deterministic"]

_enabled = False
_BICUBIC = 2


def set_deterministic(enabled: bool = True) -> None:
    """Use the deterministic backward (or stop asking for it) from now on, on every device."""
    global _enabled
    _enabled = bool(enabled)


def is_deterministic() -> bool:
    """Whether set_deterministic(True) (or the deterministic() context) is in force."""
    return _enabled


@contextlib.contextmanager
def deterministic(enabled: bool = True):
    """set_deterministic(enabled) within the block, the previous setting after it."""
    previous = _enabled
    set_deterministic(enabled)
    try:
        yield
    finally:
        set_deterministic(previous)


def _unsupported(input, interpolation_mode):
    if input.dim() == 5:
        return "5-D volumes"
    if interpolation_mode == _BICUBIC:
        return "mode='bicubic'"
    return None


def backward_is_deterministic(fn, input, interpolation_mode) -> bool:
    """Whether fn's backward (the op's name, for messages) runs the deterministic path."""
    by_torch = input.is_cuda and torch.are_deterministic_algorithms_enabled()
    if not (_enabled or by_torch):
        return False
    unsupported = _unsupported(input, interpolation_mode)
    if unsupported is None:
        return True
    who = ("stn_cuda.set_deterministic(True)" if _enabled
           else "torch.use_deterministic_algorithms(True)")
    message = (f"stn_cuda.{fn}(): the deterministic backward that {who} asks for is not "
               f"implemented for {unsupported} yet (it is for 4-D input, 'bilinear' and "
               "'nearest')")
    if not _enabled and torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message + "; the usual (atomic) backward runs instead")
        return False
    raise NotImplementedError(message)

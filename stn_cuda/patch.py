"""Route torch.nn.functional.grid_sample and affine_grid to stn_cuda, so that code
written against torch (kornia, torchvision, your own) uses stn_cuda unchanged.

Only the attributes of torch.nn.functional are replaced: code that bound the
functions before patching (``from torch.nn.functional import grid_sample``) keeps
torch's. A call goes to stn_cuda when its tensors are on a routed device (CUDA by
default) and stn_cuda computes exactly what torch would, and to torch's function
otherwise: unknown modes, 5-D bicubic, tensor subclasses, anything
torch would reject or warn about, so its errors and warnings stay torch's. (The one
difference that remains is stn_cuda's for grid points with a non-finite coordinate:
they sample 0 and pass no gradient, in every padding mode; see the README.)
"""
import contextlib
import functools
import threading
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from . import _C, functional

__all__ = ["patch_torch", "unpatch_torch", "patched_torch"]

# Plain tensors only: subclasses (DTensor, ...) go to torch, which knows them.
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_DEVICE_TYPES = ("cpu", "cuda") if _C.built_with_cuda else ("cpu",)
_routed = frozenset()  # the device types whose calls go to stn_cuda while patched (replaced whole)
_originals = {}  # name -> the torch.nn.functional attribute that patch_torch() replaced
_lock = threading.Lock()  # patching and unpatching, one thread at a time


def _supported(*tensors) -> bool:
    """Plain, dense, floating tensors, on one device whose calls are routed."""
    return (all(type(t) in _TENSOR_TYPES and t.layout == torch.strided and t.is_floating_point()
                and t.device.type in _routed for t in tensors)
            and len({t.device for t in tensors}) == 1)


def _same_dtype(input, grid) -> bool:
    """torch's grid_sample needs equal dtypes, but under autocast it casts them first,
    and so does stn_cuda's (csrc/autocast.cpp); neither casts float64."""
    return input.dtype == grid.dtype or (torch.is_autocast_enabled(input.device.type)
                                         and torch.float64 not in (input.dtype, grid.dtype))


def _grid_sample_supported(input, grid, mode, padding_mode, align_corners) -> bool:
    return (isinstance(mode, str) and mode in functional._MODES
            and isinstance(padding_mode, str) and padding_mode in functional._PADDING_MODES
            and isinstance(align_corners, bool)
            and not (mode == "bicubic" and input.dim() == 5)  # torch raises
            and _supported(input, grid) and _same_dtype(input, grid)
            # images (4-D, grid (x, y)) or volumes (5-D, grid (x, y, z))
            and input.dim() in (4, 5) and grid.dim() == input.dim() and grid.shape[-1] == input.dim() - 2
            and grid.shape[0] == input.shape[0] and min(input.shape[2:]) > 0)


def _affine_grid_supported(theta, size, align_corners) -> bool:
    return (isinstance(align_corners, bool) and _supported(theta)
            and all(isinstance(s, (int, torch.SymInt)) for s in size)
            and len(size) in (4, 5) and theta.dim() == 3 and theta.shape[1:] == (len(size) - 2, len(size) - 1)
            and size[0] == theta.shape[0] and min(size) > 0
            # torch warns about unit-size grids with align_corners=True
            and not (align_corners and min(size[2:]) == 1)
            # under autocast, torch's grid comes from a bmm in the autocast dtype; stn_cuda's
            # keeps theta's (more precise: see the README)
            and not (torch.is_autocast_enabled(theta.device.type) and theta.dtype != torch.float64))


def _route_grid_sample(torch_grid_sample):
    @functools.wraps(torch_grid_sample)
    def grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
        if _grid_sample_supported(input, grid, mode, padding_mode, align_corners):
            return functional.grid_sample(input, grid, mode, padding_mode, align_corners)
        return torch_grid_sample(input, grid, mode, padding_mode, align_corners)
    return grid_sample


def _route_affine_grid(torch_affine_grid):
    @functools.wraps(torch_affine_grid)
    def affine_grid(theta, size, align_corners=None):
        if _affine_grid_supported(theta, size, align_corners):
            return functional.affine_grid(theta, size, align_corners)
        return torch_affine_grid(theta, size, align_corners)
    return affine_grid


_ROUTES = {"grid_sample": _route_grid_sample, "affine_grid": _route_affine_grid}


def patch_torch(devices: Union[str, Sequence[str]] = ("cuda",)) -> None:
    """Make torch.nn.functional.grid_sample and affine_grid use stn_cuda for the
    calls it supports (4-D and 5-D, every mode, floating tensors) on `devices`, falling
    back to torch's functions for all others. Idempotent (a second call sets the devices);
    undone by unpatch_torch().

    devices: "cuda" by default. On the CPU, ATen's vectorised kernels are faster than
    stn_cuda's for images (the README has the figures); devices=("cpu", "cuda") routes
    CPU calls too, for stn_cuda's semantics (non-finite points) or its volumes.

    Code that bound the functions before the call (``from torch.nn.functional
    import grid_sample``) keeps torch's. The patch is process-wide: every thread sees it.
    """
    global _routed
    devices = (devices,) if isinstance(devices, str) else tuple(devices)
    unknown = [d for d in devices if d not in ("cpu", "cuda")]
    if unknown:
        raise ValueError(f"stn_cuda.patch_torch(): expected devices among 'cpu' and 'cuda', got {unknown}")
    with _lock:
        _routed = frozenset(d for d in devices if d in _DEVICE_TYPES)
        if _originals:
            return
        for name, route in _ROUTES.items():
            _originals[name] = getattr(F, name)
            setattr(F, name, route(_originals[name]))


def unpatch_torch() -> None:
    """Restore the torch.nn.functional functions that patch_torch() replaced.
    Idempotent."""
    global _routed
    with _lock:
        _routed = frozenset()
        while _originals:
            name, original = _originals.popitem()
            setattr(F, name, original)


@contextlib.contextmanager
def patched_torch(devices: Union[str, Sequence[str]] = ("cuda",)):
    """patch_torch(devices) for the duration of a with block; on exit, torch.nn.functional
    is as it was on entry (still patched, for the same devices, if it was already)."""
    with _lock:
        was_patched, was_routed = bool(_originals), tuple(_routed)
    patch_torch(devices)
    try:
        yield
    finally:
        if was_patched:
            patch_torch(was_routed)
        else:
            unpatch_torch()

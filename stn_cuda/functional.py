"""The spatial transformer's grid generator and sampler, with the signatures of
torch.nn.functional.grid_sample and affine_grid.

    grid_sample(input, grid)     the sampler: V = bilinear sample of U at each grid point
    affine_grid(theta, size)     the grid generator: (x_s, y_s) = theta . (x_t, y_t, 1)
    affine_sample(input, theta)  both fused: the grid is computed on the fly, never stored

Each works on images (4-D input, grid (N, H, W, 2), theta (N, 2, 3)) and, as torch's
do, on volumes (5-D input (N, C, D, H, W), grid (N, D, H, W, 3) holding (x, y, z),
theta (N, 3, 4)), where 'bilinear' is trilinear.
"""
import operator
import warnings
from typing import Optional, Sequence

import torch

from . import _C
from . import _functorch  # noqa: F401  (torch.func support: fills _ops.functorch_ops)
from ._ops import differentiable_ops

__all__ = ["grid_sample", "affine_grid", "affine_sample"]

_MODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}
_PADDING_MODES = {"zeros": 0, "border": 1, "reflection": 2}


def _mode_codes(fn: str, mode: str, padding_mode: str):
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(
            f"stn_cuda.{fn}(): expected mode to be 'bilinear', 'nearest' or 'bicubic', got {mode!r}")
    if not isinstance(padding_mode, str) or padding_mode not in _PADDING_MODES:
        raise ValueError(
            f"stn_cuda.{fn}(): expected padding_mode to be 'zeros', 'border' or 'reflection', "
            f"got {padding_mode!r}")
    return _MODES[mode], _PADDING_MODES[padding_mode]


def _type_name(value) -> str:
    """int, or numpy.bool: where a builtin's name alone would mislead."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _warn(message: str, stacklevel: int):
    """warnings.warn(message, stacklevel) from the calling function, as torch's functions warn;
    not while torch.compile traces, which cannot trace warnings.warn in a full graph."""
    if not torch.compiler.is_compiling():
        warnings.warn(message, stacklevel=stacklevel + 1)


def _align_corners(fn: str, align_corners) -> bool:
    """align_corners as torch takes it: a bool, or None for False, with torch's warning."""
    if align_corners is None:
        _warn("Default grid_sample and affine_grid behavior has changed to align_corners=False since "
              "1.3.0. Please specify align_corners=True if the old behavior is desired. See the "
              "documentation of grid_sample for details.", stacklevel=3)
        return False
    if not isinstance(align_corners, bool):
        raise TypeError(f"stn_cuda.{fn}(): expected align_corners to be a bool, got {_type_name(align_corners)}")
    return align_corners


def _check_tensor(fn: str, name: str, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"stn_cuda.{fn}(): expected {name} to be a torch.Tensor, got {_type_name(value)}")
    if value.is_cuda and not _C.built_with_cuda:
        raise RuntimeError(
            f"stn_cuda.{fn}(): {name} is on {value.device}, but stn_cuda was built without its "
            "CUDA kernels; rebuild it with nvcc available (FORCE_CUDA=1 makes that an error)")


def grid_sample(input: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: Optional[bool] = False) -> torch.Tensor:
    """Drop-in for torch.nn.functional.grid_sample (4-D and 5-D input; bilinear, nearest and,
    4-D only as in torch, bicubic).

    input (N, C, H_in, W_in) is sampled at grid (N, H_out, W_out, 2), whose last
    dimension holds normalised (x, y) in [-1, 1]; returns (N, C, H_out, W_out).
    A volume (N, C, D_in, H_in, W_in) is sampled at grid (N, D_out, H_out, W_out, 3)
    holding (x, y, z), trilinearly for mode='bilinear'; returns (N, C, D_out, H_out, W_out).
    Points outside the input are handled by padding_mode ('zeros', 'border' or
    'reflection'); align_corners=True maps -1 and 1 to the centres of the corner
    pixels rather than to their outer edges. Differentiable in input and grid.
    A grid point with a non-finite coordinate samples 0 and passes no gradient.
    """
    _check_tensor("grid_sample", "input", input)
    _check_tensor("grid_sample", "grid", grid)
    mode_code, padding_code = _mode_codes("grid_sample", mode, padding_mode)
    return differentiable_ops().grid_sample(input, grid, mode_code, padding_code,
                                            _align_corners("grid_sample", align_corners))


_SPATIAL = {2: "(H_out, W_out)", 3: "(D_out, H_out, W_out)"}


def _integers(fn: str, size: Sequence[int], name: str) -> list:
    """size's entries as ints; a float or anything else that is not an integer is an error, as in torch,
    and so is a size that is not a tuple or list (a tensor, an array). A symbolic size (torch.SymInt,
    under torch.compile) stays symbolic, so that a graph serves every size."""
    if not isinstance(size, (tuple, list)):  # torch.Size is a tuple
        raise TypeError(f"stn_cuda.{fn}(): expected {name} to be a tuple or list of ints, got {_type_name(size)}")
    try:
        # type() rather than isinstance: a bool is an int to convert; torch.compile traces a
        # SymInt as an int.
        return [s if type(s) is int or isinstance(s, torch.SymInt) else operator.index(s) for s in size]
    except TypeError:
        raise TypeError(f"stn_cuda.{fn}(): expected {name} to hold integers, got {tuple(size)}") from None


def _out_size(fn: str, size: Sequence[int], name: str, dims: int, context: str):
    """The output's spatial size: dims positive integers."""
    size = _integers(fn, size, name)
    if len(size) != dims:
        raise ValueError(f"stn_cuda.{fn}(): expected {name} to be {_SPATIAL[dims]} {context}, got {tuple(size)}")
    if any(s <= 0 for s in size):
        raise ValueError(f"stn_cuda.{fn}(): expected {name} to be positive, got {tuple(size)}")
    return size


def _check_theta(fn: str, theta: torch.Tensor, batch: Optional[int], dims: int, context: str):
    """theta (N, 2, 3) for images (dims 2), (N, 3, 4) for volumes (dims 3)."""
    _check_tensor(fn, "theta", theta)
    if theta.dim() != 3 or tuple(theta.shape[1:]) != (dims, dims + 1):
        raise ValueError(
            f"stn_cuda.{fn}(): expected theta of shape (N, {dims}, {dims + 1}) {context}, got {tuple(theta.shape)}")
    if batch is not None and theta.shape[0] != batch:
        raise ValueError(
            f"stn_cuda.{fn}(): expected theta's batch size {theta.shape[0]} to equal the input's, {batch}")


def affine_grid(theta: torch.Tensor, size: Sequence[int],
                align_corners: Optional[bool] = False) -> torch.Tensor:
    """Drop-in for torch.nn.functional.affine_grid (4-D and 5-D sizes): the grid generator.

    theta (N, 2, 3) and size (N, C, H_out, W_out) give the grid (N, H_out, W_out, 2)
    of source points theta . (x_t, y_t, 1) over the output's normalised coordinates;
    theta (N, 3, 4) and size (N, C, D_out, H_out, W_out) the grid (N, D_out, H_out, W_out, 3)
    of points theta . (x_t, y_t, z_t, 1). Differentiable in theta.
    """
    size = _integers("affine_grid", size, "size")
    if len(size) not in (4, 5):
        raise ValueError(
            f"stn_cuda.affine_grid(): expected size (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out), "
            f"got {tuple(size)}")
    if min(size) <= 0:  # N and C too, as torch's
        raise ValueError(f"stn_cuda.affine_grid(): expected size to be positive, got {tuple(size)}")
    dims = len(size) - 2
    _check_theta("affine_grid", theta, None, dims, f"for a {len(size)}-D size")
    if theta.shape[0] != size[0]:
        raise ValueError(
            f"stn_cuda.affine_grid(): expected theta's batch size {theta.shape[0]} to equal size[0], {size[0]}")
    align_corners = _align_corners("affine_grid", align_corners)
    if align_corners and min(size[2:]) == 1:
        _warn("Since version 1.3.0, affine_grid behavior has changed for unit-size grids when "
              "align_corners=True. This is not an intended use case of affine_grid. See the "
              "documentation of affine_grid for details.", stacklevel=2)
    return differentiable_ops().affine_grid(theta, size, align_corners)


def affine_sample(input: torch.Tensor, theta: torch.Tensor, out_size: Optional[Sequence[int]] = None,
                  mode: str = "bilinear", padding_mode: str = "zeros",
                  align_corners: Optional[bool] = False) -> torch.Tensor:
    """The grid generator and sampler fused: equals
    grid_sample(input, affine_grid(theta, (N, C, *out_size)), mode, padding_mode, align_corners)
    in value and in both gradients, but never materialises the grid.

    input (N, C, H_in, W_in), theta (N, 2, 3); out_size (H_out, W_out) defaults to
    the input's. For volumes: input (N, C, D_in, H_in, W_in), theta (N, 3, 4),
    out_size (D_out, H_out, W_out). Differentiable in input and theta.
    """
    _check_tensor("affine_sample", "input", input)
    if input.dim() not in (4, 5):
        raise ValueError(
            "stn_cuda.affine_sample(): expected input to be 4-D (N, C, H_in, W_in) or 5-D (N, C, D_in, H_in, W_in), "
            f"got shape {tuple(input.shape)}")
    dims, context = input.dim() - 2, f"for a {input.dim()}-D input"
    _check_theta("affine_sample", theta, input.shape[0], dims, context)
    out_size = _out_size("affine_sample", input.shape[2:] if out_size is None else out_size, "out_size", dims,
                         context)
    mode_code, padding_code = _mode_codes("affine_sample", mode, padding_mode)
    return differentiable_ops().affine_sample(input, theta, out_size, mode_code, padding_code,
                                              _align_corners("affine_sample", align_corners))

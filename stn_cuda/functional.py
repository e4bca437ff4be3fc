"""The spatial transformer's grid generator and sampler, with the signatures of
torch.nn.functional.grid_sample and affine_grid.

    grid_sample(input, grid)     the sampler: V = bilinear sample of U at each grid point
    affine_grid(theta, size)     the grid generator: (x_s, y_s) = theta . (x_t, y_t, 1)
    affine_sample(input, theta)  both fused: the grid is computed on the fly, never stored
"""
from typing import Optional, Sequence

import torch

from . import _C
from ._ops import ops

__all__ = ["grid_sample", "affine_grid", "affine_sample"]

_MODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}
_PADDING_MODES = {"zeros": 0, "border": 1, "reflection": 2}


def _mode_codes(fn: str, mode: str, padding_mode: str):
    if mode not in _MODES:
        raise ValueError(
            f"stn_cuda.{fn}(): expected mode to be 'bilinear', 'nearest' or 'bicubic', got {mode!r}")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(
            f"stn_cuda.{fn}(): expected padding_mode to be 'zeros', 'border' or 'reflection', "
            f"got {padding_mode!r}")
    return _MODES[mode], _PADDING_MODES[padding_mode]


def _check_tensor(fn: str, name: str, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"stn_cuda.{fn}(): expected {name} to be a torch.Tensor, got {type(value).__name__}")
    if value.is_cuda and not _C.built_with_cuda:
        raise RuntimeError(
            f"stn_cuda.{fn}(): {name} is on {value.device}, but stn_cuda was built without its "
            "CUDA kernels; rebuild it with nvcc available (FORCE_CUDA=1 makes that an error)")


def grid_sample(input: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: Optional[bool] = False) -> torch.Tensor:
    """Drop-in for torch.nn.functional.grid_sample (4-D input; bilinear, nearest or bicubic).

    input (N, C, H_in, W_in) is sampled at grid (N, H_out, W_out, 2), whose last
    dimension holds normalised (x, y) in [-1, 1]; returns (N, C, H_out, W_out).
    Points outside the input are handled by padding_mode ('zeros', 'border' or
    'reflection'); align_corners=True maps -1 and 1 to the centres of the corner
    pixels rather than to their outer edges. Differentiable in input and grid.
    A grid point with a non-finite coordinate samples 0 and passes no gradient.
    """
    _check_tensor("grid_sample", "input", input)
    _check_tensor("grid_sample", "grid", grid)
    mode_code, padding_code = _mode_codes("grid_sample", mode, padding_mode)
    return ops.grid_sample(input, grid, mode_code, padding_code, bool(align_corners))


def _out_hw(fn: str, size: Sequence[int], name: str):
    size = tuple(size)
    if len(size) != 2:
        raise ValueError(f"stn_cuda.{fn}(): expected {name} to be (H_out, W_out), got {size}")
    if any(int(s) <= 0 for s in size):
        raise ValueError(f"stn_cuda.{fn}(): expected {name} to be positive, got {size}")
    return int(size[0]), int(size[1])


def _check_theta(fn: str, theta: torch.Tensor, batch: Optional[int] = None):
    _check_tensor(fn, "theta", theta)
    if theta.dim() != 3 or tuple(theta.shape[1:]) != (2, 3):
        if theta.dim() == 3 and tuple(theta.shape[1:]) == (3, 4):
            raise NotImplementedError(f"stn_cuda.{fn}(): 3-D (volumetric) transforms are not implemented yet")
        raise ValueError(f"stn_cuda.{fn}(): expected theta of shape (N, 2, 3), got {tuple(theta.shape)}")
    if batch is not None and theta.shape[0] != batch:
        raise ValueError(
            f"stn_cuda.{fn}(): expected theta's batch size {theta.shape[0]} to equal the input's, {batch}")


def affine_grid(theta: torch.Tensor, size: Sequence[int],
                align_corners: Optional[bool] = False) -> torch.Tensor:
    """Drop-in for torch.nn.functional.affine_grid (4-D sizes): the grid generator.

    theta (N, 2, 3) and size (N, C, H_out, W_out) give the grid (N, H_out, W_out, 2)
    of source points theta . (x_t, y_t, 1) over the output's normalised coordinates.
    Differentiable in theta.
    """
    size = tuple(size)
    if len(size) != 4:
        raise ValueError(f"stn_cuda.affine_grid(): expected size (N, C, H_out, W_out), got {size}")
    _check_theta("affine_grid", theta, size[0])
    height, width = _out_hw("affine_grid", size[2:], "size[2:]")
    return ops.affine_grid(theta, height, width, bool(align_corners))


def affine_sample(input: torch.Tensor, theta: torch.Tensor, out_size: Optional[Sequence[int]] = None,
                  mode: str = "bilinear", padding_mode: str = "zeros",
                  align_corners: Optional[bool] = False) -> torch.Tensor:
    """The grid generator and sampler fused: equals
    grid_sample(input, affine_grid(theta, (N, C, *out_size)), mode, padding_mode, align_corners)
    in value and in both gradients, but never materialises the grid.

    input (N, C, H_in, W_in), theta (N, 2, 3); out_size (H_out, W_out) defaults to
    the input's. Differentiable in input and theta.
    """
    _check_tensor("affine_sample", "input", input)
    _check_theta("affine_sample", theta, input.shape[0] if input.dim() > 0 else None)
    if out_size is None:
        if input.dim() != 4:
            raise ValueError(
                f"stn_cuda.affine_sample(): expected input to be 4-D (N, C, H_in, W_in), got shape {tuple(input.shape)}")
        out_size = input.shape[2:]
    height, width = _out_hw("affine_sample", out_size, "out_size")
    mode_code, padding_code = _mode_codes("affine_sample", mode, padding_mode)
    return ops.affine_sample(input, theta, height, width, mode_code, padding_code, bool(align_corners))

"""What the dispatcher cannot know about stn_cuda's C++ ops: their fake (meta)
kernels, for torch.compile and shape propagation, and their autograd formulas.

The ops themselves (schemas, checks, CPU and CUDA kernels, autocast casts) are in csrc/.
"""
import torch

from . import _C  # noqa: F401  (loads the library, registering torch.ops.stn_cuda)

ops = torch.ops.stn_cuda


# -- fake kernels: output shapes and dtypes only -------------------------------

@torch.library.register_fake("stn_cuda::grid_sample")
def _(input, grid, interpolation_mode, padding_mode, align_corners):
    # (N, C, [D_out,] H_out, W_out): the grid's points, the input's channels
    return input.new_empty(input.shape[0], input.shape[1], *grid.shape[1:-1])


@torch.library.register_fake("stn_cuda::grid_sample_backward")
def _(grad_output, input, grid, interpolation_mode, padding_mode, align_corners, output_mask):
    grad_input = torch.empty_like(input) if output_mask[0] else None
    grad_grid = torch.empty_like(grid, memory_format=torch.contiguous_format) if output_mask[1] else None
    return grad_input, grad_grid


@torch.library.register_fake("stn_cuda::affine_grid")
def _(theta, size, align_corners):
    # size (N, C, [D_out,] H_out, W_out) -> grid (N, [D_out,] H_out, W_out, 2 or 3)
    return theta.new_empty(size[0], *size[2:], len(size) - 2)


@torch.library.register_fake("stn_cuda::affine_grid_backward")
def _(grad_grid, align_corners):
    dims = grad_grid.shape[-1]
    return grad_grid.new_empty(grad_grid.shape[0], dims, dims + 1)


@torch.library.register_fake("stn_cuda::affine_sample")
def _(input, theta, out_size, interpolation_mode, padding_mode, align_corners):
    return input.new_empty(input.shape[0], input.shape[1], *out_size)


@torch.library.register_fake("stn_cuda::affine_sample_backward")
def _(grad_output, input, theta, interpolation_mode, padding_mode, align_corners, output_mask):
    grad_input = torch.empty_like(input) if output_mask[0] else None
    grad_theta = torch.empty_like(theta, memory_format=torch.contiguous_format) if output_mask[1] else None
    return grad_input, grad_theta


# -- autograd ----------------------------------------------------------------------
# Each forward op saves its tensor inputs and options; its backward op returns the
# gradients that are needed and skips the work (and allocation) of the others.

def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:2])
    ctx.options = inputs[2:]


def _grid_sample_backward(ctx, grad_output):
    input, grid = ctx.saved_tensors
    grad_input, grad_grid = ops.grid_sample_backward(
        grad_output, input, grid, *ctx.options, list(ctx.needs_input_grad[:2]))
    return grad_input, grad_grid, None, None, None


def _affine_sample_backward(ctx, grad_output):
    input, theta = ctx.saved_tensors
    _out_size, *options = ctx.options
    grad_input, grad_theta = ops.affine_sample_backward(
        grad_output, input, theta, *options, list(ctx.needs_input_grad[:2]))
    return grad_input, grad_theta, None, None, None, None


def _affine_grid_setup(ctx, inputs, output):
    ctx.align_corners = inputs[2]


def _affine_grid_backward(ctx, grad_grid):
    return ops.affine_grid_backward(grad_grid, ctx.align_corners), None, None


torch.library.register_autograd(
    "stn_cuda::grid_sample", _grid_sample_backward, setup_context=_save_inputs)
torch.library.register_autograd(
    "stn_cuda::affine_sample", _affine_sample_backward, setup_context=_save_inputs)
torch.library.register_autograd(
    "stn_cuda::affine_grid", _affine_grid_backward, setup_context=_affine_grid_setup)

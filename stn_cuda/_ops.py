"""What the dispatcher cannot know about stn_cuda's C++ ops: their fake (meta)
kernels, for torch.compile and shape propagation, and the backward ops' autograd
formulas (double backward: gradients of gradients).

The ops themselves (schemas, checks, CPU and CUDA kernels, autocast casts, the forward
ops' autograd) are in csrc/; their torch.func support in stn_cuda/_functorch.py.
"""
import types

import torch
from torch.autograd import forward_ad

from . import _C  # noqa: F401  (loads the library, registering torch.ops.stn_cuda)
from . import _reference

ops = torch.ops.stn_cuda

# functorch's transforms (torch.func.grad, vjp, jacrev, vmap) refuse the forward ops' C++
# autograd and torch.library's Python autograd of the backward ops, and C++ autograd
# Functions have no forward mode: while a transform is active or a forward-AD dual level
# is open, autograd goes through Python autograd.Functions of the same ops instead, which
# stn_cuda/_functorch.py puts here under the ops' names, with the ops' signatures.
functorch_ops = types.SimpleNamespace()


def differentiable_ops():
    """The ops as a differentiable computation calls them: torch.ops', or while a
    torch.func transform is active or a forward-AD dual level open, functorch_ops
    (torch.compile takes the test for a constant)."""
    if torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
        return functorch_ops
    return ops

try:  # Tensor.suggest_memory_format, which Python tensors lack (FakeTensor included)
    from torch._prims_common import suggest_memory_format
except ImportError:  # older torch
    def suggest_memory_format(t):
        channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
        if channels_last is not None and t.is_contiguous(memory_format=channels_last) and not t.is_contiguous():
            return channels_last
        return torch.contiguous_format


# -- fake kernels: output shapes and dtypes only -------------------------------

def _check_same_device(op, name, t, other_name, other):
    # As csrc/ops.cpp checks it: a meta tensor beside a real one is refused too.
    torch._check_value(t.device == other.device, lambda: (
        f"{op}: expected {name} and {other_name} on the same device, got {name} on {t.device} and "
        f"{other_name} on {other.device}"))


@torch.library.register_fake("stn_cuda::grid_sample")
def _(input, grid, interpolation_mode, padding_mode, align_corners):
    _check_same_device("stn_cuda.grid_sample", "input", input, "grid", grid)
    # (N, C, [D_out,] H_out, W_out): the grid's points, the input's channels
    return input.new_empty(input.shape[0], input.shape[1], *grid.shape[1:-1])


def _like_grad_input(input):
    # As the op allocates it: dense in the input's suggested memory format (csrc/ops.cpp).
    return torch.empty_like(input, memory_format=suggest_memory_format(input))


@torch.library.register_fake("stn_cuda::grid_sample_backward")
def _(grad_output, input, grid, interpolation_mode, padding_mode, align_corners, output_mask,
      deterministic=False):
    grad_input = _like_grad_input(input) if output_mask[0] else None
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
    _check_same_device("stn_cuda.affine_sample", "input", input, "theta", theta)
    return input.new_empty(input.shape[0], input.shape[1], *out_size)


@torch.library.register_fake("stn_cuda::affine_sample_backward")
def _(grad_output, input, theta, interpolation_mode, padding_mode, align_corners, output_mask,
      deterministic=False):
    grad_input = _like_grad_input(input) if output_mask[0] else None
    grad_theta = torch.empty_like(theta, memory_format=torch.contiguous_format) if output_mask[1] else None
    return grad_input, grad_theta


# -- double backward ------------------------------------------------------------------------
# The backward ops' own autograd (the forward ops' is in csrc/autograd.cpp, whose backward
# calls these ops through it where create_graph=True, and straight to their kernels
# otherwise). Their results are
#     grad_input = S(grid)^T grad_output       linear in grad_output, independent of input
#     grad_grid  = (d S(grid) input / d grid)^T grad_output
# (S: the sampler as a matrix; for affine_sample, grid = affine_grid(theta) and
# grad_theta = affine_grid_backward(grad_grid)). Whatever has a closed form in the fast ops
# uses them; the rest (the grid's second derivatives) differentiates the reference twice.
# Every formula is differentiable again, so higher orders work too.

def _add(a, b):
    return b if a is None else a if b is None else a + b


def _sampler_grid_terms(grad_output, input, grid, gg_grid, options, needs):
    """The derivatives of <gg_grid, grad_grid(grad_output, input, grid)> with respect to
    grad_output, input and grid (None where not needed), from the reference."""
    if options[0] == _reference.NEAREST or not any(needs):
        return None, None, None  # nearest's grad_grid is 0 everywhere
    # By torch.func's vjp, which works inside its transforms as outside them, and whose
    # results are differentiable again where a graph is recorded.
    def grad_grid(go, x, g):
        return torch.func.vjp(lambda g: _reference.grid_sample(x, g, *options), g)[1](go)[0]

    terms = torch.func.vjp(grad_grid, grad_output, input, grid)[1](gg_grid)
    return tuple(t if need else None for t, need in zip(terms, needs))


def _save_backward_inputs(ctx, inputs, output):
    # An unused gradient comes as None, not zeros: no reference runs for a grad_grid
    # that nothing depends on (a penalty on grad_input alone).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:3])
    ctx.options = inputs[3:6]
    # A call that asked for the deterministic path asks for it again below (the flags in force
    # are read by the ops themselves).
    ctx.deterministic = len(inputs) > 7 and inputs[7]


def _grid_sample_double_backward(ctx, gg_input, gg_grid):
    grad_output, input, grid = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    op = differentiable_ops()
    d_go = d_input = d_grid = None
    if gg_input is not None:
        # <gg_input, S^T grad_output> = <S gg_input, grad_output>: the sampler applied to
        # gg_input, and its gradient with respect to the grid.
        if needs[0]:
            d_go = op.grid_sample(gg_input, grid, *ctx.options)
        if needs[2]:
            d_grid = op.grid_sample_backward(grad_output, gg_input, grid, *ctx.options, [False, True],
                                              ctx.deterministic)[1]
    if gg_grid is not None:
        terms = _sampler_grid_terms(grad_output, input, grid, gg_grid, ctx.options, needs)
        d_go, d_input, d_grid = map(_add, (d_go, d_input, d_grid), terms)
    return d_go, d_input, d_grid, None, None, None, None, None


def _affine_sample_double_backward(ctx, gg_input, gg_theta):
    grad_output, input, theta = ctx.saved_tensors
    align_corners = ctx.options[2]
    out_size = grad_output.shape[2:]
    needs = ctx.needs_input_grad[:3]
    op = differentiable_ops()
    d_go = d_input = d_theta = None
    if gg_input is not None:  # as for grid_sample, with the fused ops
        if needs[0]:
            d_go = op.affine_sample(gg_input, theta, out_size, *ctx.options)
        if needs[2]:
            d_theta = op.affine_sample_backward(grad_output, gg_input, theta, *ctx.options, [False, True],
                                                 ctx.deterministic)[1]
    if gg_theta is not None:
        # grad_theta = affine_grid_backward(grad_grid), whose adjoint is affine_grid: the
        # grid's terms, with the grid and gg_grid generated (in float32 at least).
        dtype = torch.promote_types(theta.dtype, torch.float32)
        grid = op.affine_grid(theta.to(dtype), grad_output.shape, align_corners)
        gg_grid = op.affine_grid(gg_theta.to(dtype), grad_output.shape, align_corners)
        t_go, t_input, t_grid = _sampler_grid_terms(grad_output, input, grid, gg_grid, ctx.options, needs)
        t_theta = None if t_grid is None else op.affine_grid_backward(t_grid, align_corners).to(theta.dtype)
        d_go, d_input, d_theta = map(_add, (d_go, d_input, d_theta), (t_go, t_input, t_theta))
    return d_go, d_input, d_theta, None, None, None, None, None


def _affine_grid_backward_setup(ctx, inputs, output):
    grad_grid, ctx.align_corners = inputs
    # affine_grid's size (N, C, [D,] H, W); any C.
    ctx.size = (grad_grid.shape[0], 1, *grad_grid.shape[1:-1])


def _affine_grid_double_backward(ctx, gg_theta):
    # affine_grid_backward is linear in grad_grid, the adjoint of affine_grid.
    return differentiable_ops().affine_grid(gg_theta, ctx.size, ctx.align_corners), None


for _name, _backward, _setup in [
        ("grid_sample_backward", _grid_sample_double_backward, _save_backward_inputs),
        ("affine_sample_backward", _affine_sample_double_backward, _save_backward_inputs),
        ("affine_grid_backward", _affine_grid_double_backward, _affine_grid_backward_setup)]:
    torch.library.register_autograd(f"stn_cuda::{_name}", _backward, setup_context=_setup)

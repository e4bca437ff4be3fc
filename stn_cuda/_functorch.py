"""torch.func support: grad, vjp, jacrev and vmap, and their compositions
(vmap(grad(f)): per-sample gradients; grad(grad(f))); and forward-mode AD of affine_grid.

functorch's transforms refuse the forward ops' C++ autograd (csrc/autograd.cpp) and the
Python autograd that torch.library gives the backward ops (stn_cuda/_ops.py). While one
is active, stn_cuda calls the autograd.Functions below instead (_ops.functorch_ops): the
same ops, forward and backward, with the same formulas, so the same values and
gradients. Under vmap, each op's own vmap rule (registered here) folds the vmapped
dimension into the batch: one call for all of it.

Forward mode (torch.func.jvp, jacfwd, torch.autograd.forward_ad's dual tensors) goes
through them too: affine_grid, linear in theta, has a jvp, as torch's (a composite of
linear ops) does; the samplers refuse it, as torch's grid_sample does.
"""
import torch

from . import _ops

ops = _ops.ops


def _no_jvp(name):
    def jvp(ctx, *tangents):
        raise NotImplementedError(f"stn_cuda.{name}: forward-mode AD is not supported "
                                  "(neither is it by torch's grid_sample); use reverse mode")
    return jvp


def _function(name, forward, setup_context, backward, jvp):
    """An autograd.Function of op `name` in the form functorch takes (forward without ctx,
    setup_context apart; vmap by the ops' rules)."""
    return type(f"{name}_function", (torch.autograd.Function,), {
        "generate_vmap_rule": True, "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context), "backward": staticmethod(backward),
        "jvp": staticmethod(jvp or _no_jvp(name))})


def _save_sampler_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:2])  # input, and grid or theta
    ctx.options = inputs[2:]


def _sampler_backward(backward_op):
    """A sampler's first backward, by its backward op, as csrc/autograd.cpp's computes it."""
    def backward(ctx, grad_output):
        # The inputs as the kernel saw them: under autocast, the op's cast (csrc/autocast.cpp)
        # gave both grad_output's dtype, which is the output's.
        input, source = (t.to(grad_output.dtype) for t in ctx.saved_tensors)
        sampling = ctx.options[-3:]  # interpolation, padding, align_corners
        grads = getattr(_ops.functorch_ops, backward_op)(
            grad_output, input, source, *sampling, list(ctx.needs_input_grad[:2]))
        return (*grads, *(None for _ in ctx.options))
    return backward


def _save_affine_grid_inputs(ctx, inputs, output):
    _, ctx.size, ctx.align_corners = inputs


def _affine_grid_backward(ctx, grad_grid):
    return _ops.functorch_ops.affine_grid_backward(grad_grid, ctx.align_corners), None, None


def _affine_grid_jvp(ctx, theta_tangent, *_):
    # affine_grid is linear in theta: its tangent is the grid of theta's tangent.
    return _ops.differentiable_ops().affine_grid(theta_tangent, ctx.size, ctx.align_corners)


def _affine_grid_backward_jvp(ctx, grad_grid_tangent, _):
    return _ops.differentiable_ops().affine_grid_backward(grad_grid_tangent, ctx.align_corners)


_FUNCTIONS = {  # name: setup_context, backward, jvp (None: forward mode refused)
    "grid_sample": (_save_sampler_inputs, _sampler_backward("grid_sample_backward"), None),
    "affine_sample": (_save_sampler_inputs, _sampler_backward("affine_sample_backward"), None),
    "affine_grid": (_save_affine_grid_inputs, _affine_grid_backward, _affine_grid_jvp),
    "grid_sample_backward": (_ops._save_backward_inputs, _ops._grid_sample_double_backward, None),
    "affine_sample_backward": (_ops._save_backward_inputs, _ops._affine_sample_double_backward, None),
    "affine_grid_backward": (_ops._affine_grid_backward_setup, _ops._affine_grid_double_backward,
                             _affine_grid_backward_jvp),
}

for _name, (_setup, _backward, _jvp) in _FUNCTIONS.items():
    # The forward, with grad mode off, goes straight to the kernels. torch.compile runs
    # these eagerly, at a graph break: it cannot trace the C++ ops under a transform.
    _fn = _function(_name, getattr(ops, _name).default, _setup, _backward, _jvp)
    setattr(_ops.functorch_ops, _name, torch.compiler.disable(_fn.apply, recursive=True))


# -- vmap rules: the vmapped dimension folded into the batch (dimension 0) -------------------

def _fold(info, tensor, dim, at=0):
    """tensor's vmapped dimension (None: not vmapped, so broadcast) merged into its
    dimension `at`, ahead of it: at 0, one batch of info.batch_size * N."""
    if tensor is None:
        return None
    if dim is None:
        tensor, dim = tensor.expand(info.batch_size, *tensor.shape), 0
    return tensor.movedim(dim, at).flatten(at, at + 1)


def _unfold(info, tensor, size, at=0):
    """_fold undone: the vmapped dimension out of tensor's dimension `at`, first, where one
    sample's dimension `at` has `size` entries (which -1 cannot infer from an empty batch)."""
    return None if tensor is None else tensor.unflatten(at, (info.batch_size, size)).movedim(at, 0)


def _sample_size(tensor, dim, i):
    """The size of one sample's dimension i, of a tensor vmapped over dimension dim (None: not
    vmapped)."""
    if dim is not None and dim % tensor.dim() <= i:
        i += 1
    return tensor.shape[i]


def _vmap_rule(op, tensors, size_arg=None):
    """The rule of an op whose first `tensors` arguments are batched tensors (and whose
    argument size_arg, if any, is affine_grid's size, whose N grows with the batch)."""
    def rule(info, in_dims, *args):
        n = _sample_size(args[0], in_dims[0], 0)  # every tensor argument's and output's N
        args = [_fold(info, a, d) for a, d in zip(args[:tensors], in_dims)] + list(args[tensors:])
        if size_arg is not None:
            args[size_arg] = [info.batch_size * args[size_arg][0], *args[size_arg][1:]]
        out = op(*args)
        if isinstance(out, torch.Tensor):
            return _unfold(info, out, n), 0
        return tuple(_unfold(info, o, n) for o in out), tuple(None if o is None else 0 for o in out)
    return rule


# One input, many grids: the grids side by side along their first spatial dimension (a grid's
# dimension 1, an output's 2) sample the input once, where a fold into the batch would copy it
# per grid.

_fold_rule = _vmap_rule(ops.grid_sample.default, 2)
_fold_backward_rule = _vmap_rule(ops.grid_sample_backward.default, 3)


def _grid_sample_rule(info, in_dims, input, grid, *options):
    if in_dims[0] is not None:
        return _fold_rule(info, in_dims, input, grid, *options)
    output = ops.grid_sample(input, _fold(info, grid, in_dims[1], 1), *options)
    return _unfold(info, output, _sample_size(grid, in_dims[1], 1), 2), 0


def _grid_sample_backward_rule(info, in_dims, grad_output, input, grid, *options):
    output_mask = options[3]  # after interpolation, padding and align_corners
    if in_dims[1] is not None or output_mask[0]:  # a grad_input per grid: the input folded
        return _fold_backward_rule(info, in_dims, grad_output, input, grid, *options)
    _, grad_grid = ops.grid_sample_backward(
        _fold(info, grad_output, in_dims[0], 2), input,
        _fold(info, grid, in_dims[2], 1), *options)
    return (None, _unfold(info, grad_grid, _sample_size(grid, in_dims[2], 1), 1)), (None, 0)


torch.library.register_vmap("stn_cuda::grid_sample", _grid_sample_rule)
torch.library.register_vmap("stn_cuda::grid_sample_backward", _grid_sample_backward_rule)
for _name, _tensors, _size_arg in [("affine_sample", 2, None), ("affine_grid", 1, 1),
                                   ("affine_sample_backward", 3, None), ("affine_grid_backward", 1, None)]:
    torch.library.register_vmap(f"stn_cuda::{_name}", _vmap_rule(getattr(ops, _name).default, _tensors, _size_arg))

"""Double backward (gradients of gradients) of grid_sample, affine_sample and affine_grid,
which torch's grid_sample lacks, and the reference sampler (stn_cuda/_reference.py) that
the backward ops' autograd differentiates.

gradcheck's finite differences are only valid where the sampler is smooth, so the grids
and thetas here keep every pixel position away from the kinks: integers (tap changes,
borders, reflections with align_corners) and half-integers (nearest's rounding,
reflections without). Volumes (5-D, trilinear and nearest) are tested as images are, on
smaller shapes."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import stn_cuda
from stn_cuda import _reference
from stn_cuda.functional import _MODES, _PADDING_MODES
from helpers import Ops, assert_rerun_matches, leaf, random_theta, special_grid

MODES = ["bilinear", "nearest", "bicubic"]
VOLUME_MODES = ["bilinear", "nearest"]  # trilinear and nearest
ops = torch.ops.stn_cuda


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def require(mode):
    """Skip unless stn_cuda implements mode (bicubic is on its way)."""
    try:
        stn_cuda.grid_sample(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 2), mode=mode)
    except NotImplementedError:
        pytest.skip(f"stn_cuda does not implement mode={mode!r} yet")


def ours(mode, padding_mode, align_corners):
    return functools.partial(stn_cuda.grid_sample, mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners)


def reference(mode, padding_mode, align_corners):
    return functools.partial(_reference.grid_sample, interpolation_mode=_MODES[mode],
                             padding_mode=_PADDING_MODES[padding_mode], align_corners=align_corners)


def theirs(mode, padding_mode, align_corners):
    return functools.partial(F.grid_sample, mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners)


def output_and_grads(fn, args, grad_output):
    """fn(*args) and the gradients of <fn(*args), grad_output> with respect to every argument
    (zeros where it does not depend on one, as nearest on the grid)."""
    args = [leaf(a) for a in args]
    out = fn(*args)
    return [out, *torch.autograd.grad(out, args, grad_output, allow_unused=True, materialize_grads=True)]


def assert_same_function(fn, ref_fn, args, atol=1e-10, rtol=1e-8):
    """fn and ref_fn agree on args: values and first gradients."""
    grad_output = torch.randn_like(ref_fn(*args))
    torch.testing.assert_close(output_and_grads(fn, args, grad_output),
                               output_and_grads(ref_fn, args, grad_output), atol=atol, rtol=rtol)


def random_input(n, c, *in_size, device, dtype=torch.float64):
    return torch.randn(n, c, *in_size, dtype=dtype, device=device)


def random_grid(n, out_size, device, dtype=torch.float64, spread=1.0):
    """(N, *out_size, 2 or 3) coordinates uniform in [-spread, spread]."""
    return (torch.rand(n, *out_size, len(out_size), dtype=dtype, device=device) * 2 - 1) * spread


def with_special_points(grid):
    """A copy of grid (N >= 2, >= 20 points each) with non-finite coordinates, on one axis or
    all, and huge ones."""
    grid = grid.clone()
    points = grid.view(grid.shape[0], -1, grid.shape[-1])
    points[0, 6, 0] = math.nan          # x only
    points[1, 19, -1] = math.inf        # the last axis only (y or z)
    points[1, 0, :] = -math.inf         # all
    points[0, 1, 0] = 1e30              # huge, both signs
    points[1, 10, 1] = -1e10
    points[0, 15, :] = 3e38             # overflows when unnormalised in float32
    return grid


NON_FINITE_POINTS = [(0, 6), (1, 19), (1, 0)]  # (n, point) of with_special_points


def to_pixels(coords, size, align_corners):
    return stn_cuda._reference.unnormalize(coords, size, align_corners)


def smooth_grid(n, out_size, in_size, align_corners, device, reach=2):
    """A random (N, *out_size, 2 or 3) grid for an input of spatial size in_size ([D,] H, W)
    whose pixel positions lie up to `reach` pixels outside it and at least 0.1 pixel from
    every multiple of 0.5."""
    def axis(size):
        whole = torch.randint(-reach, size + reach, (n, *out_size), device=device)
        part = 0.1 + 0.3 * torch.rand(n, *out_size, dtype=torch.float64, device=device)
        part = part + 0.5 * torch.randint(0, 2, (n, *out_size), device=device)  # [.1, .4] or [.6, .9]
        pixels = whole + part
        return pixels * 2 / (size - 1) - 1 if align_corners else (2 * pixels + 1) / size - 1
    return torch.stack([axis(size) for size in in_size[::-1]], -1)  # x, y[, z]


def smooth_theta(n, out_size, in_size, align_corners, device, margin=0.01):
    """A random theta near the identity, (N, 2, 3) or (N, 3, 4) as in_size is (H, W) or
    (D, H, W), whose grid keeps `margin` pixels from every kink."""
    for _ in range(1000):
        theta = random_theta(n, device=device, dims=len(in_size))
        grid = F.affine_grid(theta, (n, 1, *out_size), align_corners=align_corners)
        pixels = torch.stack([to_pixels(grid[..., axis], size, align_corners)
                              for axis, size in enumerate(in_size[::-1])])
        if ((2 * pixels - torch.round(2 * pixels)).abs() >= 2 * margin).all():
            return theta
    raise AssertionError("no theta away from the kinks")


# -- the reference is the sampler ------------------------------------------------------------

SHAPES = [(2, 3, 7, 5, 4, 6), (1, 1, 1, 1, 3, 3), (3, 2, 13, 1, 5, 7), (1, 4, 1, 17, 2, 11)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_reference_matches_torch(device, mode, padding_mode, align_corners, shape):
    n, c, h, w, h_out, w_out = shape
    input = random_input(n, c, h, w, device=device)
    grid = random_grid(n, (h_out, w_out), device, spread=3.0)
    assert_same_function(reference(mode, padding_mode, align_corners),
                         theirs(mode, padding_mode, align_corners), (input, grid))


def test_reference_matches_torch_at_the_kinks(device, mode, padding_mode, align_corners):
    """Pixel centres and edges, where taps change: the reference takes ATen's side."""
    input = random_input(1, 2, 5, 8, device=device)
    assert_same_function(reference(mode, padding_mode, align_corners),
                         theirs(mode, padding_mode, align_corners), (input, special_grid((5, 8), device)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_reference_matches_stn_at_non_finite_and_huge_points(device, mode, padding_mode, align_corners, dtype):
    """stn_cuda's own rules, where torch differs or has no defined result."""
    require(mode)
    check_special_points(mode, padding_mode, align_corners, dtype, (6, 7), (5, 4), device)


def check_special_points(mode, padding_mode, align_corners, dtype, in_size, out_size, device):
    input = random_input(2, 3, *in_size, device=device, dtype=dtype)
    grid = with_special_points(random_grid(2, out_size, device, dtype, spread=1.5))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_same_function(ours(mode, padding_mode, align_corners),
                         reference(mode, padding_mode, align_corners), (input, grid), atol=tol, rtol=tol)


# (N, C, (D, H, W), (D_out, H_out, W_out)): odd, prime and 1-sized dimensions
VOLUME_SHAPES = [(2, 3, (3, 5, 4), (2, 3, 4)), (1, 1, (1, 1, 1), (2, 1, 3)), (1, 2, (4, 1, 5), (3, 2, 1)),
                 (2, 1, (2, 3, 1), (1, 1, 5))]


@pytest.mark.parametrize("mode", VOLUME_MODES)
@pytest.mark.parametrize("shape", VOLUME_SHAPES, ids=str)
def test_volume_reference_matches_torch(device, mode, padding_mode, align_corners, shape):
    n, c, in_size, out_size = shape
    input, grid = random_input(n, c, *in_size, device=device), random_grid(n, out_size, device, spread=3.0)
    assert_same_function(reference(mode, padding_mode, align_corners),
                         theirs(mode, padding_mode, align_corners), (input, grid))


@pytest.mark.parametrize("mode", VOLUME_MODES)
def test_volume_reference_matches_torch_at_the_kinks(device, mode, padding_mode, align_corners):
    input = random_input(1, 2, 3, 2, 4, device=device)
    assert_same_function(reference(mode, padding_mode, align_corners),
                         theirs(mode, padding_mode, align_corners), (input, special_grid((3, 2, 4), device)))


@pytest.mark.parametrize("mode", VOLUME_MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_volume_reference_matches_stn_at_non_finite_and_huge_points(device, mode, padding_mode, align_corners,
                                                                    dtype):
    check_special_points(mode, padding_mode, align_corners, dtype, (3, 4, 5), (2, 3, 4), device)


# -- gradgradcheck -----------------------------------------------------------------------------

def test_grid_sample_gradgradcheck(device, mode, padding_mode, align_corners):
    require(mode)
    input = random_input(1, 2, 4, 5, device=device).requires_grad_()
    grid = smooth_grid(1, (3, 3), (4, 5), align_corners, device).requires_grad_()
    assert gradgradcheck(ours(mode, padding_mode, align_corners), (input, grid))


@pytest.mark.parametrize("mode", VOLUME_MODES)
def test_volume_grid_sample_gradgradcheck(device, mode, padding_mode, align_corners):
    input = random_input(1, 2, 2, 3, 4, device=device).requires_grad_()
    grid = smooth_grid(1, (2, 1, 2), (2, 3, 4), align_corners, device).requires_grad_()
    assert gradgradcheck(ours(mode, padding_mode, align_corners), (input, grid))


def test_grid_sample_gradgradcheck_batch(device, padding_mode):
    input = random_input(2, 2, 3, 4, device=device).requires_grad_()
    grid = smooth_grid(2, (2, 3), (3, 4), False, device).requires_grad_()
    assert gradgradcheck(ours("bilinear", padding_mode, False), (input, grid))


@pytest.mark.parametrize("mode", VOLUME_MODES)
@pytest.mark.parametrize("in_size,out_size", [((4, 5), (3, 3)), ((2, 3, 4), (2, 2, 2))], ids=["2d", "3d"])
def test_affine_sample_gradgradcheck(device, mode, padding_mode, align_corners, in_size, out_size):
    input = random_input(2, 1, *in_size, device=device).requires_grad_()
    theta = smooth_theta(2, out_size, in_size, align_corners, device).requires_grad_()
    sample = functools.partial(stn_cuda.affine_sample, out_size=out_size, mode=mode,
                               padding_mode=padding_mode, align_corners=align_corners)
    assert gradgradcheck(sample, (input, theta))


def test_affine_grid_gradgradcheck(device, align_corners):
    theta = random_theta(2, device=device).requires_grad_()
    assert gradgradcheck(functools.partial(stn_cuda.affine_grid, size=(2, 1, 3, 4),
                                           align_corners=align_corners), (theta,))


# -- gradient penalties ----------------------------------------------------------------------------

def penalty_gradients(sample, input, grid, grad_output, create_graph=False):
    """d/d(input, grid) of ||d out/d input||^2 + ||d out/d grid||^2, the gradients of
    <out, grad_output>: a gradient penalty."""
    first = torch.autograd.grad(sample(input, grid), (input, grid), grad_output, create_graph=True)
    penalty = sum(g.square().sum() for g in first)
    return torch.autograd.grad(penalty, (input, grid), allow_unused=True, materialize_grads=True,
                               create_graph=create_graph)


@pytest.mark.parametrize("mode,in_size,out_size", [("bilinear", (6, 7), (5, 4)), ("bicubic", (6, 7), (5, 4)),
                                                    ("bilinear", (3, 4, 5), (2, 3, 4))], ids=["2d", "bicubic", "3d"])
def test_gradient_penalty_matches_reference(device, mode, padding_mode, align_corners, in_size, out_size):
    """Against the reference differentiated twice by autograd alone, with far, huge and
    non-finite points among the others."""
    require(mode)
    input = random_input(2, 3, *in_size, device=device)
    grid = with_special_points(random_grid(2, out_size, device, spread=2.5))
    grad_output = torch.randn(2, 3, *out_size, dtype=torch.float64, device=device)
    got = penalty_gradients(ours(mode, padding_mode, align_corners), leaf(input), leaf(grid), grad_output)
    expected = penalty_gradients(reference(mode, padding_mode, align_corners), leaf(input), leaf(grid),
                                 grad_output)
    assert all(torch.isfinite(g).all() for g in got)
    grad_points = got[1].view(2, -1, len(out_size))
    assert all((grad_points[n, p] == 0).all() for n, p in NON_FINITE_POINTS)
    assert got[1].abs().sum() > 0 and got[0].abs().sum() > 0
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("in_size,out_size", [((5, 4), (4, 3)), ((3, 2, 4), (2, 3, 2))], ids=["2d", "3d"])
def test_affine_sample_gradient_penalty_against_finite_differences(device, padding_mode, align_corners, in_size,
                                                                   out_size):
    """||d out/d input||^2 + ||d out/d theta||^2 as a function of (input, theta): its
    gradient by double backward against central differences."""
    input = random_input(2, 2, *in_size, device=device).requires_grad_()
    theta = smooth_theta(2, out_size, in_size, align_corners, device).requires_grad_()
    grad_output = torch.randn(2, 2, *out_size, dtype=torch.float64, device=device)
    sample = functools.partial(stn_cuda.affine_sample, out_size=out_size, padding_mode=padding_mode,
                               align_corners=align_corners)

    def penalty(input, theta):
        first = torch.autograd.grad(sample(input, theta), (input, theta), grad_output, create_graph=True)
        return sum(g.square().sum() for g in first)

    assert gradcheck(penalty, (input, theta))


# -- what double backward leaves alone ------------------------------------------------------

def test_first_backward_is_unchanged(device, padding_mode):
    """create_graph=True gives the kernels' first gradients (to the bit on the CPU), and the first
    backward runs the kernels alone, never the reference, and records no graph."""
    input = random_input(2, 3, 5, 6, device=device).requires_grad_()
    grid = smooth_grid(2, (4, 4), (5, 6), False, device).requires_grad_()
    theta = random_theta(2, device=device).requires_grad_()
    for fn, args in [(ours("bilinear", padding_mode, False), (input, grid)),
                     (functools.partial(stn_cuda.affine_sample, padding_mode=padding_mode), (input, theta))]:
        out = fn(*args)
        assert out.grad_fn.name().startswith("torch::autograd::CppNode<stn::")  # csrc/autograd.cpp
        go = torch.randn_like(out)
        with Ops() as ops_run:
            plain = torch.autograd.grad(out, args, go, retain_graph=True)
        assert "aten::gather" not in ops_run.names and ops_run.namespaces >= {"stn_cuda"}, ops_run.names
        assert not any(g.requires_grad for g in plain)
        recorded = torch.autograd.grad(out, args, go, create_graph=True)
        assert_rerun_matches(plain, recorded)
        assert all(g.requires_grad for g in recorded)


class BackwardMasks(TorchDispatchMode):
    """Records the output_mask of every stn_cuda backward op that runs under it."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name() in ("stn_cuda::grid_sample_backward", "stn_cuda::affine_sample_backward"):
            self.masks.append(list(args[6]))
        return func(*args, **(kwargs or {}))


def test_backward_computes_the_gradients_asked_for(device):
    """A backward pass that asks for one input's gradient computes that one alone (the
    backward op's output_mask), whatever else requires grad, and it equals the full
    backward's."""
    input = random_input(2, 3, 5, 6, device=device).requires_grad_()
    grid = smooth_grid(2, (4, 4), (5, 6), False, device).requires_grad_()
    theta = random_theta(2, device=device).requires_grad_()
    for out, args in [(stn_cuda.grid_sample(input, grid), (input, grid)),
                      (stn_cuda.affine_sample(input, theta), (input, theta))]:
        go = torch.randn_like(out)
        full = torch.autograd.grad(out, args, go, retain_graph=True)
        for k, wanted in enumerate(args):
            with BackwardMasks() as recorded:
                got, = torch.autograd.grad(out, wanted, go, retain_graph=True)
            assert recorded.masks == [[k == 0, k == 1]]
            assert_rerun_matches([got], [full[k]])


def test_graph_only_where_a_gradient_is_wanted(device):
    """A call records an autograd node where grad mode is on and an input requires grad,
    whichever input that is, and otherwise none (csrc/autograd.cpp's shortcut to the
    kernel); the values are the same bits either way."""
    input = random_input(2, 3, 5, 6, device=device)
    grid = smooth_grid(2, (4, 4), (5, 6), False, device)
    theta = random_theta(2, device=device)
    calls = [(stn_cuda.grid_sample, (input, grid)), (stn_cuda.affine_sample, (input, theta)),
             (lambda theta: stn_cuda.affine_grid(theta, (2, 3, 4, 4)), (theta,))]
    for fn, args in calls:
        plain = fn(*args)
        assert plain.grad_fn is None and not plain.requires_grad
        for k in range(len(args)):
            wanting = [leaf(a) if i == k else a for i, a in enumerate(args)]
            with torch.no_grad():
                unrecorded = fn(*wanting)
            assert unrecorded.grad_fn is None and not unrecorded.requires_grad
            out = fn(*wanting)
            assert out.grad_fn.name().startswith("torch::autograd::CppNode<stn::")
            grad, = torch.autograd.grad(out, wanting[k], torch.ones_like(out))
            assert grad.shape == args[k].shape
            assert torch.equal(plain, unrecorded) and torch.equal(plain, out.detach())
        with torch.inference_mode():
            assert torch.equal(fn(*args), plain)


def backward_op_calls(device):
    """The backward ops, now differentiable, with arguments that require grad."""
    input = random_input(2, 3, 5, 6, device=device).requires_grad_()
    grid = smooth_grid(2, (4, 3), (5, 6), True, device).requires_grad_()
    theta = random_theta(2, device=device).requires_grad_()
    go = torch.randn(2, 3, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    grad_grid = torch.randn(2, 4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    return [(ops.grid_sample_backward.default, (go, input, grid, 0, 1, True, [True, True])),
            (ops.affine_sample_backward.default, (go, input, theta, 0, 2, False, [True, True])),
            (ops.affine_grid_backward.default, (grad_grid, True))]


def test_backward_ops_opcheck(device):
    for op, args in backward_op_calls(device):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration",
                                                    "test_faketensor"))


@pytest.mark.slow
def test_backward_ops_opcheck_aot(device):
    """AOT dispatch traces the double backward, reference included (seconds)."""
    for op, args in backward_op_calls(device):
        torch.library.opcheck(op, args, test_utils="test_aot_dispatch_dynamic")


def test_third_order(device):
    """Every double-backward formula is differentiable again: the gradient penalty's
    gradients differentiated once more, against the reference's."""
    input = random_input(1, 2, 4, 5, device=device)
    grid = smooth_grid(1, (2, 2), (4, 5), False, device)
    grad_output = torch.randn(1, 2, 2, 2, dtype=torch.float64, device=device)

    def third(sample):
        args = leaf(input), leaf(grid)
        second = penalty_gradients(sample, *args, grad_output, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in second), args)

    torch.testing.assert_close(third(ours("bilinear", "reflection", False)),
                               third(reference("bilinear", "reflection", False)), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_reduced_precision_gradient_penalty(device, dtype):
    """Double backward keeps each tensor's dtype and, computing in float32 at least, agrees
    with float64 to the precision of the rounded inputs and results."""
    input = random_input(2, 3, 6, 5, device=device).to(dtype)
    theta = random_theta(2, device=device).to(dtype)
    grad_output = torch.randn(2, 3, 4, 4, device=device).to(dtype)
    sample = functools.partial(stn_cuda.affine_sample, out_size=(4, 4), padding_mode="reflection")
    got = penalty_gradients(sample, leaf(input), leaf(theta), grad_output)
    expected = penalty_gradients(sample, leaf(input.double()), leaf(theta.double()), grad_output.double())
    assert [g.dtype for g in got] == [dtype, dtype]
    for g, e in zip(got, expected):
        tol = 64 * torch.finfo(dtype).eps * e.abs().max().item()
        torch.testing.assert_close(g.double(), e, atol=tol, rtol=16 * torch.finfo(dtype).eps)

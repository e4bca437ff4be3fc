"""stn_cuda.grid_sample against torch.nn.functional.grid_sample."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import stn_cuda
from stn_cuda import _reference
from stn_cuda.functional import _PADDING_MODES
from conftest import EMULATES_CUDA
from helpers import (check_against, grads, leaf, make, ours, random_theta, special_grid, theirs,
                     torch_affine_sample)

# (N, C, H_in, W_in, H_out, W_out): odd, prime and 1-sized dimensions.
SHAPES = [(2, 3, 7, 5, 4, 6), (1, 1, 1, 1, 3, 3), (3, 2, 13, 1, 5, 7), (1, 4, 1, 17, 2, 11),
          (2, 5, 11, 13, 1, 1), (1, 1, 31, 37, 29, 23)]


# The modes whose gradient with respect to the grid is not 0.
SMOOTH_MODES = ["bilinear", "bicubic"]


@pytest.mark.parametrize("mode", SMOOTH_MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch(shape, device, padding_mode, align_corners, mode):
    input, grid = make(shape, device)
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (input, grid))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nearest_matches_torch(shape, device, padding_mode, align_corners):
    input, grid = make(shape, device)
    check_against(ours(padding_mode, align_corners, "nearest"),
                  theirs(padding_mode, align_corners, "nearest"), (input, grid))


def test_nearest_rounds_halves_to_even(device, align_corners):
    # Points exactly halfway between pixels, where the rounding rule decides.
    w = 6
    half = (torch.arange(-2, 2 * w + 2) + 0.5) / 2  # pixel positions 0.25 apart, halves included
    xs = (half * 2 + 1) / w - 1 if not align_corners else half * 2 / (w - 1) - 1
    grid = torch.stack([xs, torch.zeros_like(xs)], -1).double()[None, None].to(device)
    input = torch.randn(1, 3, 1, w, dtype=torch.float64, device=device)
    check_against(ours("zeros", align_corners, "nearest"), theirs("zeros", align_corners, "nearest"),
                  (input.requires_grad_(), grid.requires_grad_()))


@pytest.mark.parametrize("dims", [2, 3], ids=["image", "volume"])
def test_nearest_rounds_float32_halves_to_even(padding_mode, align_corners, dims):
    """The CPU kernels round a float32 pixel position to its nearest pixel with an added
    shift (round_pixel, csrc/sampler_math.h), whose two ranges meet at 2**22. Pixel
    positions that float32 unnormalises exactly to halves, of both parities, small, just
    past 2**22 and just below 2**23 (above which float32 has no halves), along a row of
    2**24 pixels (2**24 + 1 with align_corners, so that the unnormalisation is exact) whose
    values are their indices: each half goes to its even neighbour. The coordinates one
    float32 ulp either side of each as the reference's float32 steps round them."""
    width = 2**24 + align_corners
    halves = torch.cat([torch.arange(0, 10), torch.arange(2**22 - 4, 2**22 + 4),
                        torch.arange(2**23 - 8, 2**23)]).double() + 0.5
    exact = (halves / 2**23 - 1 if align_corners else (2 * halves + 1) / width - 1).float()
    coords = torch.cat([exact, exact.nextafter(torch.tensor(-2.0)), exact.nextafter(torch.tensor(2.0))])
    other = torch.zeros_like(coords)
    grid = torch.stack([coords] + [other] * (dims - 1), -1).reshape(1, *[1] * (dims - 1), -1, dims)
    input = torch.arange(width, dtype=torch.float32).reshape(1, 1, *[1] * (dims - 1), width)
    ours = stn_cuda.grid_sample(input, grid, "nearest", padding_mode, align_corners)
    at_halves = ours.flatten()[:len(halves)]
    assert torch.equal(at_halves, torch.round(halves).float())  # halves to even
    assert (at_halves % 2 == 0).all() and (halves.floor() % 2 == 1).any() and (halves.floor() % 2 == 0).any()
    expected = _reference.grid_sample(input, grid, _reference.NEAREST, _PADDING_MODES[padding_mode],
                                      align_corners)
    assert torch.equal(ours, expected)
    # One ulp off a half moves the position off it (but near 2**23, where the position's own
    # ulp is half a pixel): then it rounds the other way for one parity or the other.
    below, above = ours.flatten()[len(halves):].chunk(2)
    assert not torch.equal(below, at_halves) and not torch.equal(above, at_halves)


@pytest.mark.parametrize("dims", [2, 3], ids=["image", "volume"])
def test_nearest_gives_the_grid_and_theta_a_zero_gradient(device, padding_mode, align_corners, dims):
    """+0 exactly, as torch's, non-finite points and every padding included (0 times the
    unnormalisation's derivative would give -0 where reflection flips it), whether or
    not grad_input is wanted as well, with and without the deterministic backward."""
    shape = (2, 3, 5, 6, 4, 7) if dims == 2 else (2, 3, 5, 6, 7, 4, 3, 5)
    input, grid = make(shape, device, spread=3.0)
    grid.detach()[0, 0, 0] = torch.tensor([float("nan"), float("inf"), -float("inf")][:dims])
    theta = random_theta(2, device=device, spread=2.0, dims=dims).requires_grad_()
    out_size = grid.shape[1:-1]
    samplers = [(grid, lambda: stn_cuda.grid_sample(input, grid, "nearest", padding_mode, align_corners)),
                (theta, lambda: stn_cuda.affine_sample(input, theta, out_size, "nearest", padding_mode,
                                                       align_corners))]
    for deterministic in (False, True):
        with stn_cuda.deterministic(deterministic):
            for source, sample in samplers:
                for wanted in ((input, source), (source,)):
                    out = sample()
                    assert torch.equal(grads(out, wanted, torch.randn_like(out))[-1].cpu().view(torch.int64),
                                       torch.zeros(source.shape, dtype=torch.int64)), deterministic


@pytest.mark.parametrize("mode", SMOOTH_MODES)
def test_far_out_of_range(device, padding_mode, align_corners, mode):
    # Several reflections deep, and points on no side of the image.
    input, grid = make((2, 3, 6, 9, 8, 8), device, spread=7.0)
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (input, grid))


def test_bicubic_reflects_every_tap(device, align_corners):
    """Bicubic pads tap by tap: near an edge, with reflection padding, the taps that fall
    outside read mirrored pixels, so a constant image stays constant and a ramp along x
    samples its mirror image. Tiny images reflect taps more than once."""
    for h, w in [(5, 7), (2, 3), (1, 2)]:
        grid = make((1, 1, h, w, 9, 11), device, spread=1.3)[1].detach()
        ones = torch.ones(1, 2, h, w, dtype=torch.float64, device=device)
        out = stn_cuda.grid_sample(ones, grid, "bicubic", "reflection", align_corners)
        torch.testing.assert_close(out, torch.ones_like(out))
        ramp = torch.arange(w, dtype=torch.float64, device=device).expand(1, 1, h, w).requires_grad_()
        check_against(ours("reflection", align_corners, "bicubic"),
                      theirs("reflection", align_corners, "bicubic"), (ramp, grid.requires_grad_()))


@pytest.mark.parametrize("mode", SMOOTH_MODES)
def test_special_coordinates(device, padding_mode, align_corners, mode):
    """Exact +-1, 0, pixel centres and pixel edges, where the neighbours (bilinear) or
    taps (bicubic) switch."""
    h, w = 5, 8
    grid = special_grid((h, w), device)
    input = torch.randn(1, 2, h, w, dtype=torch.float64, device=device)
    # Bilinear gradients with respect to the grid are discontinuous exactly at these
    # points; ATen and stn_cuda take the same (floor) side, so they must agree there too.
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (input.requires_grad_(), grid.requires_grad_()))


@pytest.mark.parametrize("mode", SMOOTH_MODES)
@pytest.mark.parametrize("value", [1e6, -1e6, 1e10, -1e30, 3e38], ids=str)
def test_huge_coordinates(device, padding_mode, align_corners, value, mode):
    if padding_mode == "reflection" and abs(value) > 1e9:
        # ATen converts the reflection count to int (undefined behaviour beyond 2**31): no reference.
        pytest.skip("torch has no defined result for reflection this far out")
    input, grid = make((2, 2, 5, 6, 3, 4), device)
    grid = grid.detach().clone()
    grid[0, 1, 2, 0] = value
    grid[1, 0, 0, 1] = value
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (input, grid.requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reflection_folds(device, align_corners, dtype):
    """Reflection reduces a position by exact arithmetic where it can (no fmod; the CPU's
    loops vectorise) and by fmod farther out: at every fold (x = 2k - 1 on both
    alignments) and one ulp either side, where the division rounds to the fold, and at
    float32 positions past 2**21 pixels, where fmod takes over."""
    folds = torch.arange(-13.0, 14.0, 2.0, dtype=dtype)
    x = torch.cat([folds, torch.nextafter(folds, folds - 1), torch.nextafter(folds, folds + 1),
                   torch.tensor([-1e6, 1e6, 3.3e6, -7.7e6], dtype=dtype)])
    grid = torch.stack([x, torch.full_like(x, 0.3)], -1).reshape(1, 1, -1, 2).to(device)
    input = torch.randn(1, 2, 3, 7, dtype=dtype, device=device)
    check_against(ours("reflection", align_corners), theirs("reflection", align_corners),
                  (input.requires_grad_(), grid.requires_grad_()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_points_contribute_nothing(device, padding_mode, align_corners, bad, mode):
    """A point with a non-finite coordinate samples 0 and passes no gradient; every other
    point is exactly torch's."""
    input, grid = make((2, 3, 6, 7, 5, 4), device)
    grid = grid.detach().clone()
    bad_points = torch.zeros(2, 5, 4, dtype=torch.bool, device=device)
    bad_points[0, 1, 2] = bad_points[1, 4, 3] = bad_points[1, 0, 0] = True
    grid[0, 1, 2, 0] = bad              # x only
    grid[1, 4, 3, 1] = bad              # y only
    grid[1, 0, 0, :] = bad              # both
    finite_grid = torch.where(bad_points[..., None], torch.zeros_like(grid), grid)

    input, grid = leaf(input), leaf(grid)
    out = ours(padding_mode, align_corners, mode)(input, grid)
    ref_input, ref_grid = leaf(input), leaf(finite_grid)
    ref = theirs(padding_mode, align_corners, mode)(ref_input, ref_grid)
    keep = (~bad_points)[:, None].to(ref.dtype)
    torch.testing.assert_close(out, ref * keep)

    grad_output = torch.randn_like(ref)
    gi, gg = grads(out, (input, grid), grad_output)
    rgi, rgg = grads(ref, (ref_input, ref_grid), grad_output * keep)
    assert torch.isfinite(gi).all(), "a non-finite point leaked into grad_input"
    torch.testing.assert_close(gi, rgi)
    torch.testing.assert_close(gg, torch.where(bad_points[..., None], torch.zeros_like(rgg), rgg))


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_all_non_finite(device, mode):
    input = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    grid = torch.full((1, 3, 3, 2), math.nan, dtype=torch.float64, device=device, requires_grad=True)
    out = stn_cuda.grid_sample(input, grid, mode=mode, padding_mode="border")
    assert (out == 0).all()
    gi, gg = grads(out, (input, grid), torch.ones_like(out))
    assert (gi == 0).all() and (gg == 0).all()


def strided_variants(input, grid):
    """The same values in other memory layouts."""
    yield "channels_last", input.contiguous(memory_format=torch.channels_last), grid
    yield "transposed", input.transpose(2, 3).contiguous().transpose(2, 3), grid.transpose(1, 2).contiguous().transpose(1, 2)
    big = torch.randn(input.shape[0] * 2, input.shape[1] + 3, input.shape[2] * 2, input.shape[3] + 1,
                      dtype=input.dtype, device=input.device)
    sliced = big[::2, 1:1 + input.shape[1], ::2, 1:]
    sliced.copy_(input)
    grid_big = torch.randn(grid.shape[0], grid.shape[1], grid.shape[2], 5, dtype=grid.dtype, device=grid.device)
    grid_sliced = grid_big[..., 1:4:2]
    grid_sliced.copy_(grid)
    yield "sliced", sliced, grid_sliced
    yield "expanded batch", input[:1].expand_as(input), grid


@pytest.mark.parametrize("mode", SMOOTH_MODES)
def test_memory_layouts(device, padding_mode, align_corners, mode):
    input, grid = make((3, 4, 9, 10, 6, 5), device)
    for name, x, g in strided_variants(input.detach(), grid.detach()):
        check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                      (x.requires_grad_(), g.requires_grad_()))
        check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                      (x.detach(), g.detach().requires_grad_()))  # the input read in place
        check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                      (x.detach(), g.detach()))


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("op", ["grid_sample", "affine_sample"])
def test_grid_gradient_reads_an_expanded_input_in_place(device, op, deterministic):
    """Where only the grid's (or theta's) gradient is wanted, the backward reads the input as
    the forward does, with its own strides: one 128 x 128 image expanded over 2^22 batch
    elements, 256 GiB as a dense tensor, which no machine could copy (on the emulated CUDA
    kernels, whose blocks run one thread at a time, 2^8 of them)."""
    n = 2**8 if EMULATES_CUDA else 2**22
    input = torch.randn(1, 1, 128, 128, device=device).expand(n, 1, 128, 128)
    if op == "grid_sample":
        source = torch.rand(n, 1, 1, 2, device=device) * 2 - 1
        fn, ref_fn = stn_cuda.grid_sample, functools.partial(F.grid_sample, align_corners=False)
    else:
        source = torch.eye(2, 3, device=device) + 0.1 * torch.randn(n, 2, 3, device=device)
        fn = functools.partial(stn_cuda.affine_sample, out_size=(1, 1))
        ref_fn = functools.partial(torch_affine_sample, out_size=(1, 1))
    with stn_cuda.deterministic(deterministic):
        check_against(fn, ref_fn, (input, source.requires_grad_()), atol=1e-4, rtol=1e-4)


def test_non_contiguous_grad_output(device):
    input, grid = make((2, 3, 5, 6, 4, 4), device)
    out = stn_cuda.grid_sample(input, grid)
    ref_in, ref_grid = leaf(input), leaf(grid)
    ref = F.grid_sample(ref_in, ref_grid, align_corners=False)
    go = torch.randn(4, 4, 3, 2, dtype=out.dtype, device=device).permute(3, 2, 0, 1)  # strided
    for a, b in zip(grads(out, (input, grid), go), grads(ref, (ref_in, ref_grid), go)):
        torch.testing.assert_close(a, b)
    # sum().backward() hands the kernel an expanded (stride-0) grad_output
    stn_cuda.grid_sample(input, grid).sum().backward()
    F.grid_sample(ref_in, ref_grid, align_corners=False).sum().backward()
    torch.testing.assert_close(input.grad, ref_in.grad)
    torch.testing.assert_close(grid.grad, ref_grid.grad)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("channels", [1, 3])
def test_runs_across_rows(device, mode, channels):
    """The CPU kernels take the output points in runs of 64 that wrap from the end of one row
    to the next: 9 x 13 outputs (runs that start mid-row), with a contiguous grid, one with
    gaps between its rows and a transposed one, a strided grad_output, and one channel (a
    loop of its own) or several."""
    input, grid = make((2, channels, 8, 9, 9, 13), device)
    rows_apart = torch.full((2, 18, 13, 2), math.nan, dtype=grid.dtype, device=device)[:, ::2]
    rows_apart.copy_(grid)
    transposed = grid.detach().transpose(1, 2).contiguous().transpose(1, 2)
    go = torch.randn(13, 9, 2, channels, dtype=input.dtype, device=device).permute(2, 3, 1, 0)
    for g in (grid.detach(), rows_apart, transposed):
        check_against(ours("reflection", False, mode), theirs("reflection", False, mode),
                      (input.detach().requires_grad_(), g.requires_grad_()), grad_output=go)


@pytest.mark.parametrize("mode", SMOOTH_MODES)
@pytest.mark.parametrize("needs", ["input", "grid"])
def test_one_gradient(device, needs, mode):
    input, grid = make((2, 3, 5, 6, 4, 4), device)
    input.requires_grad_(needs == "input")
    grid.requires_grad_(needs == "grid")
    check_against(ours("border", True, mode), theirs("border", True, mode), (input, grid))


@pytest.mark.parametrize("mode", SMOOTH_MODES)
def test_gradcheck(device, padding_mode, align_corners, mode):
    input, grid = make((2, 2, 4, 5, 3, 3), device, spread=1.2)
    # random points are off the pixel lattice, where bilinear is not differentiable
    assert torch.autograd.gradcheck(ours(padding_mode, align_corners, mode), (input, grid))


@pytest.mark.parametrize("mode", SMOOTH_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision(device, dtype, padding_mode, mode):
    """Half precision against torch in float32 on the same (rounded) inputs; stn_cuda
    accumulates in float32, so its error is that of the final rounding alone."""
    input, grid = make((2, 8, 16, 16, 12, 12), device, dtype=dtype)
    x, g = leaf(input), leaf(grid)
    out = stn_cuda.grid_sample(x, g, mode=mode, padding_mode=padding_mode)
    x32, g32 = leaf(input.float()), leaf(grid.float())
    ref = F.grid_sample(x32, g32, mode=mode, padding_mode=padding_mode, align_corners=False)
    assert out.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), ref, atol=4 * eps, rtol=4 * eps)
    go = torch.randn_like(ref).to(dtype)
    gi, gg = grads(out, (x, g), go)
    rgi, rgg = grads(ref, (x32, g32), go.float())
    assert gi.dtype == dtype and gg.dtype == dtype
    # A bicubic edge pixel (border padding) sums many taps' shares, of both signs, in
    # another order than torch's: up to ~10 eps over 40 seeds in float32.
    gi_tol = (16 if mode == "bicubic" else 8) * eps
    torch.testing.assert_close(gi.float(), rgi, atol=gi_tol, rtol=gi_tol)
    scale = rgg.abs().max().item()
    torch.testing.assert_close(gg.float(), rgg, atol=16 * eps * scale, rtol=16 * eps)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4, 2, 2), (2, 0, 4, 4, 2, 2), (2, 3, 4, 4, 0, 2)], ids=["N=0", "C=0", "H_out=0"])
def test_empty(device, shape):
    input, grid = make(shape, device)
    check_against(ours("zeros", False), theirs("zeros", False), (input, grid))


@pytest.mark.parametrize("mode", SMOOTH_MODES)
def test_backward_is_deterministic_on_cpu(mode):
    input, grid = make((2, 4, 9, 9, 32, 32), "cpu", dtype=torch.float32, spread=0.2)  # heavy overlap
    first = grads(stn_cuda.grid_sample(input, grid, mode), (input, grid), torch.ones(2, 4, 32, 32))
    for _ in range(3):
        again = grads(stn_cuda.grid_sample(input, grid, mode), (input, grid), torch.ones(2, 4, 32, 32))
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_default_arguments_match_torch(device):
    input, grid = make((1, 2, 5, 5, 3, 3), device)
    torch.testing.assert_close(stn_cuda.grid_sample(input, grid),
                               F.grid_sample(input, grid, align_corners=False))
    with pytest.warns(UserWarning, match="align_corners=False") as warned:  # as torch warns
        ours = stn_cuda.grid_sample(input, grid, align_corners=None)
    assert warned[0].filename == __file__  # the caller's line
    torch.testing.assert_close(ours, F.grid_sample(input, grid, align_corners=False))
    theta = random_theta(1, device=device)
    with pytest.warns(UserWarning, match="unit-size grids when align_corners=True") as warned:  # as torch
        ours = stn_cuda.affine_grid(theta, (1, 2, 1, 3), align_corners=True)
    assert warned[0].filename == __file__
    with pytest.warns(UserWarning, match="unit-size grids"):
        torch.testing.assert_close(ours, F.affine_grid(theta, (1, 2, 1, 3), align_corners=True))


@pytest.mark.parametrize("mode_code", [0, 2], ids=["bilinear", "bicubic"])
def test_opcheck(device, mode_code):
    input, grid = make((2, 3, 5, 6, 4, 4), device)
    torch.library.opcheck(torch.ops.stn_cuda.grid_sample.default, (input, grid, mode_code, 2, True))
    go = torch.randn(2, 3, 4, 4, dtype=input.dtype, device=device)
    torch.library.opcheck(torch.ops.stn_cuda.grid_sample_backward.default,
                          (go, input.detach(), grid.detach(), mode_code, 1, False, [True, True]))


@pytest.mark.parametrize("layout", ["permuted", "channels_last"])
def test_opcheck_backward_layouts(device, layout):
    """The fake kernel gives grad_input the strides the op gives it (dense, in the input's
    suggested memory format), also for a permuted input, which the op makes contiguous."""
    input = torch.randn(2, 3, 6, 5, dtype=torch.float64, device=device)
    input = (input.transpose(2, 3) if layout == "permuted"
             else input.contiguous(memory_format=torch.channels_last))
    grid = torch.rand(2, 4, 3, 2, dtype=torch.float64, device=device) * 2 - 1
    go = torch.randn(2, 3, 4, 3, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.stn_cuda.grid_sample_backward.default,
                          (go, input, grid, 0, 0, False, [True, True]))


# -- bad input gets a clear exception that names the argument --------------------------

def _x(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


BAD_CALLS = [
    ("input 3-D", lambda: stn_cuda.grid_sample(_x(3, 4, 4), _x(1, 2, 2, 2)), ValueError, "input"),
    ("grid 3-D", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2)), ValueError, "grid"),
    ("grid last dim", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 3)), ValueError, "last dimension"),
    ("batch sizes", lambda: stn_cuda.grid_sample(_x(2, 3, 4, 4), _x(1, 2, 2, 2)), ValueError, "batch size"),
    ("dtypes differ", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2, dtype=torch.float64)), TypeError, "dtype"),
    ("integer input", lambda: stn_cuda.grid_sample(torch.ones(1, 3, 4, 4, dtype=torch.int32), _x(1, 2, 2, 2)), TypeError, "input"),
    ("integer grid", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), torch.ones(1, 2, 2, 2, dtype=torch.int64)), TypeError, "grid"),
    ("unknown mode", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2), mode="linear"), ValueError, "mode"),
    ("unknown padding", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2), padding_mode="wrap"), ValueError, "padding_mode"),
    ("mode a list", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2), mode=["bilinear"]), ValueError,
     r"expected mode to be 'bilinear', 'nearest' or 'bicubic', got \['bilinear'\]"),
    ("padding None", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2), padding_mode=None), ValueError,
     "expected padding_mode to be 'zeros', 'border' or 'reflection', got None"),
    ("empty spatial input", lambda: stn_cuda.grid_sample(_x(1, 3, 0, 4), _x(1, 2, 2, 2)), ValueError, "spatial"),
    ("not a tensor", lambda: stn_cuda.grid_sample([[1.0]], _x(1, 2, 2, 2)), TypeError, "input to be a torch.Tensor, got list"),
    ("raw op bad mode", lambda: torch.ops.stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2), 3, 0, False), ValueError, "interpolation_mode"),
    ("meta grid", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2).to("meta")), ValueError, "same device"),
    ("align_corners int", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2), align_corners=1), TypeError, "align_corners"),
    ("align_corners tensor", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2), align_corners=torch.tensor(True)),
     TypeError, "align_corners to be a bool, got torch.Tensor"),
    ("raw op bad padding", lambda: torch.ops.stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2), 0, 7, False), ValueError, "padding_mode"),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_bad_grad_output_shape():
    input, grid = _x(1, 3, 4, 4), _x(1, 2, 2, 2)
    with pytest.raises(ValueError, match="grad_output"):
        torch.ops.stn_cuda.grid_sample_backward(_x(1, 3, 3, 2), input, grid, 0, 0, False, [True, True])


@pytest.mark.skipif(not torch.cuda.is_available() or not stn_cuda.built_with_cuda(), reason="needs a CUDA device")
def test_devices_differ():
    with pytest.raises(ValueError, match="same device"):
        stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2, device="cuda"))


def test_positions_a_rounding_below_a_pixel(device, align_corners):
    """Pixel positions within half an ulp below 0 (x = 1/W - 1 lands there for many W): their
    floor is -1, not 0, even though p + 2 rounds to 2. The reference is torch's 5-D kernel
    with a depth of 1, which unnormalises as stn_cuda does, where torch's vectorised 4-D CPU
    kernel rounds these positions differently."""
    widths = [w for w in range(2, 40)
              if ((torch.tensor(1.0 / w - 1, dtype=torch.float64) + 1) * w - 1) / 2 < 0]
    assert widths, "no width gives a position just below 0: the test would test nothing"
    for w in widths[:6]:
        xs = torch.tensor([1.0 / w - 1, -1.0 + 1.0 / w, 0.0], dtype=torch.float64)
        grid = torch.stack([xs, xs], -1).reshape(1, 1, 3, 2).to(device).requires_grad_()
        input = torch.randn(1, 2, w, w, dtype=torch.float64, device=device, requires_grad=True)

        def volume_reference(x, g):
            g3 = torch.cat([g, torch.zeros_like(g[..., :1])], -1)[:, None]
            return F.grid_sample(x[:, :, None], g3, align_corners=align_corners)[:, :, 0]

        check_against(ours("zeros", align_corners), volume_reference, (input, grid))

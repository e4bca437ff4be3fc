"""Volumes (5-D input): stn_cuda.grid_sample, affine_grid and affine_sample against
torch.nn.functional.grid_sample / affine_grid on (N, C, D, H, W) inputs."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import stn_cuda
from conftest import EMULATES_CUDA
from helpers import check_against, grads, leaf, make, ours, random_theta, special_grid, theirs

# torch's affine_grid warns about 1-pixel outputs with align_corners=True; those are tested.
pytestmark = pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid")

# (N, C, D_in, H_in, W_in, D_out, H_out, W_out): odd, prime and 1-sized dimensions.
SHAPES = [(2, 3, 5, 7, 4, 3, 4, 5), (1, 1, 1, 1, 1, 2, 3, 2), (2, 2, 1, 6, 5, 3, 1, 4),
          (1, 2, 7, 1, 3, 2, 5, 3), (1, 3, 4, 5, 1, 1, 1, 1), (1, 1, 11, 13, 7, 5, 3, 7)]
MODES = ["bilinear", "nearest"]


def exact_on_cpu(device):
    """Tolerances: none for the CPU kernels, whose results are torch's bits (README); a few
    float32 ulps for the CUDA kernels (on a GPU or emulated), whose atomic adds into
    grad_input come in any order and whose multiply-adds may be contracted."""
    exact = device == "cpu" and not EMULATES_CUDA
    return dict(atol=0, rtol=0) if exact else dict(atol=1e-5, rtol=1e-5)


# -- grid_sample -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch(shape, device, mode, padding_mode, align_corners):
    input, grid = make(shape, device)
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (input, grid))


@pytest.mark.parametrize("mode", MODES)
def test_far_out_of_range(device, mode, padding_mode, align_corners):
    # Several reflections deep, and points on no side of the volume.
    input, grid = make((2, 2, 4, 5, 6, 4, 5, 6), device, spread=7.0)
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (input, grid))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reflection_folds(device, mode, align_corners, dtype):
    """As for images (test_grid_sample.py): every fold of each axis in turn and one ulp
    either side, and float32 positions past 2**21 pixels, where the CPU's vectorised loop
    leaves the point to fmod."""
    folds = torch.arange(-13.0, 14.0, 2.0, dtype=dtype)
    x = torch.cat([folds, torch.nextafter(folds, folds - 1), torch.nextafter(folds, folds + 1),
                   torch.tensor([-1e6, 1e6, 3.3e6, -7.7e6], dtype=dtype)])
    other = torch.full_like(x, 0.3)
    grid = torch.stack([torch.stack([x, other, other], -1), torch.stack([other, x, other], -1),
                        torch.stack([other, other, x], -1)])[None, :, None].to(device)
    input = torch.randn(1, 2, 5, 3, 7, dtype=dtype, device=device)
    check_against(ours("reflection", align_corners, mode), theirs("reflection", align_corners, mode),
                  (input.requires_grad_(), grid.requires_grad_()), **exact_on_cpu(device))


@pytest.mark.parametrize("mode", MODES)
def test_rows_longer_than_a_chunk(device, mode, padding_mode, align_corners):
    """Rows of 150 points (the CPU locates 64 at a time): far and one-ulp-off-a-fold points
    in every chunk (non-finite ones: test_non_finite_points_contribute_nothing), through
    grid_sample and affine_sample."""
    input, grid = make((2, 3, 3, 4, 5, 2, 3, 150), device, dtype=torch.float32, spread=1.2)
    grid = grid.detach().clone()
    for w in (5, 70, 140):
        grid[0, 1, 2, w] = torch.tensor([3.3e6, -1.0, 0.5])
        grid[1, 0, 1, w + 1] = torch.tensor([0.2, -2.5e5, 0.1])
        grid[1, 1, 0, w + 2, 2] = torch.nextafter(torch.tensor(-3.0), torch.tensor(0.0))
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (input, grid.requires_grad_()), **exact_on_cpu(device))
    # In float64: float32 affine_grid rounds its matrix product differently.
    input, theta = input.double(), random_theta(2, torch.float64, device, spread=2.0, dims=3)
    check_against(
        lambda x, t: stn_cuda.affine_sample(x, t, (2, 3, 150), mode=mode, padding_mode=padding_mode,
                                            align_corners=align_corners),
        lambda x, t: F.grid_sample(x, F.affine_grid(t, (2, 3, 2, 3, 150), align_corners=align_corners),
                                   mode, padding_mode, align_corners=align_corners),
        (input, theta.requires_grad_()))


def test_nearest_rounds_halves_to_even(device, align_corners):
    size = 6
    half = (torch.arange(-2, 2 * size + 2) + 0.5) / 2  # pixel positions 0.25 apart, halves included
    coords = (half * 2 + 1) / size - 1 if not align_corners else half * 2 / (size - 1) - 1
    zeros = torch.zeros_like(coords)
    # the halves along each axis in turn
    grid = torch.stack([torch.stack([coords, zeros, zeros], -1), torch.stack([zeros, coords, zeros], -1),
                        torch.stack([zeros, zeros, coords], -1)]).double()[None, None].to(device)
    input = torch.randn(1, 2, size, size, size, dtype=torch.float64, device=device)
    check_against(ours("zeros", align_corners, "nearest"), theirs("zeros", align_corners, "nearest"),
                  (input.requires_grad_(), grid.requires_grad_()))


def test_special_coordinates(device, padding_mode, align_corners):
    """Exact +-1, 0, pixel centres and pixel edges, where the trilinear neighbours switch."""
    d, h, w = 3, 4, 5
    grid = special_grid((d, h, w), device)
    input = torch.randn(1, 2, d, h, w, dtype=torch.float64, device=device)
    for mode in MODES:
        check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                      (input.requires_grad_(), grid.requires_grad_()))


@pytest.mark.parametrize("value", [1e6, -1e6, 1e10, -1e30, 3e38], ids=str)
def test_huge_coordinates(device, padding_mode, align_corners, value):
    if padding_mode == "reflection" and abs(value) > 1e9:
        pytest.skip("torch has no defined result for reflection this far out")
    input, grid = make((2, 2, 3, 5, 6, 2, 3, 4), device)
    grid = grid.detach().clone()
    grid[0, 1, 2, 0, 0] = value
    grid[1, 0, 0, 1, 1] = value
    grid[1, 1, 1, 2, 2] = value
    grid[0, 0, 0, 0, :] = value
    for mode in MODES:
        check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                      (input, grid.requires_grad_()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_points_contribute_nothing(device, mode, padding_mode, align_corners, bad):
    """A point with a non-finite coordinate samples 0 and passes no gradient; every other
    point is exactly torch's."""
    input, grid = make((2, 3, 4, 5, 6, 3, 4, 2), device)
    grid = grid.detach().clone()
    bad_points = torch.zeros(2, 3, 4, 2, dtype=torch.bool, device=device)
    for (n, d, h, w), axes in [((0, 1, 2, 0), [0]), ((1, 2, 3, 1), [1]), ((1, 0, 0, 0), [2]),
                               ((0, 2, 0, 1), [0, 1, 2])]:
        bad_points[n, d, h, w] = True
        grid[n, d, h, w, axes] = bad
    finite_grid = torch.where(bad_points[..., None], torch.zeros_like(grid), grid)

    input, grid = leaf(input), leaf(grid)
    out = stn_cuda.grid_sample(input, grid, mode, padding_mode, align_corners)
    ref_input, ref_grid = leaf(input), leaf(finite_grid)
    ref = F.grid_sample(ref_input, ref_grid, mode, padding_mode, align_corners)
    keep = (~bad_points)[:, None].to(ref.dtype)
    torch.testing.assert_close(out, ref * keep)

    grad_output = torch.randn_like(ref)
    gi, gg = grads(out, (input, grid), grad_output)
    rgi, rgg = grads(ref, (ref_input, ref_grid), grad_output * keep)
    assert torch.isfinite(gi).all(), "a non-finite point leaked into grad_input"
    torch.testing.assert_close(gi, rgi)
    torch.testing.assert_close(gg, torch.where(bad_points[..., None], torch.zeros_like(rgg), rgg))


def strided_variants(input, grid):
    """The same values in other memory layouts."""
    yield "channels_last_3d", input.contiguous(memory_format=torch.channels_last_3d), grid
    yield "transposed", input.transpose(2, 4).contiguous().transpose(2, 4), grid.transpose(1, 3).contiguous().transpose(1, 3)
    n, c, d, h, w = input.shape
    big = torch.randn(n * 2, c + 3, d + 1, h * 2, w + 1, dtype=input.dtype, device=input.device)
    sliced = big[::2, 1:1 + c, 1:, ::2, :w]
    sliced.copy_(input)
    grid_big = torch.randn(*grid.shape[:-1], 7, dtype=grid.dtype, device=grid.device)
    grid_sliced = grid_big[..., 1:6:2]
    grid_sliced.copy_(grid)
    yield "sliced", sliced, grid_sliced
    yield "expanded batch", input[:1].expand_as(input), grid


def test_memory_layouts(device, padding_mode, align_corners):
    input, grid = make((3, 4, 5, 6, 7, 3, 4, 5), device)
    for name, x, g in strided_variants(input.detach(), grid.detach()):
        for mode in MODES:
            for wants_grad_input in (True, False):  # without, the input is read in place
                check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                              (x.detach().requires_grad_(wants_grad_input), g.detach().requires_grad_()))


def test_non_contiguous_grad_output(device):
    input, grid = make((2, 3, 4, 5, 6, 3, 4, 2), device)
    out = stn_cuda.grid_sample(input, grid)
    ref_in, ref_grid = leaf(input), leaf(grid)
    ref = F.grid_sample(ref_in, ref_grid, align_corners=False)
    go = torch.randn(2, 4, 3, 3, 2, dtype=out.dtype, device=device).permute(4, 3, 2, 1, 0)  # strided
    for a, b in zip(grads(out, (input, grid), go), grads(ref, (ref_in, ref_grid), go)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("needs", ["input", "grid"])
def test_one_gradient(device, needs):
    input, grid = make((2, 3, 4, 5, 6, 3, 4, 2), device)
    input.requires_grad_(needs == "input")
    grid.requires_grad_(needs == "grid")
    check_against(ours("border", True), theirs("border", True), (input, grid))


def test_gradcheck(device, padding_mode, align_corners):
    input, grid = make((2, 2, 3, 4, 5, 2, 2, 3), device, spread=1.2)
    assert torch.autograd.gradcheck(ours(padding_mode, align_corners), (input, grid))
    assert torch.autograd.gradcheck(ours(padding_mode, align_corners, "nearest"), (input, grid.detach()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision(device, dtype):
    """Half precision against torch in float32 on the same (rounded) inputs."""
    input, grid = make((2, 4, 6, 7, 8, 5, 6, 7), device, dtype=dtype)
    x, g = leaf(input), leaf(grid)
    out = stn_cuda.grid_sample(x, g, padding_mode="reflection")
    x32, g32 = leaf(input.float()), leaf(grid.float())
    ref = F.grid_sample(x32, g32, padding_mode="reflection", align_corners=False)
    assert out.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), ref, atol=8 * eps, rtol=8 * eps)
    go = torch.randn_like(ref).to(dtype)
    gi, gg = grads(out, (x, g), go)
    rgi, rgg = grads(ref, (x32, g32), go.float())
    assert gi.dtype == dtype and gg.dtype == dtype
    torch.testing.assert_close(gi.float(), rgi, atol=16 * eps, rtol=16 * eps)
    scale = rgg.abs().max().item()
    torch.testing.assert_close(gg.float(), rgg, atol=32 * eps * scale, rtol=32 * eps)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4, 4, 2, 2, 2), (2, 0, 4, 4, 4, 2, 2, 2), (2, 3, 4, 4, 4, 2, 0, 2)],
                         ids=["N=0", "C=0", "H_out=0"])
def test_empty(device, shape):
    input, grid = make(shape, device)
    check_against(ours("zeros", False), theirs("zeros", False), (input, grid))


def test_backward_is_deterministic_on_cpu():
    input, grid = make((2, 3, 5, 5, 5, 8, 8, 8), "cpu", dtype=torch.float32, spread=0.2)  # heavy overlap
    go = torch.ones(2, 3, 8, 8, 8)
    first = grads(stn_cuda.grid_sample(input, grid), (input, grid), go)
    for _ in range(3):
        again = grads(stn_cuda.grid_sample(input, grid), (input, grid), go)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


# -- affine_grid and affine_sample ---------------------------------------------------------

@pytest.mark.parametrize("size", [(2, 3, 4, 5, 6), (1, 1, 1, 1, 1), (3, 2, 7, 1, 3), (2, 1, 1, 13, 1), (1, 1, 9, 11, 13)],
                         ids=str)
def test_affine_grid_matches_torch(device, align_corners, size):
    theta = random_theta(size[0], device=device, spread=1.0, dims=3).requires_grad_()
    check_against(functools.partial(stn_cuda.affine_grid, size=size, align_corners=align_corners),
                  functools.partial(F.affine_grid, size=size, align_corners=align_corners), (theta,))


def test_affine_grid_identity_is_torch_layout(device, align_corners):
    theta = torch.eye(3, 4, dtype=torch.float64, device=device)[None]
    size = (1, 1, 6, 5, 8)
    assert torch.equal(stn_cuda.affine_grid(theta, size, align_corners=align_corners),
                       F.affine_grid(theta, size, align_corners=align_corners))


def test_affine_grid_gradcheck(device, align_corners):
    theta = random_theta(2, device=device, dims=3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: stn_cuda.affine_grid(t, (2, 3, 3, 4, 5), align_corners=align_corners), (theta,))


def torch_affine_sample3(input, theta, out_size, mode="bilinear", padding_mode="zeros", align_corners=False):
    grid = F.affine_grid(theta, (*input.shape[:2], *out_size), align_corners=align_corners)
    return F.grid_sample(input, grid, mode, padding_mode, align_corners)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7, 4, 3, 5), (1, 2, 1, 4, 3, 2, 3, 1), (1, 1, 9, 8, 7, 5, 6, 7)],
                         ids=str)
def test_affine_sample_matches_composition(device, mode, padding_mode, align_corners, shape):
    n, c, d, h, w, *out_size = shape
    input = torch.randn(n, c, d, h, w, dtype=torch.float64, device=device, requires_grad=True)
    theta = random_theta(n, device=device, spread=0.4, dims=3).requires_grad_(mode == "bilinear")
    check_against(
        functools.partial(stn_cuda.affine_sample, out_size=out_size, mode=mode, padding_mode=padding_mode,
                          align_corners=align_corners),
        functools.partial(torch_affine_sample3, out_size=out_size, mode=mode, padding_mode=padding_mode,
                          align_corners=align_corners), (input, theta))


def test_affine_sample_out_size_defaults_to_input(device):
    input = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, device=device)
    theta = random_theta(2, device=device, dims=3)
    out = stn_cuda.affine_sample(input, theta)
    assert out.shape == input.shape
    torch.testing.assert_close(out, torch_affine_sample3(input, theta, (4, 5, 6)))
    identity = torch.eye(3, 4, dtype=torch.float64, device=device).expand(2, 3, 4)
    torch.testing.assert_close(stn_cuda.affine_sample(input, identity), input)


def test_affine_sample_gradcheck(device, padding_mode, align_corners):
    input = torch.randn(2, 2, 3, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    theta = random_theta(2, device=device, spread=0.4, dims=3).requires_grad_()
    fn = functools.partial(stn_cuda.affine_sample, out_size=(2, 3, 4), padding_mode=padding_mode,
                           align_corners=align_corners)
    assert torch.autograd.gradcheck(fn, (input, theta))


def test_affine_sample_memory_layouts(device):
    input = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64, device=device)
    theta = random_theta(2, device=device, spread=0.5, dims=3)
    for x in (input.contiguous(memory_format=torch.channels_last_3d),
              input.transpose(2, 4).contiguous().transpose(2, 4), input[:1].expand(2, -1, -1, -1, -1)):
        check_against(functools.partial(stn_cuda.affine_sample, out_size=(4, 3, 5), padding_mode="border"),
                      functools.partial(torch_affine_sample3, out_size=(4, 3, 5), padding_mode="border"),
                      (x.requires_grad_(), theta.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()))


def test_opcheck(device):
    input, grid = make((2, 3, 3, 4, 5, 2, 3, 4), device)
    theta = random_theta(2, device=device, dims=3)
    ops = torch.ops.stn_cuda
    x, g = input.detach(), grid.detach()
    torch.library.opcheck(ops.grid_sample.default, (x, g, 0, 2, True))
    go = torch.randn(2, 3, 2, 3, 4, dtype=x.dtype, device=device)
    torch.library.opcheck(ops.grid_sample_backward.default, (go, x, g, 0, 1, False, [True, True]))
    torch.library.opcheck(ops.affine_sample.default, (x, theta, [2, 3, 4], 1, 0, False))
    torch.library.opcheck(ops.affine_sample_backward.default, (go, x, theta, 0, 1, True, [True, True]))
    torch.library.opcheck(ops.affine_grid.default, (theta, [2, 3, 2, 3, 4], False))
    torch.library.opcheck(ops.affine_grid_backward.default, (torch.randn(2, 2, 3, 4, 3, dtype=x.dtype, device=device), True))


def test_compiles(device):
    def model(x, grid, theta):
        return stn_cuda.grid_sample(x, grid, padding_mode="border") + stn_cuda.affine_sample(x, theta, (2, 3, 4)) \
            + stn_cuda.grid_sample(x, stn_cuda.affine_grid(theta, (2, 3, 2, 3, 4)))

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    input, grid = make((2, 3, 3, 4, 5, 2, 3, 4), device)
    theta = random_theta(2, device=device, dims=3).requires_grad_()
    go = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64, device=device)

    def output_and_grads(fn):
        leaves = [leaf(a) for a in (input, grid, theta)]
        out = fn(*leaves)
        return out, grads(out, leaves, go)

    torch.testing.assert_close(output_and_grads(compiled), output_and_grads(model))


# -- bad input ------------------------------------------------------------------------------

def _x(*shape):
    return torch.randn(*shape)


BAD_CALLS = [
    ("4-D input, 5-D grid", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4), _x(1, 2, 2, 2, 3)), ValueError, "grid.*4-D"),
    ("5-D input, 4-D grid", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4, 4), _x(1, 2, 2, 2)), ValueError, "grid.*5-D"),
    ("5-D input, grid (x, y)", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4, 4), _x(1, 2, 2, 2, 2)), ValueError, "last dimension"),
    ("6-D input", lambda: stn_cuda.grid_sample(_x(1, 1, 3, 4, 4, 4), _x(1, 2, 2, 2, 3)), ValueError, "input"),
    ("5-D batch sizes", lambda: stn_cuda.grid_sample(_x(2, 3, 4, 4, 4), _x(1, 2, 2, 2, 3)), ValueError, "batch size"),
    ("5-D empty depth", lambda: stn_cuda.grid_sample(_x(1, 3, 0, 4, 4), _x(1, 2, 2, 2, 3)), ValueError, "spatial"),
    ("5-D bicubic", lambda: stn_cuda.grid_sample(_x(1, 3, 4, 4, 4), _x(1, 2, 2, 2, 3), mode="bicubic"), ValueError, "bicubic.*4-D"),
    ("5-D affine bicubic", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4, 4), _x(1, 3, 4), mode="bicubic"), ValueError, "bicubic.*4-D"),
    ("theta 2x3, 5-D size", lambda: stn_cuda.affine_grid(_x(1, 2, 3), (1, 1, 2, 2, 2)), ValueError, r"theta.*\(N, 3, 4\)"),
    ("theta 3x4, 4-D size", lambda: stn_cuda.affine_grid(_x(1, 3, 4), (1, 1, 2, 2)), ValueError, r"theta.*\(N, 2, 3\)"),
    ("5-D size batch", lambda: stn_cuda.affine_grid(_x(2, 3, 4), (1, 1, 2, 2, 2)), ValueError, "batch"),
    ("5-D size zero", lambda: stn_cuda.affine_grid(_x(1, 3, 4), (1, 1, 2, 0, 2)), ValueError, "size"),
    ("6-D size", lambda: stn_cuda.affine_grid(_x(1, 3, 4), (1, 1, 2, 2, 2, 2)), ValueError, "size"),
    ("theta 2x3, 5-D input", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4, 4), _x(1, 2, 3)), ValueError, r"theta.*\(N, 3, 4\)"),
    ("theta 3x4, 4-D input", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 3, 4)), ValueError, r"theta.*\(N, 2, 3\)"),
    ("5-D out_size 2 values", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4, 4), _x(1, 3, 4), (4, 4)), ValueError, "out_size"),
    ("5-D out_size zero", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4, 4), _x(1, 3, 4), (4, 0, 4)), ValueError, "out_size"),
    ("raw op theta 2x3", lambda: torch.ops.stn_cuda.affine_sample(_x(1, 3, 4, 4, 4), _x(1, 2, 3), [2, 2, 2], 0, 0, False), ValueError, "theta"),
    ("raw op out_size", lambda: torch.ops.stn_cuda.affine_sample(_x(1, 3, 4, 4, 4), _x(1, 3, 4), [2, 2], 0, 0, False), ValueError, "out_size"),
    ("raw op affine_grid size", lambda: torch.ops.stn_cuda.affine_grid(_x(1, 3, 4), [1, 1, 2], False), ValueError, "size"),
    ("raw op affine_grid theta", lambda: torch.ops.stn_cuda.affine_grid(_x(1, 2, 3), [1, 1, 2, 2, 2], False), ValueError, "theta"),
    ("raw op grad_grid", lambda: torch.ops.stn_cuda.affine_grid_backward(_x(1, 2, 2, 2, 2), False), ValueError, "grad_grid"),
    ("raw op grad_output", lambda: torch.ops.stn_cuda.grid_sample_backward(_x(1, 3, 2, 2), _x(1, 3, 4, 4, 4), _x(1, 2, 2, 2, 3), 0, 0, False, [True, True]), ValueError, "grad_output"),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()

"""The warp-aggregated scatter (stn_cuda.set_tuning(scatter='warp')): the CUDA backward
sums the values of neighbouring lanes that share a corner before one atomic add per run
of them.

Its tests are on CUDA (they skip without a GPU), against torch in float64 and against the
default scatter, with the cases that make or break runs: points that pile up in a few
input cells (zoom, clipping by border padding), equal corners that are not neighbours,
non-finite and outside points inside runs, partial warps, rows that end mid-warp, split
channels, other layouts and half precision. The setting itself, and that the CPU ignores
it: test_tuning.py.
"""
import functools
import re

import pytest
import torch
import torch.nn.functional as F

import stn_cuda

from conftest import EMULATES_CUDA, PADDING_MODES
from helpers import check_against, check_with_bad_points, cuda_device_tuned, grads, leaf, make, ours, theirs, torch_affine_sample

MODES = ["bilinear", "nearest"]


device = cuda_device_tuned(scatter="warp")


def zoomed_grid(n, h_out, w_out, zoom, device, dtype=torch.float64, centre=(0.1, -0.2)):
    """A grid that magnifies a patch around centre zoom-fold: many points per input cell."""
    theta = torch.tensor([[1 / zoom, 0.0, centre[0]], [0.0, 1 / zoom, centre[1]]], dtype=dtype)
    theta = theta.expand(n, 2, 3) + 1e-3 * torch.randn(n, 2, 3, dtype=dtype)
    return F.affine_grid(theta.to(device), (n, 1, h_out, w_out), align_corners=False)


# -- on CUDA ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("align_corners", [False, True], ids=["edges", "corners"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 11, 5, 37), (1, 1, 1, 1, 3, 3), (3, 2, 13, 5, 33, 31)],
                         ids=["partial warps", "1x1", "rows mid-warp"])
def test_warp_scatter_matches_torch(device, shape, mode, padding_mode, align_corners):
    input, grid = make(shape, device, spread=1.3)
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (input, grid))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("zoom", [4.0, 40.0, 1e4])
def test_warp_scatter_zoomed_in(device, mode, padding_mode, zoom):
    """Runs of up to a whole warp on one corner (at 1e4, every point of a row in one cell)."""
    input = torch.randn(2, 3, 12, 10, dtype=torch.float64, device=device, requires_grad=True)
    grid = zoomed_grid(2, 9, 70, zoom, device).requires_grad_()
    check_against(ours(padding_mode, False, mode), theirs(padding_mode, False, mode), (input, grid))


@pytest.mark.parametrize("mode", MODES)
def test_warp_scatter_clipped_to_the_border(device, mode):
    """Border padding clips far points onto the edge pixels: long runs of equal corners
    next to runs of others."""
    input, grid = make((2, 2, 6, 7, 8, 64), device, spread=6.0)
    check_against(ours("border", True, mode), theirs("border", True, mode), (input, grid))


@pytest.mark.parametrize("mode", MODES)
def test_warp_scatter_equal_corners_apart(device, mode):
    """Each point is one of three places, at random: equal corners in lanes that are not
    neighbours, so one corner's value arrives in several runs."""
    places = torch.tensor([[-0.3, 0.2], [0.55, -0.7], [-0.3, 0.2001]], dtype=torch.float64)
    grid = places[torch.randint(0, 3, (2, 6, 64))].to(device).requires_grad_()
    input = torch.randn(2, 4, 9, 9, dtype=torch.float64, device=device, requires_grad=True)
    check_against(ours("zeros", False, mode), theirs("zeros", False, mode), (input, grid))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e6])
def test_warp_scatter_bad_points_in_runs(device, mode, padding_mode, bad):
    """Non-finite and far points among points that share their neighbours' corners: they
    break the runs, and the runs on either side still sum right. A non-finite point
    contributes nothing; torch's reference gets a finite point there with no gradient.
    (Far, not huge: torch's CUDA reflection counts folds in an int, which saturates.)"""
    input = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    grid = zoomed_grid(2, 4, 64, 100.0, device)
    grid[:, :, 5::7, 0] = bad
    grid[:, 1, 30:34, 1] = bad
    grid.requires_grad_()
    check_with_bad_points(input, grid, mode, padding_mode)


@pytest.mark.parametrize("mode", MODES)
def test_warp_scatter_split_channels(device, mode):
    """Few points, many channels: the channels are split across threads (grad_grid is then
    added atomically), each group scattering by runs."""
    input = torch.randn(4, 256, 16, 16, dtype=torch.float64, device=device, requires_grad=True)
    grid = zoomed_grid(4, 8, 8, 3.0, device).requires_grad_()
    check_against(ours("zeros", False, mode), theirs("zeros", False, mode), (input, grid))


@pytest.mark.parametrize("mode", MODES)
def test_warp_scatter_layouts(device, mode):
    """channels_last input (grad_input in its layout: other plane strides), a transposed
    grid and a strided grad_output."""
    input, grid = make((2, 5, 9, 11, 7, 40), device, spread=0.3)
    x = leaf(input.detach().contiguous(memory_format=torch.channels_last))
    g = leaf(grid.detach().transpose(1, 2).contiguous().transpose(1, 2))
    go = torch.randn(40, 7, 2, 5, dtype=input.dtype, device=device).permute(2, 3, 1, 0)
    check_against(ours("reflection", True, mode), theirs("reflection", True, mode), (x, g), grad_output=go)


@pytest.mark.parametrize("needs", ["input", "grid"])
def test_warp_scatter_one_gradient(device, needs):
    input, grid = make((2, 3, 6, 6, 5, 40), device, spread=0.2)
    input.requires_grad_(needs == "input")
    grid.requires_grad_(needs == "grid")
    check_against(ours("zeros", False), theirs("zeros", False), (input, grid))


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("zoom", [0.05, 0.7])
def test_warp_scatter_affine_sample(device, padding_mode, mode, zoom):
    """The fused sampler: grad_theta reduced per block by the warps' loop, grad_input by runs."""
    input = torch.randn(3, 4, 20, 17, dtype=torch.float64, device=device, requires_grad=True)
    theta = (zoom * (torch.eye(2, 3, dtype=torch.float64) + 0.1 * torch.randn(3, 2, 3))).to(device)
    theta.requires_grad_()
    fused = functools.partial(stn_cuda.affine_sample, out_size=(19, 45), mode=mode,
                              padding_mode=padding_mode)
    ref = functools.partial(torch_affine_sample, out_size=(19, 45), mode=mode, padding_mode=padding_mode)
    check_against(fused, ref, (input, theta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_warp_scatter_agrees_with_atomic(device, mode, dtype):
    """On the suite's contended shape (a 20x zoom), the warp scatter's grad_input equals the
    atomic one's to rounding, in float32 accumulation whatever the dtype, and (bilinear)
    torch's in float64 on the same rounded inputs. A nearest point within float32 rounding
    of a half-pixel may go the other way than in float64, so nearest is compared with the
    atomic scatter alone, which computes its positions the same way."""
    input = torch.randn(4, 8, 128, 128, device=device).to(dtype).requires_grad_()
    grid = zoomed_grid(4, 128, 128, 20.0, device, dtype=torch.float32).to(dtype).requires_grad_()
    go = torch.randn(4, 8, 128, 128, device=device).to(dtype)
    warp = grads(stn_cuda.grid_sample(input, grid, mode), (input, grid), go)
    with stn_cuda.use_tuning(scatter="atomic"):
        atomic = grads(stn_cuda.grid_sample(input, grid, mode), (input, grid), go)
    x64, g64 = leaf(input.double()), leaf(grid.double())
    ref = grads(F.grid_sample(x64, g64, mode, align_corners=False), (x64, g64), go.double())
    scale = ref[0].abs().max().item()
    # A pixel sums ~1600 shares; float32 positions and accumulation in another order.
    tol = 1e-5 * scale if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * scale
    if mode == "bilinear":
        for got in (atomic[0], warp[0]):
            torch.testing.assert_close(got.double(), ref[0], atol=tol, rtol=0)
    torch.testing.assert_close(warp[0], atomic[0], atol=tol, rtol=0)
    # The grid's gradient is the same computation (its channel groups add atomically).
    grid_tol = 2 * torch.finfo(dtype).eps * ref[1].abs().max().item()
    torch.testing.assert_close(warp[1], atomic[1], atol=grid_tol, rtol=0)


def _backward_kernels(fn):
    """The Scatter codes (kernels.h) of the sampler backward kernels that fn() launches, in
    the profiler's record of CUDA kernels; None where it recorded no CUDA activity."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # demangled "(stn::Scatter)1" or mangled "...7ScatterE1E..."
    codes = [re.search(r"Scatter(?:\)|E)(\d)", name) for name in names if "sample_backward_kernel" in name]
    return [int(c.group(1)) for c in codes if c] if names else None


@pytest.mark.skipif(EMULATES_CUDA, reason="reads the CUDA profiler's names of the kernels that ran")
def test_warp_scatter_is_the_kernel_that_runs(device):
    """Under 'warp', the bilinear and nearest backward launch the WarpRuns kernel; bicubic,
    the deterministic path and a backward without grad_input keep the atomic one."""
    input, grid = make((2, 3, 8, 8, 5, 40), device, dtype=torch.float32, spread=0.2)

    def backward(mode="bilinear", input_grad=True):
        x = input if input_grad else input.detach()
        go = torch.ones(2, 3, 5, 40, device=device)
        return lambda: grads(stn_cuda.grid_sample(x, grid, mode), (x, grid) if input_grad else (grid,), go)

    if _backward_kernels(backward()) is None:
        pytest.skip("the profiler recorded no CUDA activity here")
    for fn in (backward(), backward("nearest")):
        assert _backward_kernels(fn) == [1]  # Scatter::WarpRuns
    for fn in (backward("bicubic"), backward(input_grad=False)):
        assert _backward_kernels(fn) == [0]  # Scatter::Atomic
    with stn_cuda.deterministic():
        assert _backward_kernels(backward()) == [0]  # the grid's gradient alone
    with stn_cuda.use_tuning(scatter="atomic"):
        assert _backward_kernels(backward()) == [0]

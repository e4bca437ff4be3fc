"""Sizes near the limits of 32-bit indexing. The kernels address a plane (or volume) with
32-bit offsets when every neighbour offset fits (offsets_fit_int32 in csrc/kernels.h),
else with 64-bit ones, and everything beyond a plane (batch, channel, grid and output
positions) in 64 bits; the CUDA kernels index output points in 32 bits too where there are
at most 2**30 - 256. Tensors here span more than 2**31 elements, cheaply on the CPU: torch.empty
reserves the memory and only the few pages the tests write or the kernels read are ever
touched (a few MiB in all). On a GPU the 8 GiB are allocated for real; the tests skip where
the GPU has less free.

Non-finite points never poison grad_input: test_grid_sample.py::
test_non_finite_points_contribute_nothing."""
import functools

import pytest
import torch
import torch.nn.functional as F

import stn_cuda
from stn_cuda import _reference
from stn_cuda.functional import _MODES, _PADDING_MODES
from conftest import DEVICES, HAS_CUDA, NO_CUDA_REASON
from helpers import grads

INT32_MAX = 2**31 - 1
W = 2**15  # plane width of the large planes below


BIG_ELEMENTS = 2**31 + 2**22


@pytest.fixture(params=DEVICES)
def big_device(request):
    if request.param == "cuda" and torch.cuda.mem_get_info()[0] < 4 * BIG_ELEMENTS + 2**31:
        pytest.skip("the GPU has less than 10 GiB free for the 8 GiB buffer")
    return request.param


@functools.lru_cache(maxsize=1)
def big_buffer(device="cpu"):
    """2**31 + 2**22 float32 elements (8 GiB of address space; on the CPU almost none of it used)."""
    return torch.empty(BIG_ELEMENTS, dtype=torch.float32, device=device)


def view_of(shape, strides, offset, values):
    """A view into big_buffer() on values' device with the given layout, holding `values`."""
    view = big_buffer(values.device.type).as_strided(shape, strides, offset)
    view.copy_(values)
    return view


def plane_reach(h, w):
    """The largest neighbour offset the CPU kernels form in a dense h x w plane."""
    return (h + 2) * w + (w + 2)


@pytest.mark.parametrize("h", [65532, 65537], ids=["int32 offsets up to 2**31-2**17", "int64 offsets past 2**31"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_plane_with_offsets_near_2_31(h, padding_mode, big_device):
    """A dense float32 plane of ~2**31 elements, sampled near its far corner and elsewhere:
    values and grad_grid. torch's CPU kernel addresses float32 planes with 32-bit offsets, so
    the reference is torch on the 2x2 window around each point (in float64, at the pixel
    position stn_cuda computes in float32)."""
    assert (plane_reach(h, W) <= INT32_MAX) == (h == 65532)  # one on each side of the switch
    input = big_buffer(big_device)[:h * W].view(1, 1, h, W)
    pixels = torch.tensor([[W - 1.25, h - 1.5], [W - 1, h - 1], [7.75, h - 2.5], [W - 1.75, 0.5],
                           [2.5, 3.25], [W / 2 - 0.6, h / 2 + 0.3], [W + 0.7, h + 0.4], [W - 0.6, h - 0.2]],
                          dtype=torch.float64)
    size = torch.tensor([W, h], dtype=torch.float64)
    grid = (2 * pixels / (size - 1) - 1).float()[None, None].requires_grad_()  # align_corners=True
    # the pixel position each point lands on, as the kernels compute it (in float32)
    position = ((grid.detach()[0, 0] + 1) / 2) * (size.float() - 1)
    if padding_mode == "border":
        position = torch.minimum(position.clamp(min=0), size.float() - 1)
    corner = position.floor().long()
    neighbours = [(i, y0 + dy, x0 + dx) for i, (x0, y0) in enumerate(corner.tolist())
                  for dy in range(2) for dx in range(2) if 0 <= y0 + dy < h and 0 <= x0 + dx < W]
    for _, y, x in neighbours:  # the values the points read (the rest is never read)
        input[0, 0, y, x] = torch.randn(()).item()
    windows = torch.zeros(len(pixels), 1, 2, 2, dtype=torch.float64)
    for i, y, x in neighbours:
        windows[i, 0, y - corner[i, 1], x - corner[i, 0]] = input[0, 0, y, x].item()
    local = (2 * (position.double() - corner) - 1)[:, None, None].requires_grad_()  # in the window

    grid_on = grid.detach().to(big_device).requires_grad_()
    out = stn_cuda.grid_sample(input, grid_on, padding_mode=padding_mode, align_corners=True)
    ref = F.grid_sample(windows, local, align_corners=True)  # zeros: the window holds the padding
    torch.testing.assert_close(out[0, 0, 0].double().cpu(), ref.flatten(), atol=1e-5, rtol=1e-5)
    if padding_mode == "zeros":
        go = torch.randn(len(pixels), dtype=torch.float64)
        (gg,), (rg,) = grads(out, (grid_on,), go.float().view(out.shape).to(big_device)), grads(ref, (local,), go.view(ref.shape))
        gg = gg.cpu()
        # d local / d grid = 2 * d position / d grid = size - 1
        torch.testing.assert_close(gg[0, 0].double(), rg[:, 0, 0] * (size - 1), atol=1e-5 * W, rtol=1e-4)


# Strides past 2**31 elements in small tensors, each a view into one large buffer:
# (shape, strides, storage offset). The input's plane stride alone makes its plane
# offsets exceed 2**31 in the second case.
BIG_STRIDES = {
    "batch stride": ((2, 3, 5, 7), (2**31 + 1001, 311, 17, 2), 5),
    "row stride": ((1, 2, 3, 4), (10, 5, 2**30 + 3, 1), 2),
}


@pytest.mark.parametrize("name", BIG_STRIDES)
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_strides_past_2_31(name, padding_mode, big_device):
    """grid_sample and affine_sample, forward and backward, with input, grid and
    grad_output views whose element offsets exceed 2**31; against torch on compact copies."""
    shape, strides, offset = BIG_STRIDES[name]
    n, c = shape[:2]
    input = view_of(shape, strides, offset, torch.randn(shape, device=big_device))
    # the grid's and grad_output's second batch elements lie past 2**31 too, apart from the input's
    grid = view_of((n, 4, 3, 2), (2**31 + 2**12, 6, 2, 1), 2**20,
                   torch.rand(n, 4, 3, 2, device=big_device) * 2.4 - 1.2)
    go = view_of((n, c, 4, 3), (2**31 + 2**13, 12, 3, 1), 2**21, torch.randn(n, c, 4, 3, device=big_device))
    sampling = (0, ["zeros", "border", "reflection"].index(padding_mode), False)

    out = torch.ops.stn_cuda.grid_sample(input, grid, *sampling)
    gi, gg = torch.ops.stn_cuda.grid_sample_backward(go, input, grid, *sampling, [True, True])
    x, g = input.contiguous().requires_grad_(), grid.contiguous().requires_grad_()
    ref = F.grid_sample(x, g, padding_mode=padding_mode, align_corners=False)
    torch.testing.assert_close(out, ref)
    for ours, theirs in zip((gi, gg), grads(ref, (x, g), go.contiguous())):
        torch.testing.assert_close(ours, theirs)

    theta = (torch.eye(2, 3, device=big_device) + 0.3 * torch.randn(n, 2, 3, device=big_device)).requires_grad_()
    fused = torch.ops.stn_cuda.affine_sample(input, theta.detach(), [4, 3], *sampling)
    gi, gt = torch.ops.stn_cuda.affine_sample_backward(go, input, theta.detach(), *sampling, [True, True])
    ref = F.grid_sample(x, F.affine_grid(theta, (n, c, 4, 3), align_corners=False),
                        padding_mode=padding_mode, align_corners=False)
    torch.testing.assert_close(fused, ref)
    for ours, theirs in zip((gi, gt), grads(ref, (x, theta), go.contiguous())):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rows", [32767, 32768], ids=["int32 points: 2**30 - 2**15", "int64 points: 2**30"])
def test_output_points_near_2_30_on_cuda(rows):
    """The CUDA image kernels number a batch element's output points in 32 bits up to
    2**30 - 256 of them, else in 64 (with_point_index_type, csrc/cuda/launch.cuh): a 2 GiB
    float16 output from the fused sampler on each side of the switch, checked against
    torch at points spread over it, the last one included."""
    if not HAS_CUDA:
        pytest.skip(NO_CUDA_REASON)
    if torch.cuda.mem_get_info()[0] < 2**32:
        pytest.skip("the GPU has less than 4 GiB free for the 2 GiB output")
    size = (rows, 32768)
    input = torch.randn(1, 1, 64, 64, dtype=torch.float16, device="cuda")
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.2, 0.9, 0.05]]], dtype=torch.float16, device="cuda")
    out = stn_cuda.affine_sample(input, theta, size)
    h = torch.tensor([0, 1, rows // 2, rows - 2, rows - 1, rows - 1], device="cuda")
    w = torch.tensor([0, 32767, 12345, 1, 32766, 32767], device="cuda")
    # the points' source coordinates as affine_grid lays them out, in float64
    xt = (2 * w.double() + 1) / size[1] - 1
    yt = (2 * h.double() + 1) / size[0] - 1
    src = theta.double()[0] @ torch.stack([xt, yt, torch.ones_like(xt)])
    ref = F.grid_sample(input.double(), src.T.reshape(1, 1, -1, 2), align_corners=False)
    torch.testing.assert_close(out[0, 0, h, w].double(), ref.flatten(), atol=5e-3, rtol=5e-3)
    del out


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_volume_offsets_past_2_31(padding_mode, big_device):
    """A volume whose depth stride takes its offsets past 2**31 (64-bit offsets) and the same
    values compact (32-bit offsets): grid_sample forward and backward against torch."""
    shape = (1, 2, 3, 4, 5)
    far = view_of(shape, (40, 20, 2**30 + 3, 5, 1), 7, torch.randn(shape, device=big_device))
    grid = torch.rand(1, 2, 3, 4, 3, device=big_device) * 2.4 - 1.2
    go = torch.randn(1, 2, 2, 3, 4, device=big_device)
    sampling = (0, ["zeros", "border", "reflection"].index(padding_mode), False)
    x, g = far.contiguous().requires_grad_(), grid.clone().requires_grad_()
    ref = F.grid_sample(x, g, padding_mode=padding_mode, align_corners=False)
    ref_grads = grads(ref, (x, g), go)
    for input in (far, far.contiguous()):
        torch.testing.assert_close(torch.ops.stn_cuda.grid_sample(input, grid, *sampling), ref)
        ours = torch.ops.stn_cuda.grid_sample_backward(go, input, grid, *sampling, [True, True])
        for a, b in zip(ours, ref_grads):
            torch.testing.assert_close(a, b)


def test_dense_volume_past_2_31(big_device):
    """A dense float32 volume of 2**31 elements, whose offsets need 64 bits also in the
    backward (which addresses grad_input, and so reads the input, dense): values and grad_grid
    at points near its far corner and elsewhere, against torch on the 2x2x2 window around
    each point (in float64, at the position stn_cuda computes in float32)."""
    d, h, w = 128, 4096, 4096
    input = big_buffer(big_device)[:d * h * w].view(1, 1, d, h, w)
    size = torch.tensor([w, h, d], dtype=torch.float64)
    voxels = torch.tensor([[w - 1.25, h - 1.5, d - 1.75], [w - 1, h - 1, d - 1], [2.5, 3.25, 0.5],
                           [w / 2 - 0.6, h / 2 + 0.3, d - 1.1], [w + 0.7, h + 0.4, d + 0.2]],
                          dtype=torch.float64)
    grid = (2 * voxels / (size - 1) - 1).float()[None, None, None]  # align_corners=True
    position = ((grid[0, 0, 0] + 1) / 2) * (size.float() - 1)
    corner = position.floor().long()
    neighbours = [(i, z0 + dz, y0 + dy, x0 + dx) for i, (x0, y0, z0) in enumerate(corner.tolist())
                  for dz in range(2) for dy in range(2) for dx in range(2)
                  if z0 + dz < d and y0 + dy < h and x0 + dx < w]
    for _, z, y, x in neighbours:  # the values the points read (the rest is never read)
        input[0, 0, z, y, x] = torch.randn(()).item()
    windows = torch.zeros(len(voxels), 1, 2, 2, 2, dtype=torch.float64)
    for i, z, y, x in neighbours:
        windows[i, 0, z - corner[i, 2], y - corner[i, 1], x - corner[i, 0]] = input[0, 0, z, y, x].item()
    local = (2 * (position.double() - corner) - 1)[:, None, None, None].requires_grad_()

    grid_on = grid.to(big_device).requires_grad_()
    out = stn_cuda.grid_sample(input, grid_on, align_corners=True)
    ref = F.grid_sample(windows, local, align_corners=True)
    torch.testing.assert_close(out.flatten().double().cpu(), ref.flatten(), atol=1e-5, rtol=1e-5)
    go = torch.randn(len(voxels), dtype=torch.float64)
    gg, = grads(out, (grid_on,), go.float().view(out.shape).to(big_device))
    rg, = grads(ref, (local,), go.view(ref.shape))
    torch.testing.assert_close(gg.reshape(-1, 3).double().cpu(), rg.reshape(-1, 3) * (size - 1),
                               atol=1e-5 * w, rtol=1e-4)


def test_bicubic_taps_of_an_image_wider_than_2_24(device):
    """Past 2**24 columns float32 cannot hold every column: a point at column W - 2 still
    has a tap past the image (float(W - 3) rounds up to W - 2), which reads as 0, as
    torch's do, rather than the element after the row (here NaN). Only the grid's gradient
    is asked for, so the input stays a view of one row."""
    width = 2**24 + 6
    row = torch.zeros(width + 1, device=device)
    row[width] = float("nan")
    input = row.as_strided((1, 1, 5, width), (0, 0, 0, 1))
    grid = torch.tensor([[[[1 - 2**-24, -0.5]]]], device=device, requires_grad=True)  # x: W - 2
    for sample in (stn_cuda.grid_sample, F.grid_sample):
        out = sample(input, grid, mode="bicubic", align_corners=True)
        gg, = grads(out, (grid,), torch.ones_like(out))
        assert out.item() == 0 and torch.equal(gg, torch.zeros_like(gg))


@pytest.mark.parametrize("axis", [0, 1], ids=["columns", "rows"])
def test_bicubic_taps_past_2_24_round_as_torchs(axis, device):
    """Past 2**24 pixels torch forms bicubic's taps x0 - 1 .. x0 + 2 in float32, where they
    round to even ones: at 2**24 + 2 they are 2**24, 2**24 + 2, 2**24 + 4 (twice). stn_cuda
    takes the same taps, along either axis (its interior points once took whole ones, whose
    grid gradient was half of torch's here), and so does the reference. (torch's CUDA kernel
    forms rows as (y0 - 1) + k, which rounds twice: it is not compared along rows.)"""
    size, pixel = 2**24 + 64, 2**24 + 2
    input = torch.zeros(1, 1, size, 1, device=device) if axis else torch.zeros(1, 1, 1, size, device=device)
    input.view(-1)[pixel - 4:pixel + 5] = torch.arange(1.0, 10.0)
    input.requires_grad_()
    grid = torch.zeros(1, 1, 1, 2, device=device)
    grid[..., axis] = 2 * pixel / (size - 1) - 1  # float32 unnormalises it to pixel exactly
    grid.requires_grad_()

    out = stn_cuda.grid_sample(input, grid, mode="bicubic", align_corners=True)
    gi, gg = grads(out, (input, grid), torch.ones_like(out))
    assert out.item() == 5  # the tap on the pixel, weight 1
    one_hot = torch.zeros(size, device=device)
    one_hot[pixel] = 1
    assert torch.equal(gi.view(-1), one_hot)
    d = (size - 1) / 2
    torch.testing.assert_close(gg[..., axis].item(), 0.75 * (7 - 3) * d, rtol=1e-6, atol=0)  # taps 2**24 +- 2
    references = [lambda i, g: _reference.grid_sample(i, g, _MODES["bicubic"], _PADDING_MODES["zeros"], True)]
    if axis == 0 or device == "cpu":
        references.append(lambda i, g: F.grid_sample(i, g, mode="bicubic", align_corners=True))
    for reference in references:
        ref = reference(input, grid)
        ref_gi, ref_gg = grads(ref, (input, grid), torch.ones_like(ref))
        assert torch.equal(ref, out) and torch.equal(ref_gi, gi)
        torch.testing.assert_close(ref_gg, gg, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dims", [4, 5], ids=["image", "volume"])
@pytest.mark.parametrize("width, column", [(2**24, 2**24 - 1), (2**24 + 3, 2**24 + 2), (2**25 + 1, 2**25),
                                           (2**25 + 6, 2**25 + 4)],
                         ids=["last column 2**24-1", "last column 2**24+2", "last column 2**25",
                              "column 2**25+4 inside"])
def test_bilinear_at_columns_past_2_24(dims, width, column, device):
    """Past 2**24 columns float32 cannot hold every column, but each it holds is an integer:
    a point there reads that pixel with weight 1 and its east neighbour with weight 0. Here
    align_corners and x = 1 put the point at float32(width - 1) = column exactly. The floor
    once truncated x + 2, which rounds there (at 2**24 - 1 and 2**25 it read the west
    neighbour, here inf; at 2**25 + 4 nothing), and the west weight was x_east - x, where
    x_east rounds too (to 2 at 2**24 + 2; to 0 past 2**25). torch's CPU image kernel gives
    these values; its CUDA and volume kernels round x_east as the old code did. The reference
    (stn_cuda._reference, which double backward differentiates) computes the same."""
    shape = (1,) * (dims - 1) + (width,)
    input = torch.zeros(shape, device=device)
    row = input.view(-1)
    row[column - 1], row[column] = float("inf"), 3
    east = 5.0 if column + 1 < width else 0.0  # past the image: zero
    if column + 1 < width:
        row[column + 1] = east
    input.requires_grad_()
    grid = torch.zeros((1,) * (dims - 1) + (dims - 2,), device=device)
    grid[..., 0] = 1
    grid.requires_grad_()

    out = stn_cuda.grid_sample(input, grid, align_corners=True)
    gi, gg = grads(out, (input, grid), torch.ones_like(out))
    assert out.item() == 3
    one_hot = torch.zeros_like(row)
    one_hot[column] = 1
    assert torch.equal(gi.view(-1), one_hot)
    torch.testing.assert_close(gg[..., 0].item(), (east - 3) * (width - 1) / 2, rtol=1e-6, atol=0)
    assert torch.equal(gg[..., 1:], torch.zeros_like(gg[..., 1:]))

    ref = _reference.grid_sample(input, grid, _MODES["bilinear"], _PADDING_MODES["zeros"], True)
    ref_gi, ref_gg = grads(ref, (input, grid), torch.ones_like(ref))
    assert ref.item() == 3 and torch.equal(ref_gi, gi)
    torch.testing.assert_close(ref_gg, gg, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("dims", [4, 5], ids=["image", "volume"])
@pytest.mark.parametrize("width", [2**25 + 1, 2**25 + 7, 2**26 + 3])
def test_points_past_a_row_wider_than_2_25_read_nothing(mode, dims, width, device):
    """A point past the image's last column reads nothing (zeros padding). Positions far
    outside are clamped to size + 1 before they become indices; float32(size + 1) rounds
    down past 2**25 columns (into the image at 2**25 + 1 and 2**26 + 3), and such points once
    read the last pixels. The first point, x = 1, sits on float32(width - 1): a column inside,
    but past the image at 2**25 + 7, where it rounds up. The reference agrees (it used to index
    past the row there)."""
    if mode == "bicubic" and dims == 5:
        pytest.skip("bicubic interpolation is for images only")
    input = torch.ones((1,) * (dims - 1) + (width,), device=device, requires_grad=True)
    xs = [1.0] + [1 + k * 2**-23 for k in (2, 50, 2**20)] + [3.0, 1e6]  # (1 + 2**-23 + 1 rounds to 2)
    grid = torch.zeros((1,) * (dims - 2) + (len(xs), dims - 2), device=device)
    grid[..., 0] = torch.tensor(xs)
    grid.requires_grad_()

    out = stn_cuda.grid_sample(input, grid, mode=mode, align_corners=True)
    gi, gg = grads(out, (input, grid), torch.ones_like(out))
    last = int(torch.tensor(width - 1.0))  # float32(width - 1)
    expected, one_hot = torch.zeros(len(xs)), torch.zeros(width)
    if last < width:
        expected[0] = one_hot[last] = 1
    assert torch.equal(out.flatten().cpu(), expected)
    assert torch.equal(gi.flatten().cpu(), one_hot)
    assert torch.equal(gg[..., 1:, :].cpu(), torch.zeros_like(gg[..., 1:, :]).cpu())

    ref = _reference.grid_sample(input, grid, _MODES[mode], _PADDING_MODES["zeros"], True)
    ref_gi, ref_gg = grads(ref, (input, grid), torch.ones_like(ref))
    assert torch.equal(ref, out) and torch.equal(ref_gi, gi)
    if mode != "nearest":  # (the reference's nearest has no path to the grid)
        assert torch.equal(ref_gg[..., 1:, :], gg[..., 1:, :])

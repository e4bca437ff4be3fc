"""Channel vectors (stn_cuda.set_tuning(channel_vectors=True)): on a channels_last input,
the CUDA image kernels read 16 bytes of a pixel's channels per load and the backward adds
into grad_input by vector atomics.

The tests are on CUDA (they skip without a GPU): against torch in float64 (2 channels a
vector), float32 (4) and half precision (8); with the shapes and points that stress a
vector's addressing (1x1 and prime sizes, padding, far and non-finite points, channels
split across threads, strided and expanded inputs, grad_output of any layout); against
the scalar kernels; and the inputs that must fall back to one channel at a time (channels
not in whole aligned vectors, NCHW, bicubic). Which kernels run, the profiler tells
(test_channel_vectors_are_the_kernels_that_run, kept out of gpu_check.sh's sanitizer
runs). That the CPU ignores the setting: test_tuning.py.
"""
import functools
import re

import pytest
import torch
import torch.nn.functional as F

import stn_cuda

from conftest import EMULATES_CUDA, PADDING_MODES
from helpers import check_against, check_with_bad_points, cuda_device_tuned, grads, leaf, make, ours, special_grid, theirs, torch_affine_sample

MODES = ["bilinear", "nearest"]
VECTOR = {torch.float64: 2, torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}


device = cuda_device_tuned(channel_vectors=True)


def channels_last(t, requires_grad=True):
    return leaf(t.detach().contiguous(memory_format=torch.channels_last), requires_grad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("align_corners", [False, True], ids=["edges", "corners"])
@pytest.mark.parametrize("shape", [(2, 4, 7, 11, 5, 37), (1, 2, 1, 1, 3, 3), (3, 6, 13, 5, 33, 31)],
                         ids=["partial warps", "1x1", "primes"])
def test_channel_vectors_match_torch(device, shape, mode, padding_mode, align_corners):
    """float64: vectors of 2 channels, 1 to 3 per pixel; far points (spread 1.3) outside.
    (The 1x1 input's strides of size-1 dimensions are the NCHW ones: never used.)"""
    input, grid = make(shape, device, spread=1.3)
    check_against(ours(padding_mode, align_corners, mode), theirs(padding_mode, align_corners, mode),
                  (channels_last(input), grid))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_channel_vectors_special_points(device, mode, padding_mode):
    """Points on pixel centres and edges, half-way points, ±1 and past the border."""
    input = channels_last(torch.randn(1, 4, 5, 7, dtype=torch.float64, device=device))
    grid = special_grid((5, 7), device).requires_grad_()
    check_against(ours(padding_mode, True, mode), theirs(padding_mode, True, mode), (input, grid))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vectors", [1, 3])
def test_channel_vectors_in_lower_precision(device, dtype, mode, vectors):
    """4 (float32) or 8 (half) channels a vector, accumulated in float32, against torch in
    float64 on the same rounded values. A nearest point within rounding of a half-pixel
    may go either way, so nearest is compared with the scalar kernel instead, which
    computes its positions the same way."""
    c = VECTOR[dtype] * vectors
    input = channels_last(torch.randn(3, c, 17, 23, device=device).to(dtype))
    # Multiples of 2^-12: pixel positions exact in float32, so that no point within
    # rounding of a pixel edge lands in another cell than torch's float64 puts it in.
    grid = torch.round((torch.rand(3, 19, 29, 2, device=device) * 2.2 - 1.1) * 4096) / 4096
    grid = leaf(grid.to(dtype))
    go = torch.randn(3, c, 19, 29, device=device).to(dtype)
    got = stn_cuda.grid_sample(input, grid, mode)
    got_grads = grads(got, (input, grid), go)
    if mode == "bilinear":
        x64, g64 = leaf(input.double()), leaf(grid.double())
        ref = F.grid_sample(x64, g64, mode, align_corners=False)
        ref_grads = grads(ref, (x64, g64), go.double())
    else:
        with stn_cuda.use_tuning(channel_vectors=False):
            ref = stn_cuda.grid_sample(input, grid, mode)
            ref_grads = grads(ref, (input, grid), go)
    # Rounding to dtype, and in float32 pixel positions (float32 unnormalisation).
    tol = max(8 * torch.finfo(dtype).eps, 4e-5)
    for name, a, b in zip(("output", "grad_input", "grad_grid"), (got,) + got_grads, (ref,) + ref_grads):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b.double(), atol=tol * scale, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e6])
def test_channel_vectors_bad_points(device, mode, bad):
    """A non-finite point samples 0 and contributes nothing; a far one reads nothing."""
    input = channels_last(torch.randn(2, 4, 8, 8, dtype=torch.float64, device=device))
    grid = torch.rand(2, 4, 64, 2, dtype=torch.float64, device=device) * 2 - 1
    grid[:, :, 5::7, 0] = bad
    grid = leaf(grid)
    check_with_bad_points(input, grid, mode)


@pytest.mark.parametrize("mode", MODES)
def test_channel_vectors_split_channels(device, mode):
    """Few points, many channels: groups of whole vectors across threads (grad_grid then
    added atomically)."""
    input = channels_last(torch.randn(4, 256, 16, 16, dtype=torch.float64, device=device))
    grid = leaf(torch.rand(4, 8, 8, 2, dtype=torch.float64, device=device) * 2 - 1)
    check_against(ours("zeros", False, mode), theirs("zeros", False, mode), (input, grid))


@pytest.mark.parametrize("view", ["every other column", "channel slice", "expanded batch"])
def test_channel_vectors_strided_inputs(device, view):
    """Inputs that are channels_last but not dense: the forward reads them as they are (the
    backward reads a dense copy), each pixel's channels still in whole aligned vectors."""
    base = channels_last(torch.randn(2, 8, 9, 22, dtype=torch.float64, device=device), False)
    input = {"every other column": lambda: base[..., ::2],
             "channel slice": lambda: base[:, 2:6],
             "expanded batch": lambda: base[:1].expand(3, -1, -1, -1)}[view]()
    grid = leaf(torch.rand(input.shape[0], 7, 13, 2, dtype=torch.float64, device=device) * 2.4 - 1.2)
    check_against(ours("border", False), theirs("border", False), (leaf(input), grid))


def test_channel_vectors_grad_output_layouts(device):
    """grad_output is read one channel at a time: any strides."""
    input, grid = make((2, 6, 9, 11, 7, 40), device, spread=0.8)
    go = torch.randn(40, 7, 2, 6, dtype=input.dtype, device=device).permute(2, 3, 1, 0)
    g = leaf(grid.detach().transpose(1, 2).contiguous().transpose(1, 2))
    check_against(ours("reflection", True), theirs("reflection", True), (channels_last(input), g),
                  grad_output=go)


@pytest.mark.parametrize("needs", ["input", "grid"])
def test_channel_vectors_one_gradient(device, needs):
    input, grid = make((2, 4, 6, 6, 5, 40), device, spread=0.9)
    input = channels_last(input, needs == "input")
    grid.requires_grad_(needs == "grid")
    check_against(ours("zeros", False), theirs("zeros", False), (input, grid))


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("mode", MODES)
def test_channel_vectors_affine_sample(device, padding_mode, mode):
    """The fused sampler: grad_theta reduced per block, grad_input by vector atomics."""
    input = channels_last(torch.randn(3, 4, 20, 17, dtype=torch.float64, device=device))
    theta = (torch.eye(2, 3, dtype=torch.float64) + 0.2 * torch.randn(3, 2, 3)).to(device).requires_grad_()
    fused = functools.partial(stn_cuda.affine_sample, out_size=(19, 45), mode=mode,
                              padding_mode=padding_mode)
    ref = functools.partial(torch_affine_sample, out_size=(19, 45), mode=mode, padding_mode=padding_mode)
    check_against(fused, ref, (input, theta))


def test_channel_vectors_deterministic(device):
    """The deterministic backward reads the input by vectors for the grid's gradient: the
    same bits twice, and torch's values."""
    input, grid = make((2, 8, 9, 9, 12, 20), device, spread=1.1)
    input = channels_last(input)
    go = torch.randn(2, 8, 12, 20, dtype=input.dtype, device=device)
    with stn_cuda.deterministic():
        first = grads(stn_cuda.grid_sample(input, grid), (input, grid), go)
        again = grads(stn_cuda.grid_sample(input, grid), (input, grid), go)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    x, g = leaf(input), leaf(grid)
    ref = grads(F.grid_sample(x, g, align_corners=False), (x, g), go)
    for a, b in zip(first, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def _misaligned_channels_last(n, c, h, w, device):
    """A dense channels_last tensor whose data starts 4 bytes past a 16-byte boundary."""
    storage = torch.randn(n * c * h * w + 1, device=device)
    return storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)


FALL_BACKS = ["3 channels", "6 channels", "NCHW", "misaligned", "bicubic"]


def _fall_back_case(case, device):
    """(input, grid, grad_output, mode) of float32 inputs that are not in whole aligned
    vectors of 4 channels, or a mode that has none."""
    mode = "bicubic" if case == "bicubic" else "bilinear"
    if case == "misaligned":
        input = _misaligned_channels_last(2, 8, 9, 10, device)
        assert input.is_contiguous(memory_format=torch.channels_last) and input.data_ptr() % 16 == 4
    else:
        c = {"3 channels": 3, "6 channels": 6}.get(case, 8)
        input = torch.randn(2, c, 9, 10, device=device)
        if case != "NCHW":
            input = input.contiguous(memory_format=torch.channels_last)
    grid = leaf(torch.rand(2, 7, 13, 2, device=device) * 2.2 - 1.1)
    return leaf(input), grid, torch.randn(2, input.shape[1], 7, 13, device=device), mode


@pytest.mark.parametrize("case", FALL_BACKS)
def test_channel_vectors_fall_back(device, case):
    """Such inputs take the scalar kernels, with the same results."""
    input, grid, go, mode = _fall_back_case(case, device)
    got = grads(stn_cuda.grid_sample(input, grid, mode), (input, grid), go)
    with stn_cuda.use_tuning(channel_vectors=False):
        ref = grads(stn_cuda.grid_sample(input, grid, mode), (input, grid), go)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_channel_vectors_agree_with_the_scalar_kernels(device):
    """float32, 32 channels on a 3x zoom: the same values to rounding (the same terms per
    channel; the grid's gradient sums them corner by corner instead)."""
    input = channels_last(torch.randn(4, 32, 64, 64, device=device))
    theta = torch.tensor([[1 / 3, 0.1, 0.05], [-0.1, 1 / 3, -0.1]], device=device).expand(4, 2, 3)
    grid = leaf(F.affine_grid(theta, (4, 1, 96, 96), align_corners=False))
    go = torch.randn(4, 32, 96, 96, device=device)
    out = stn_cuda.grid_sample(input, grid)
    vec = (out,) + grads(out, (input, grid), go)
    with stn_cuda.use_tuning(channel_vectors=False):
        out = stn_cuda.grid_sample(input, grid)
        scalar = (out,) + grads(out, (input, grid), go)
    for name, a, b in zip(("output", "grad_input", "grad_grid"), vec, scalar):
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, atol=1e-6 * scale, rtol=0, msg=lambda m: f"{name}: {m}")


def _vector_widths(fn):
    """The channels per step (kernels' kV) of the image sampler kernels that fn() launches,
    forward then backward, in the profiler's record of CUDA kernels; None where it
    recorded no CUDA activity."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not names:
        return None
    # demangled "sample_forward_kernel<false, 4, int, ..." and "...(stn::Scatter)0, 4, int, ...",
    # or mangled "sample_forward_kernelILb0ELi4E..." and "...ScatterE0ELi4E..."
    pattern = re.compile(r"sample_forward_kernel(?:<(?:false|true), |ILb\dELi)(\d+)"
                         r"|sample_backward_kernel.*?Scatter(?:\)\d, |E\dELi)(\d+)")
    widths = []
    for name in names:
        m = pattern.search(name)
        if m:
            widths.append(int(m.group(1) or m.group(2)))
    return widths


@pytest.mark.skipif(EMULATES_CUDA, reason="reads the CUDA profiler's names of the kernels that ran")
def test_channel_vectors_are_the_kernels_that_run(device):
    """Forward and backward take vectors where the input allows, in every floating dtype
    and in the 1x1 and strided cases above, and not in the fall-back cases."""
    def widths(input, grid, go, mode="bilinear"):
        return _vector_widths(lambda: grads(stn_cuda.grid_sample(input, grid, mode), (input, grid), go))

    def case(dtype, c, size=(8, 8), view=lambda t: t):
        input = leaf(view(torch.randn(2, c, *size, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)))
        grid = leaf(torch.rand(input.shape[0], 5, 40, 2, device=device, dtype=dtype) * 2 - 1)
        return input, grid, torch.ones(input.shape[0], c, 5, 40, device=device, dtype=dtype)

    if widths(*case(torch.float32, 16)) is None:
        pytest.skip("the profiler recorded no CUDA activity here")
    for dtype, width in VECTOR.items():
        assert widths(*case(dtype, 16)) == [width, width], dtype
        with stn_cuda.use_tuning(channel_vectors=False):
            assert widths(*case(dtype, 16)) == [1, 1], dtype
    assert widths(*case(torch.float64, 2, size=(1, 1), view=lambda t: t[:1])) == [2, 2]  # 1x1
    assert widths(*case(torch.float32, 8, size=(9, 22), view=lambda t: t[..., ::2])) == [4, 4]
    for name in FALL_BACKS:
        assert widths(*_fall_back_case(name, device)) == [1, 1], name

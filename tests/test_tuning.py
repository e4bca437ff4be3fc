"""The speed settings (stn_cuda.set_tuning, get_tuning, use_tuning): their values, their
errors, that the CPU ignores CUDA's, and that its gathers (cpu_gathers) give the bits of
its scalar loop. What CUDA's do: test_scatter.py, test_channel_vectors.py."""
import ctypes
import itertools
import mmap
import sys

import pytest
import torch

import stn_cuda

from conftest import cpu_kernels_only
from helpers import grads, make, random_theta

DEFAULTS = {"scatter": "atomic", "channel_vectors": False, "cpu_gathers": True}
EVERY_OTHER = {"scatter": "warp", "channel_vectors": True, "cpu_gathers": False}


def test_defaults():
    assert stn_cuda.get_tuning() == DEFAULTS


def test_settings_round_trip():
    with stn_cuda.use_tuning(scatter="warp"):
        assert stn_cuda.get_tuning() == {**DEFAULTS, "scatter": "warp"}
        with stn_cuda.use_tuning(channel_vectors=True, scatter="atomic"):
            assert stn_cuda.get_tuning() == {**DEFAULTS, "channel_vectors": True}
        assert stn_cuda.get_tuning() == {**DEFAULTS, "scatter": "warp"}
    assert stn_cuda.get_tuning() == DEFAULTS
    stn_cuda.set_tuning(**EVERY_OTHER)
    try:
        assert stn_cuda.get_tuning() == EVERY_OTHER
    finally:
        stn_cuda.set_tuning(**DEFAULTS)
    assert stn_cuda.get_tuning() == DEFAULTS


def test_settings_are_restored_after_an_error():
    with pytest.raises(RuntimeError, match="inside"):
        with stn_cuda.use_tuning(**EVERY_OTHER):
            raise RuntimeError("inside")
    assert stn_cuda.get_tuning() == DEFAULTS


@pytest.mark.parametrize("settings, message", [
    ({"scatter": "warps"}, "scatter to be one of 'atomic', 'warp', got 'warps'"),
    ({"scatter": None}, "scatter to be one of"),
    ({"scatter": 1}, "scatter to be one of"),
    ({"channel_vectors": 1}, r"channel_vectors to be one of False, True, got 1"),
    ({"channel_vectors": "yes"}, "channel_vectors to be one of"),
    ({"cpu_gathers": 0}, r"cpu_gathers to be one of True, False, got 0"),
    ({"vectors": True}, "settings among scatter, channel_vectors, cpu_gathers, got 'vectors'"),
    # a good setting beside a bad one is not applied either
    ({"scatter": "warp", "channel_vectors": None}, "channel_vectors to be one of"),
], ids=["unknown mode", "None", "int", "int for bool", "str for bool", "int for cpu_gathers", "unknown name",
        "one bad of two"])
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        stn_cuda.set_tuning(**settings)
    with pytest.raises(ValueError, match=message):
        with stn_cuda.use_tuning(**settings):
            pass
    assert stn_cuda.get_tuning() == DEFAULTS


@pytest.mark.parametrize("bad", [(0, 2), (1, -1), (2, 2), (3, 0), (-1, 0)])
def test_the_extension_checks_codes(bad):
    with pytest.raises(ValueError, match="expected a"):
        stn_cuda._C.set_tuning(*bad)
    assert stn_cuda.get_tuning() == DEFAULTS


def bits(t):
    """t's bits (float32), so that -0.0 differs from 0.0, with one NaN for all: which NaN an
    add of two returns depends on the order of its operands, which compilers swap."""
    t = t.detach()
    return torch.where(t.isnan(), float("nan"), t).contiguous().view(torch.int32)


@cpu_kernels_only
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_cpu_results_do_not_depend_on_the_settings(mode):
    """Bit for bit the same results, on an input the CUDA settings would apply to
    (channels_last, 8 channels), with every setting changed (cpu_gathers among them)."""
    input, grid = make((2, 8, 9, 9, 16, 16), "cpu", dtype=torch.float32, spread=0.1)
    input = input.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    theta = random_theta(2, dtype=torch.float32).requires_grad_()
    go = torch.randn(2, 8, 16, 16)

    def run():
        sampled = stn_cuda.grid_sample(input, grid, mode)
        fused = stn_cuda.affine_sample(input, theta, (16, 16), mode)
        return (sampled, fused, *grads(sampled, (input, grid), go), *grads(fused, (input, theta), go))

    first = run()
    with stn_cuda.use_tuning(**EVERY_OTHER):
        again = run()
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(first, again, strict=True))


def _awkward_inputs(n, c, h, w):
    """Float32 inputs (N, C, H, W) in four layouts, with signed zeros, infinities and a NaN
    among the values, whose sums' signs and NaNs must come out of the gathers as they do
    out of the scalar loop."""
    values = torch.randn(n, c, h, 2 * w + 1)
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])
    pick = torch.rand(values.shape) < 0.15
    values[pick] = specials[torch.randint(len(specials), (int(pick.sum()),))]
    dense = values[..., :w].contiguous()
    return {"contiguous": dense, "channels_last": dense.contiguous(memory_format=torch.channels_last),
            "strided": values[..., 1::2], "expanded batch": dense[:1].expand(n, c, h, w)}


def _awkward_grid(n, h_out, w_out, spread):
    """Uniform in [-spread, spread], with exact +-1, infinities, NaN and huge values mixed in."""
    grid = (torch.rand(n, h_out, w_out, 2) * 2 - 1) * spread
    specials = torch.tensor([1.0, -1.0, float("inf"), -float("inf"), float("nan"), 3e38, -1e9])
    pick = torch.rand(grid.shape) < 0.1
    grid[pick] = specials[torch.randint(len(specials), (int(pick.sum()),))]
    return grid


needs_gathers = pytest.mark.skipif(not stn_cuda._C.cpu_has_gathers(),
                                   reason="no AVX-512 here, so cpu_gathers=True reads one neighbour at a time too")


def _awkward_grad_outputs(shape):
    """grad_output (float32) in three layouts: dense, with infinities and NaN among the
    values (an outside neighbour's 0 times one is NaN, so a term let through a mask shows);
    expanded from one value (as .sum()'s backward makes it); strided (every other column)."""
    n, c, h, w = shape
    dense = torch.randn(shape)
    pick = torch.rand(shape) < 0.03
    dense[pick] = torch.tensor([float("inf"), -float("inf"), float("nan")])[torch.randint(3, (int(pick.sum()),))]
    return {"dense": dense, "expanded": torch.randn(()).expand(shape),
            "strided": torch.randn(n, c, h, 2 * w)[..., ::2]}


# The gradients a backward can be asked for, each a branch of the kernels: indices into
# (input, source), the source being grid_sample's grid or affine_sample's theta.
_WANTED = [(0, 1), (0,), (1,)]


def _forward_and_backward(input, grid, theta, out_size, options, grad_output, wanted=(0, 1)):
    """grid_sample and affine_sample's outputs and their gradients to those of (input,
    source) that wanted picks; the others do not require one."""
    input, grid, theta = (t.detach() for t in (input, grid, theta))
    sampled_from, fused_from = [input, grid], [input, theta]
    for i in wanted:
        for leaves in (sampled_from, fused_from):
            leaves[i] = leaves[i].requires_grad_()
    sampled = stn_cuda.grid_sample(*sampled_from, **options)
    fused = stn_cuda.affine_sample(*fused_from, out_size, **options)
    return {"grid_sample": sampled, "affine_sample": fused,
            "grid_sample gradients": grads(sampled, [sampled_from[i] for i in wanted], grad_output),
            "affine_sample gradients": grads(fused, [fused_from[i] for i in wanted], grad_output)}


def _assert_same_bits(gathered, scalar, *context):
    for name in gathered:
        ours, theirs = gathered[name], scalar[name]
        for a, b in zip(*((t,) if torch.is_tensor(t) else t for t in (ours, theirs)), strict=True):
            assert torch.equal(bits(a), bits(b)), (name, *context)


@cpu_kernels_only
@needs_gathers
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_cpu_gathers_give_the_bits_of_the_scalar_loop(mode, padding_mode, align_corners):
    """grid_sample and affine_sample with and without gathers, forward and backward (each
    choice of wanted gradients, with and without the deterministic backward), bit for
    bit, over 1, 3, 5 and 32 channels, 1x1 to 13x11 inputs in four layouts, grad_outputs in
    three, outputs whose runs end in part of a vector (1, 35, 117 and 323 points), and grids
    with every awkward coordinate."""
    options = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    for (c, h, w), (h_out, w_out), spread in [((1, 1, 1), (1, 1), 2.0), ((3, 5, 7), (7, 5), 1.2),
                                               ((5, 13, 11), (9, 13), 3.0), ((32, 8, 9), (17, 19), 1.1)]:
        grid = _awkward_grid(2, h_out, w_out, spread)
        theta = random_theta(2, dtype=torch.float32, spread=1.0)
        for layout, input in _awkward_inputs(2, c, h, w).items():
            for go_layout, go in _awkward_grad_outputs((2, c, h_out, w_out)).items():
                for wanted, deterministic in itertools.product(_WANTED, (False, True)):
                    def run():
                        with stn_cuda.deterministic(deterministic):
                            return _forward_and_backward(input, grid, theta, (h_out, w_out), options, go, wanted)

                    with stn_cuda.use_tuning(cpu_gathers=True):
                        gathered = run()
                    with stn_cuda.use_tuning(cpu_gathers=False):
                        scalar = run()
                    _assert_same_bits(gathered, scalar, layout, go_layout, wanted, deterministic,
                                      (c, h, w), (h_out, w_out))


def _between_guard_pages(values, at_end):
    """values (float32, 1-D) copied into memory with no-access pages just before and just
    after it, its first element on the first page's start (at_end False) or its last on
    the last page's end: a read past either end faults. Unmapped when the test ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    no_access = 0  # PROT_NONE, which Python's mmap module leaves out
    page, size = mmap.PAGESIZE, values.numel() * 4
    pages = -(-size // page)
    total = (pages + 2) * page
    start = libc.mmap(None, total, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert start not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    assert libc.mprotect(start, page, no_access) == 0
    assert libc.mprotect(start + (pages + 1) * page, page, no_access) == 0
    first = start + page + (pages * page - size if at_end else 0)
    tensor = torch.frombuffer((ctypes.c_float * values.numel()).from_address(first), dtype=torch.float32)
    tensor.copy_(values)
    return tensor, lambda: libc.munmap(start, total)


@needs_gathers
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guard pages by Linux's mmap and mprotect")
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_cpu_gathers_read_nothing_outside_input_and_grad_output(mode, padding_mode, align_corners):
    """Every neighbour a gather reads lies in the input and every grad_output value it
    loads in grad_output (equal bits cannot show a stray read, as the masked-off lanes'
    values are dropped), forward and backward: both between guard pages, the input in
    two layouts, against grids that reach and cross every edge."""
    options = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    unmaps = []
    try:
        for c, h, w in [(1, 1, 1), (3, 5, 7), (16, 9, 4)]:
            for at_end in (False, True):
                flat, unmap = _between_guard_pages(torch.randn(c * h * w), at_end)
                unmaps.append(unmap)
                go_flat, unmap = _between_guard_pages(torch.randn(c * 9 * 23), at_end)
                unmaps.append(unmap)
                go = go_flat.view(1, c, 9, 23)
                for input in (flat.view(1, c, h, w), flat.view(1, h, w, c).permute(0, 3, 1, 2)):
                    grid = _awkward_grid(1, 9, 23, 1.6)
                    theta = random_theta(1, dtype=torch.float32, spread=1.5)
                    with stn_cuda.use_tuning(cpu_gathers=True):
                        gathered = _forward_and_backward(input, grid, theta, (9, 23), options, go)
                    with stn_cuda.use_tuning(cpu_gathers=False):
                        scalar = _forward_and_backward(input, grid, theta, (9, 23), options, go)
                    _assert_same_bits(gathered, scalar, (c, h, w), at_end)
    finally:
        for unmap in unmaps:
            unmap()

"""The deterministic (atomic-free) backward of grid_sample and affine_sample: the same
gradients as torch and as the usual backward, bitwise the same run after run, selected
by stn_cuda.set_deterministic / deterministic() or, on CUDA, by
torch.use_deterministic_algorithms; images and volumes, every mode."""
import contextlib
import inspect
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import stn_cuda
from helpers import deterministic_backwards, grads, random_theta, special_grid, torch_affine_sample
from stn_cuda._ops import ops

MODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}
PADDINGS = {"zeros": 0, "border": 1, "reflection": 2}
# (dims, mode): images in every mode; volumes in theirs (torch has no bicubic for them).
VARIANTS = [pytest.param(2, m, id=f"4d-{m}") for m in MODES] + \
           [pytest.param(3, m, id=f"5d-{m}") for m in ("bilinear", "nearest")]


def backward(go, input, grid, mode, padding_mode, align_corners, deterministic):
    return ops.grid_sample_backward(go, input, grid, MODES[mode], PADDINGS[padding_mode],
                                    align_corners, [True, True], deterministic)


def affine_backward(go, input, theta, mode, padding_mode, align_corners, deterministic):
    return ops.affine_sample_backward(go, input, theta, MODES[mode], PADDINGS[padding_mode],
                                      align_corners, [True, True], deterministic)


def uniform(shape, device, lo, hi, dtype=torch.float64):
    return torch.rand(shape, dtype=dtype, device=device) * (hi - lo) + lo


def zoom_grid(n, size, device, scale=0.05, dtype=torch.float64):
    """A grid magnifying a small patch: many points share each cell. size: the output's
    ([D,] H, W)."""
    dims = len(size)
    theta = scale * torch.eye(dims, dims + 1, dtype=dtype)
    theta[:, dims] = torch.linspace(0.1, -0.2, dims, dtype=dtype)
    theta = theta.repeat(n, 1, 1) + 0.01 * torch.randn(n, dims, dims + 1, dtype=dtype)
    return F.affine_grid(theta, (n, 1, *size), align_corners=False).to(device)


def special_points(device, dims, dtype=torch.float64):
    """Out-of-range, huge and non-finite coordinates, and exact edges."""
    inf, nan = float("inf"), float("nan")
    pts = [[1e10, 0.0], [-1e30, 1e30], [3.0, -3.0], [1.0, 1.0], [-1.0, -1.0], [inf, 0.0],
           [0.0, -inf], [nan, 0.5], [0.25, nan], [1.0000001, 0.999], [-1.5, 0.5], [0.0, 0.0]]
    if dims == 3:  # a third coordinate: in range, far, or not finite
        pts = [p + [z] for p in pts for z in (0.3, -1e20, nan)]
    return torch.tensor(pts, dtype=dtype, device=device).view(1, *([1] * (dims - 2)), -1, 4, dims)


def randn(*shape, device):
    return torch.randn(*shape, dtype=torch.float64, device=device)


def cases(device, dims):
    """(name, input, grid, finite): odd and 1-sized shapes, overlap, special points, layouts."""
    if dims == 2:
        out = [("odd", randn(2, 3, 7, 5, device=device), uniform((2, 6, 11, 2), device, -1.3, 1.3), True),
               ("one pixel", randn(3, 2, 1, 1, device=device), uniform((3, 4, 5, 2), device, -2, 2), True),
               ("prime", randn(1, 1, 13, 1, device=device), uniform((1, 7, 3, 2), device, -1.2, 1.2), True),
               ("zoom-in", randn(2, 3, 17, 13, device=device), zoom_grid(2, (23, 29), device), True),
               ("edges", randn(1, 2, 5, 6, device=device), special_grid((5, 6), device), True)]
        layout, grid = torch.channels_last, uniform((2, 5, 14, 2), device, -1.1, 1.1)[:, :, ::2]
        input = randn(2, 4, 6, 9, device=device)
    else:
        out = [("odd", randn(2, 3, 5, 4, 3, device=device), uniform((2, 3, 4, 5, 3), device, -1.3, 1.3), True),
               ("one pixel", randn(2, 2, 1, 1, 1, device=device), uniform((2, 2, 3, 2, 3), device, -2, 2), True),
               ("prime", randn(1, 1, 7, 1, 3, device=device), uniform((1, 3, 5, 2, 3), device, -1.2, 1.2), True),
               ("zoom-in", randn(2, 3, 5, 7, 6, device=device), zoom_grid(2, (9, 8, 7), device), True),
               ("edges", randn(1, 2, 3, 4, 2, device=device), special_grid((3, 4, 2), device), True)]
        layout, grid = torch.channels_last_3d, uniform((2, 3, 4, 10, 3), device, -1.1, 1.1)[:, :, :, ::2]
        input = randn(2, 4, 3, 6, 5, device=device)
    out.append(("special", randn(1, 3, *[4, 5, 3][:dims], device=device), special_points(device, dims), False))
    # A channels_last input, a grid with gaps (every other column of a wider one).
    out.append(("strided", input.to(memory_format=layout), grid, True))
    return out


CASE_NAMES = ["odd", "one pixel", "prime", "zoom-in", "edges", "special", "strided"]


@pytest.mark.parametrize("dims, mode", VARIANTS)
@pytest.mark.parametrize("case", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_grid_sample_gradients(device, dims, mode, padding_mode, align_corners, case):
    _, input, grid, finite = cases(device, dims)[case]
    go = torch.randn(*input.shape[:2], *grid.shape[1:-1], dtype=input.dtype, device=device)
    ours = backward(go, input, grid, mode, padding_mode, align_corners, True)
    usual = backward(go, input, grid, mode, padding_mode, align_corners, False)
    for a, b in zip(ours, usual):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    if finite:  # torch's rule for non-finite points differs from stn_cuda's
        x, g = input.clone().requires_grad_(), grid.clone().requires_grad_()
        ref = grads(F.grid_sample(x, g, mode=mode, padding_mode=padding_mode,
                                  align_corners=align_corners), (x, g), go)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dims, mode", VARIANTS)
@pytest.mark.parametrize("spread", [0.3, 2.0], ids=["near identity", "far"])
def test_affine_sample_gradients(device, dims, mode, padding_mode, align_corners, spread):
    in_size, out_size = [(9, 7), (5, 6, 4)][dims - 2], [(11, 8), (6, 3, 7)][dims - 2]
    input = torch.randn(3, 2, *in_size, dtype=torch.float64, device=device)
    theta = random_theta(3, device=device, spread=spread, dims=dims)
    go = torch.randn(3, 2, *out_size, dtype=torch.float64, device=device)
    ours = affine_backward(go, input, theta, mode, padding_mode, align_corners, True)
    usual = affine_backward(go, input, theta, mode, padding_mode, align_corners, False)
    for a, b in zip(ours, usual):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    x, t = input.clone().requires_grad_(), theta.clone().requires_grad_()
    ref = grads(torch_affine_sample(x, t, out_size, padding_mode, align_corners, mode), (x, t), go)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dims, mode", VARIANTS)
@pytest.mark.parametrize("go_layout", ["expanded", "channels_last"])
def test_grad_output_layouts_and_output_masks(device, dims, mode, go_layout):
    """grad_output as .sum().backward() gives it (expanded) or channels_last; either
    gradient alone equals the same gradient of both."""
    in_size, out_size = [(6, 7), (4, 5, 3)][dims - 2], [(5, 4), (3, 4, 2)][dims - 2]
    input = torch.randn(2, 3, *in_size, dtype=torch.float64, device=device)
    grid = uniform((2, *out_size, dims), device, -1.2, 1.2)
    shape = (2, 3, *out_size)
    if go_layout == "expanded":
        go = torch.randn(1, dtype=torch.float64, device=device).expand(shape)
    else:
        layout = torch.channels_last if dims == 2 else torch.channels_last_3d
        go = torch.randn(shape, dtype=torch.float64, device=device).to(memory_format=layout)
    ours = backward(go, input, grid, mode, "reflection", False, True)
    usual = backward(go, input, grid, mode, "reflection", False, False)
    for a, b in zip(ours, usual):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for mask in ([True, False], [False, True]):
        alone = ops.grid_sample_backward(go, input, grid, MODES[mode], PADDINGS["reflection"], False,
                                         mask, True)
        for wanted, a, b in zip(mask, alone, ours):
            assert (a is not None) == wanted
            if wanted:
                assert torch.equal(a, b)


@pytest.mark.parametrize("dims, mode", VARIANTS)
@pytest.mark.parametrize("empty", ["N=0", "C=0", "no points"])
def test_empty(device, dims, mode, empty):
    """Nothing to gather: grad_input is all zeros, as the usual backward's."""
    n, c = (0 if empty == "N=0" else 2), (0 if empty == "C=0" else 3)
    in_size, out_size = [(4, 5), (3, 4, 2)][dims - 2], [(3, 2), (2, 3, 2)][dims - 2]
    out_size = (0, *out_size[1:]) if empty == "no points" else out_size
    input = torch.randn(n, c, *in_size, dtype=torch.float64, device=device)
    grid = uniform((n, *out_size, dims), device, -1, 1)
    go = torch.randn(n, c, *out_size, dtype=torch.float64, device=device)
    for a, b in zip(backward(go, input, grid, mode, "border", True, True),
                    backward(go, input, grid, mode, "border", True, False)):
        assert torch.equal(a, b) and not a.any()


def sort_key_dtypes(fn):
    """The dtypes of the keys that aten::sort gets while fn() runs, as the profiler names
    them ('int' for int32, 'long int' for int64)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        fn()
    return {e.input_dtypes[0] for e in prof.events() if e.name == "aten::sort"}


IN_A_FRESH_PROCESS = """
import sys
import torch
from stn_cuda._ops import ops
""" + inspect.getsource(sort_key_dtypes) + """
results, dtypes = [], set()
def run(case):
    try:
        results.append(ops.grid_sample_backward(*case, [True, True], True))
    except ValueError as error:
        results.append(str(error))
for case in torch.load(sys.argv[1]):
    dtypes |= sort_key_dtypes(lambda: run(case))
torch.save((results, dtypes), sys.argv[2])
"""


def deterministic_in_a_fresh_process(cases, env, tmp_path):
    """The deterministic grid_sample_backward of each case (its arguments up to
    output_mask) in a new Python with env added to its environment (gather.cpp reads
    its STN_CUDA_* variables once): the gradients or a ValueError's message, per case,
    and the dtypes of the keys sorted."""
    torch.save(cases, tmp_path / "cases.pt")
    run = subprocess.run([sys.executable, "-c", IN_A_FRESH_PROCESS, str(tmp_path / "cases.pt"),
                          str(tmp_path / "results.pt")], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(tmp_path / "results.pt")


def test_sorting_in_blocks_of_batch_elements(device, tmp_path):
    """CUDA sorts at most INT_MAX keys at once, so the entries are sorted in blocks of whole
    batch elements (csrc/gather.cpp). STN_CUDA_MAX_SORTED lowers the limit to 40 keys in a
    fresh process: blocks of two batch elements of 20 (an image) or 18 (a volume) entries
    give the same bits as one sort; 320 (bicubic's 16 a point) are refused."""
    cases = []
    for dims, mode, out_size in ((2, 0, (5, 4)), (3, 1, (3, 3, 2)), (2, 2, (5, 4))):
        in_size = [(6, 7), (4, 5, 3)][dims - 2]
        cases.append((torch.randn(3, 2, *out_size, dtype=torch.float64, device=device),
                      torch.randn(3, 2, *in_size, dtype=torch.float64, device=device),
                      uniform((3, *out_size, dims), device, -1.2, 1.2), mode, 1, False))
    (*in_blocks, refused), _ = deterministic_in_a_fresh_process(cases, {"STN_CUDA_MAX_SORTED": "40"},
                                                                tmp_path)
    for case, got in zip(cases, in_blocks):
        for a, b in zip(got, ops.grid_sample_backward(*case, [True, True], True)):
            assert torch.equal(a, b)
    assert "sorts at most 40 entries" in refused and "got 320" in refused


def test_64_bit_keys(device, tmp_path):
    """The entries' keys are int32 where every key fits (at these sizes, always) and int64
    beyond: STN_CUDA_MAX_INT32_KEYS=0 makes them int64 in a fresh process, and the same
    bits come back, for every dims and mode, outside and non-finite points included; with
    blocks of batch elements too."""
    cases = []
    for dims, mode in [(2, m) for m in (0, 1, 2)] + [(3, m) for m in (0, 1)]:
        in_size, out_size = [((6, 7), (5, 9)), ((4, 5, 3), (3, 3, 4))][dims - 2]
        grid = uniform((3, *out_size, dims), device, -1.5, 1.5)
        grid.view(-1)[::11] = float("nan")
        cases.append((torch.randn(3, 2, *out_size, dtype=torch.float64, device=device),
                      torch.randn(3, 2, *in_size, dtype=torch.float64, device=device),
                      grid, mode, 2, True))
    wide, wide_dtypes = deterministic_in_a_fresh_process(cases, {"STN_CUDA_MAX_INT32_KEYS": "0"},
                                                         tmp_path)
    # Blocks of two batch elements (45 or 36 entries each); bicubic's 720 are refused.
    wide_in_blocks, _ = deterministic_in_a_fresh_process(
        cases, {"STN_CUDA_MAX_INT32_KEYS": "0", "STN_CUDA_MAX_SORTED": "100"}, tmp_path)
    assert wide_dtypes == {"long int"}
    assert sort_key_dtypes(lambda: [ops.grid_sample_backward(*case, [True, True], True)
                                    for case in cases]) == {"int"}
    # The bound: the first case's 3 x (7 x 8 + 1) keys (cells of a 6 x 7 image, an unused key).
    _, at_the_bound = deterministic_in_a_fresh_process(cases[:1], {"STN_CUDA_MAX_INT32_KEYS": "171"},
                                                       tmp_path)
    _, past_it = deterministic_in_a_fresh_process(cases[:1], {"STN_CUDA_MAX_INT32_KEYS": "170"},
                                                  tmp_path)
    assert at_the_bound == {"int"} and past_it == {"long int"}
    for case, got, in_blocks in zip(cases, wide, wide_in_blocks):
        narrow = ops.grid_sample_backward(*case, [True, True], True)
        assert all(torch.equal(a, b) for a, b in zip(got, narrow))
        if case[3] == 2:
            assert "sorts at most 100 entries" in in_blocks
        else:
            assert all(torch.equal(a, b) for a, b in zip(in_blocks, narrow))


@pytest.mark.parametrize("dims, mode", VARIANTS)
@pytest.mark.parametrize("channels", [5, 9])
def test_channels_in_groups_of_the_gather(device, dims, mode, channels):
    """The gather reads each pixel's runs once for a group of 4 channels: 5 and 9 end in a
    partial group. Torch's values, with a transposed grad_output (other channel strides)."""
    in_size = [(7, 6), (4, 3, 5)][dims - 2]
    out_size = [(9, 5), (3, 4, 4)][dims - 2]
    input = torch.randn(2, channels, *in_size, dtype=torch.float64, device=device)
    grid = uniform((2, *out_size, dims), device, -1.2, 1.2)
    go = torch.randn(*reversed(out_size), channels, 2, dtype=torch.float64, device=device)
    go = go.permute(-1, -2, *range(dims - 1, -1, -1))
    x, g = input.clone().requires_grad_(), grid.clone().requires_grad_()
    ref = grads(F.grid_sample(x, g, mode, "zeros", align_corners=False), (x, g), go)
    for got, want in zip(backward(go, input, grid, mode, "zeros", False, True), ref):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dims, mode", VARIANTS)
def test_channels_split_across_threads(device, dims, mode):
    """Enough pixels that the CUDA gather gives each thread several channels (2^18 threads
    in all: 2 x 256 x 256 pixels, 8 channels, 4 a thread)."""
    in_size = [(256, 256), (64, 64, 64)][dims - 2]
    out_size = [(96, 80), (24, 20, 16)][dims - 2]
    input = torch.randn(2, 8, *in_size, dtype=torch.float64, device=device)
    grid = uniform((2, *out_size, dims), device, -1.1, 1.1)
    go = torch.randn(2, 8, *out_size, dtype=torch.float64, device=device)
    ours = backward(go, input, grid, mode, "zeros", False, True)
    usual = backward(go, input, grid, mode, "zeros", False, False)
    for a, b in zip(ours, usual):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_zoomed_affine_sample_many_points_per_cell(device):
    theta = torch.tensor([[[0.02, 0.01, 0.3], [-0.01, 0.03, 0.1]]], dtype=torch.float64, device=device)
    input = torch.randn(1, 5, 31, 37, dtype=torch.float64, device=device)
    go = torch.randn(1, 5, 64, 64, dtype=torch.float64, device=device)
    x, t = input.clone().requires_grad_(), theta.clone().requires_grad_()
    for mode in ("bilinear", "bicubic"):
        ours = affine_backward(go, input, theta, mode, "zeros", True, True)
        ref = grads(torch_affine_sample(x, t, (64, 64), "zeros", True, mode), (x, t), go)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dims, mode", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision(device, dims, mode, dtype):
    in_size, out_size = [(8, 9), (4, 5, 3)][dims - 2], [(7, 6), (3, 4, 5)][dims - 2]
    input = torch.randn(2, 3, *in_size, device=device)
    grid = uniform((2, *out_size, dims), device, -1.1, 1.1, torch.float32)
    go = torch.randn(2, 3, *out_size, device=device)
    args = [t.to(dtype) for t in (go, input, grid)]
    ours = backward(*args, mode, "border", False, True)
    usual = backward(*args, mode, "border", False, False)
    for a, b in zip(ours, usual):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dims, mode", VARIANTS)
def test_bitwise_repeatable(device, dims, mode):
    """float32, many points per pixel, many channels: the usual CUDA backward's atomics
    would differ in the last bits between runs; this must not."""
    in_size, out_size = [(24, 24), (8, 9, 10)][dims - 2], [(64, 64), (16, 16, 16)][dims - 2]
    input = torch.randn(4, 16, *in_size, device=device)
    grid = zoom_grid(4, out_size, device, scale=0.3, dtype=torch.float32)
    go = torch.randn(4, 16, *out_size, device=device)
    theta = random_theta(4, torch.float32, device, spread=0.5, dims=dims) * 0.3
    first = backward(go, input, grid, mode, "reflection", False, True)
    first_affine = affine_backward(go, input, theta, mode, "zeros", True, True)
    for _ in range(5):
        again = backward(go, input, grid, mode, "reflection", False, True)
        again_affine = affine_backward(go, input, theta, mode, "zeros", True, True)
        for a, b in zip(first + first_affine, again + again_affine):
            assert torch.equal(a, b)


@pytest.mark.parametrize("size", [(3, 5, 96, 80), (2, 4, 6, 40, 48)], ids=["image", "volume"])
def test_affine_grid_backward_bitwise_repeatable(device, size):
    """affine_grid's grad_theta is always summed in a fixed order (per-block partials, then
    at::sum; on the CPU, per batch element), in any mode."""
    dims = len(size) - 2
    theta = random_theta(size[0], torch.float32, device, spread=0.5, dims=dims)
    grad_grid = torch.randn(size[0], *size[2:], dims, device=device)
    first = ops.affine_grid_backward(grad_grid, False)
    for _ in range(5):
        assert torch.equal(ops.affine_grid_backward(grad_grid, False), first)
    ref, = torch.autograd.grad(F.affine_grid(theta.requires_grad_(), size, align_corners=False),
                               theta, grad_grid)
    torch.testing.assert_close(first, ref, atol=1e-2, rtol=1e-3)


# -- what selects it ---------------------------------------------------------------------

def paths_of_backward(device, dims=2, mode="bilinear"):
    """Whether grid_sample's and affine_sample's backward each took the deterministic path."""
    spatial = (4,) * dims
    x = torch.randn(2, 3, *spatial, device=device, requires_grad=True)
    g = uniform((2, *spatial, dims), device, -1, 1, torch.float32).requires_grad_()
    theta = (torch.eye(dims, dims + 1, device=device) + 0.1).repeat(2, 1, 1).requires_grad_()
    losses = (lambda: stn_cuda.grid_sample(x, g, mode=mode).sum(),
              lambda: stn_cuda.affine_sample(x, theta, spatial, mode=mode).sum())
    return [deterministic_backwards(lambda: loss().backward()) == 1 for loss in losses]


@contextlib.contextmanager
def torch_deterministic():
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def test_explicit_flag_selects_it(device):
    assert not stn_cuda.is_deterministic()
    assert paths_of_backward(device) == [False, False]
    with stn_cuda.deterministic():
        assert stn_cuda.is_deterministic()
        assert paths_of_backward(device) == [True, True]
        with stn_cuda.deterministic(False):
            assert paths_of_backward(device) == [False, False]
    assert not stn_cuda.is_deterministic()
    stn_cuda.set_deterministic(True)
    try:
        assert paths_of_backward(device, mode="nearest") == [True, True]
    finally:
        stn_cuda.set_deterministic(False)
    assert paths_of_backward(device) == [False, False]


def test_the_ops_argument_selects_it(device):
    """A backward op called directly takes it where its `deterministic` asks."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
    g = uniform((2, 6, 7, 2), device, -1.2, 1.2)
    go = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=device)
    theta = random_theta(2, device=device)
    for asked in (False, True):
        assert deterministic_backwards(
            lambda: backward(go, x, g, "bilinear", "zeros", False, asked)) == asked
        assert deterministic_backwards(
            lambda: affine_backward(go, x, theta, "bicubic", "border", True, asked)) == asked


@pytest.mark.parametrize("dims, mode", VARIANTS)
def test_every_input_and_mode_selects_it(device, dims, mode):
    """torch's deterministic mode selects it on CUDA only, where torch's grid_sample backward
    would raise; the CPU's usual backward is deterministic already."""
    with stn_cuda.deterministic():
        assert paths_of_backward(device, dims, mode) == [True, True]
    with torch_deterministic():
        assert paths_of_backward(device, dims, mode) == [device == "cuda"] * 2
    assert paths_of_backward(device, dims, mode) == [False, False]


# -- with the rest of the library ------------------------------------------------------------

@pytest.mark.parametrize("dims, mode", VARIANTS)
def test_opcheck(device, dims, mode):
    in_size, out_size = [(5, 6), (3, 4, 2)][dims - 2], [(4, 3), (2, 3, 3)][dims - 2]
    x = torch.randn(2, 3, *in_size, dtype=torch.float64, device=device)
    g = uniform((2, *out_size, dims), device, -1.2, 1.2)
    theta = random_theta(2, device=device, dims=dims)
    go = torch.randn(2, 3, *out_size, dtype=torch.float64, device=device)
    torch.library.opcheck(ops.grid_sample_backward.default,
                          (go, x, g, MODES[mode], 2, True, [True, True], True))
    torch.library.opcheck(ops.affine_sample_backward.default,
                          (go, x, theta, MODES[mode], 0, False, [True, False], True))


def test_compiled_code_follows_the_flag(device):
    """A compiled backward follows the flag in force when it runs, not when it was traced
    (torch's caches may hand a trace out again): the backward op reads the flag as it runs,
    as eagerly. Each path is told by its bits, which differ on this input, even on the CPU."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9, device=device, requires_grad=True)
    g = uniform((2, 32, 32, 2), device, -0.2, 0.2, torch.float32).requires_grad_()  # many points a cell

    def grad_input(fn):
        out = fn(x, g)
        return torch.autograd.grad(out, x, torch.ones_like(out))[0]

    usual = grad_input(stn_cuda.grid_sample)
    with stn_cuda.deterministic():
        expected = grad_input(stn_cuda.grid_sample)
    assert not torch.equal(usual, expected)  # else the test could not tell the paths apart
    torch._dynamo.reset()
    compiled = torch.compile(stn_cuda.grid_sample, backend="aot_eager", fullgraph=True)
    assert torch.equal(grad_input(compiled), usual)  # traced without the flag
    with stn_cuda.deterministic(), torch._dynamo.config.patch(error_on_recompile=True):
        assert torch.equal(grad_input(compiled), expected)
    torch._dynamo.reset()
    compiled = torch.compile(stn_cuda.grid_sample, backend="aot_eager", fullgraph=True)
    with stn_cuda.deterministic():
        assert torch.equal(grad_input(compiled), expected)  # traced with the flag
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert torch.equal(grad_input(compiled), usual)


def test_double_backward_under_the_flag(device):
    """A gradient penalty through grad_input differentiates the deterministic backward."""
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
    g = uniform((2, 5, 4, 2), device, -1.1, 1.1).requires_grad_()
    results = []
    for flag in (True, False):
        with stn_cuda.deterministic(flag):
            out = stn_cuda.grid_sample(x, g, padding_mode="border")
            gx, = torch.autograd.grad(out.square().sum(), x, create_graph=True)
            results.append(torch.autograd.grad(gx.square().sum(), (x, g)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)

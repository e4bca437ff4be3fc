"""References from torch and comparison helpers shared by the tests."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import stn_cuda

from conftest import EMULATES_CUDA, HAS_CUDA, NO_CUDA_REASON


def cuda_device_tuned(**settings):
    """A `device` fixture for the tests of a CUDA setting: "cuda" alone (in each test's name,
    for gpu_check.sh's -k cuda; skipped without a GPU), or "cpu" where the build emulates
    CUDA (EMULATES_CUDA; named cuda-emulated), stn_cuda.use_tuning(**settings) in force."""
    cuda = (pytest.param("cpu", id="cuda-emulated") if EMULATES_CUDA
            else pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)))

    @pytest.fixture(params=[cuda])
    def device(request):
        with stn_cuda.use_tuning(**settings):
            yield request.param
    return device


def grads(out, inputs, grad_output):
    """Gradients of <out, grad_output> with respect to inputs (None where unused)."""
    return torch.autograd.grad(out, inputs, grad_output, allow_unused=True)


def assert_rerun_matches(first, again):
    """Two runs of the same backward agree: to the bit on the CPU, whose kernels are
    deterministic; to rounding on CUDA, where grad_input and the channel groups of
    grad_grid and grad_theta add atomically, in any order."""
    for a, b in zip(first, again, strict=True):
        if a.device.type == "cpu":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def leaf(t, requires_grad=True):
    """A new autograd leaf with t's values and memory layout (strides, storage offset,
    expanded dimensions), sharing its storage: clone() would make a sliced or expanded
    tensor contiguous, and the kernels would never see its strides."""
    return t.detach().requires_grad_(requires_grad)


def check_against(fn, ref_fn, args, *, atol=1e-10, rtol=1e-8, grad_output=None):
    """fn(*args) against ref_fn(*args): values and gradients of every tensor argument that
    requires grad. Returns the output of fn."""
    ours_args = [leaf(a, a.requires_grad) if torch.is_tensor(a) else a for a in args]
    ref_args = [leaf(a, a.requires_grad) if torch.is_tensor(a) else a for a in args]
    out, ref = fn(*ours_args), ref_fn(*ref_args)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    diff = [i for i, a in enumerate(args) if torch.is_tensor(a) and a.requires_grad]
    if diff:
        g = torch.randn_like(ref) if grad_output is None else grad_output
        ours_g = grads(out, [ours_args[i] for i in diff], g)
        ref_g = grads(ref, [ref_args[i] for i in diff], g)
        for i, a, b in zip(diff, ours_g, ref_g):
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"gradient of argument {i}: {m}")
    return out


def check_with_bad_points(input, grid, mode, padding_mode="zeros"):
    """stn_cuda.grid_sample (align_corners=False) at a grid with non-finite points against
    torch's at the same grid with 0 there and no gradient from there: a non-finite point
    samples 0 and contributes nothing, to either gradient."""
    out = stn_cuda.grid_sample(input, grid, mode, padding_mode)
    go = torch.ones_like(out)
    grad_input, grad_grid = grads(out, (input, grid), go)
    finite = grid.detach().isfinite().all(-1)
    ref_in, ref_grid = leaf(input), leaf(torch.where(finite[..., None], grid.detach(), 0.0))
    ref = F.grid_sample(ref_in, ref_grid, mode, padding_mode, align_corners=False)
    ref_grad_input, ref_grad_grid = grads(ref, (ref_in, ref_grid), go * finite[:, None])
    torch.testing.assert_close(out, ref * finite[:, None])
    torch.testing.assert_close(grad_input, ref_grad_input)
    torch.testing.assert_close(grad_grid, ref_grad_grid * finite[..., None])


def ours(padding_mode, align_corners, mode="bilinear"):
    """stn_cuda.grid_sample with these options."""
    return functools.partial(stn_cuda.grid_sample, mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners)


def theirs(padding_mode, align_corners, mode="bilinear"):
    """torch.nn.functional.grid_sample with these options."""
    return functools.partial(F.grid_sample, mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners)


def make(shape, device, dtype=torch.float64, spread=1.5):
    """(input, grid) requiring grad for shape (N, C, *in_sizes, *out_sizes), images (2 spatial
    dimensions) or volumes (3): the grid uniform in [-spread, spread]."""
    dims = (len(shape) - 2) // 2
    n, c, in_sizes, out_sizes = shape[0], shape[1], shape[2:2 + dims], shape[2 + dims:]
    input = torch.randn(n, c, *in_sizes, dtype=dtype, device=device, requires_grad=True)
    grid = (torch.rand(n, *out_sizes, dims, dtype=dtype, device=device) * 2 - 1) * spread
    return input, grid.requires_grad_()


def special_coordinates(size, dtype=torch.float64):
    """The normalised coordinates where the sampler's gradients jump along an axis of `size`
    pixels: exact +-1, 0, pixel centres and pixel edges, for either align_corners."""
    return torch.cat([torch.tensor([-1.0, 1.0, 0.0]), (torch.arange(size) * 2 + 1) / size - 1,
                      torch.arange(size + 1) * 2 / size - 1, torch.linspace(-1, 1, size)]).to(dtype)


def special_grid(sizes, device, dtype=torch.float64):
    """A (1, [D_out,] H_out, W_out, 2 or 3) grid of every combination of special_coordinates
    for an input of spatial sizes ([D,] H, W)."""
    axes = torch.meshgrid(*(special_coordinates(size, dtype) for size in sizes), indexing="ij")
    return torch.stack(axes[::-1], -1)[None].to(device)  # x, y[, z]


def random_theta(n, dtype=torch.float64, device="cpu", spread=0.3, dims=2):
    """Affine transforms (N, dims, dims + 1) near the identity (spread ~0.3) or far from it
    (spread ~2)."""
    eye = torch.eye(dims, dims + 1, dtype=dtype, device=device)
    return eye + spread * torch.randn(n, dims, dims + 1, dtype=dtype, device=device)


def torch_affine_sample(input, theta, out_size, padding_mode="zeros", align_corners=False, mode="bilinear"):
    n, c = input.shape[:2]
    grid = F.affine_grid(theta, (n, c, *out_size), align_corners=align_corners)
    return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


class Ops(TorchDispatchMode):
    """Records the names of the ops that run under it, e.g. "stn_cuda::grid_sample"."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))

    @property
    def namespaces(self):
        return {name.split("::")[0] for name in self.names}


def deterministic_backwards(fn):
    """How many backward op calls took the deterministic path while fn() ran, as the
    profiler sees them by their scope (csrc/ops.cpp, run_backward)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(event.name == "stn_cuda::deterministic_backward" for event in prof.events())

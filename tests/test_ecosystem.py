"""stn_cuda with the rest of torch: torch.compile, torch.autocast, patch_torch()
(torch.nn.functional routed to stn_cuda) and DistributedDataParallel."""
import functools
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import stn_cuda
from conftest import HAS_CUDA, NO_CUDA_REASON
from helpers import Ops, check_against, grads, leaf, random_theta

LOW_PRECISION = [torch.float16, torch.bfloat16]


def sampler_inputs(device, dtype=torch.float32, grid_dtype=None):
    """(input, grid, theta) that require grad; grid and theta in grid_dtype (default: dtype)."""
    grid_dtype = grid_dtype or dtype
    input = torch.randn(2, 3, 7, 6, dtype=dtype, device=device, requires_grad=True)
    grid = (torch.rand(2, 4, 5, 2, device=device) * 2.4 - 1.2).to(grid_dtype).requires_grad_()
    theta = random_theta(2, grid_dtype, device).requires_grad_()
    return input, grid, theta


# -- torch.compile ---------------------------------------------------------------------------

class EveryEntryPoint(nn.Module):
    """stn_cuda's functions and module in one model."""

    def __init__(self, channels=3, out_size=(4, 5)):
        super().__init__()
        self.out_size = out_size
        self.stn = stn_cuda.SpatialTransformer(channels, out_size, padding_mode="border")
        nn.init.normal_(self.stn.localization[-1].weight, std=0.01)  # gradients reach every layer

    def forward(self, x, grid, theta):
        size = (*x.shape[:2], *self.out_size)
        sampled = stn_cuda.grid_sample(x, grid, padding_mode="reflection", align_corners=True)
        fused = stn_cuda.affine_sample(x, theta, self.out_size)
        # align_corners=None: False, with torch's warning (in eager mode alone).
        unfused = stn_cuda.grid_sample(x, stn_cuda.affine_grid(theta, size), align_corners=None)
        return self.stn(x) + sampled + fused * unfused


def check_compiles(device, backend, dynamic=False, autocast_dtype=None, tol=1e-5):
    """The model compiled into a single graph gives eager's output, and its gradients
    with respect to the inputs and parameters; under autocast, with the input in
    autocast_dtype and the grid and theta in float32, as only autocast accepts."""
    model = EveryEntryPoint().to(device)
    warnings.filterwarnings("ignore", "Default grid_sample and affine_grid behavior")  # its eager call

    def run(*args):
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(*args)

    torch._dynamo.reset()
    compiled = torch.compile(run, backend=backend, fullgraph=True, dynamic=dynamic)
    args = sampler_inputs(device, autocast_dtype or torch.float32, torch.float32)
    grad_output = torch.randn(2, 3, 4, 5, device=device)

    def output_and_grads(fn):
        leaves = [leaf(a) for a in args]
        out = fn(*leaves)
        return out, grads(out, [*leaves, *model.parameters()], grad_output)

    torch.testing.assert_close(output_and_grads(compiled), output_and_grads(run), atol=tol, rtol=tol)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_aot_eager(device, dynamic):
    check_compiles(device, "aot_eager", dynamic)


# Inductor compiles C++ for the CPU in about a minute on a small machine: CUDA only.
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)
def test_compile_inductor():
    check_compiles("cuda", "inductor", tol=1e-4)


def test_compile_under_autocast(device):
    check_compiles(device, "aot_eager", autocast_dtype=torch.bfloat16)


def every_size(x, theta):
    """Sizes from x's shape through every op that takes one: a graph of symbolic sizes."""
    h, w = x.shape[2:]
    grid = stn_cuda.affine_grid(theta, (x.shape[0], x.shape[1], h + 1, w // 2))
    return stn_cuda.affine_sample(x, theta, (h // 2, w)).sum() + stn_cuda.grid_sample(x, grid).sum()


def test_compiled_graph_serves_every_size(device):
    """affine_grid's size and affine_sample's out_size are symbolic (SymInt[]): a graph compiled
    with dynamic shapes serves other sizes without a recompile (which fails the test), with
    eager's values and gradients; torch.export of the module takes dynamic sizes."""
    torch._dynamo.reset()
    theta = random_theta(3, torch.float32, device)
    compiled = torch.compile(every_size, backend="aot_eager", fullgraph=True, dynamic=True)
    for size in [(9, 10), (12, 7), (16, 21)]:
        x = torch.randn(3, 2, *size, device=device)
        with torch._dynamo.config.patch(error_on_recompile=size != (9, 10)):
            check_against(compiled, every_size, (x.requires_grad_(), theta.requires_grad_()), atol=1e-4, rtol=1e-4)
    stn = stn_cuda.SpatialTransformer(2).to(device).eval()
    dims = {0: torch.export.Dim("n"), 2: torch.export.Dim("h", min=4), 3: torch.export.Dim("w", min=4)}
    exported = torch.export.export(stn, (torch.randn(2, 2, 8, 8, device=device),), dynamic_shapes={"x": dims})
    x = torch.randn(3, 2, 11, 17, device=device)
    torch.testing.assert_close(exported.module()(x), stn(x))


# -- torch.autocast -------------------------------------------------------------------------

def under_autocast(fn, device, dtype):
    def run(*args):
        with torch.autocast(device, dtype=dtype):
            return fn(*args, align_corners=False)
    return run


@pytest.mark.parametrize("dtypes", ["low,low", "low,float32", "float32,low"])
@pytest.mark.parametrize("low", LOW_PRECISION, ids=str)
def test_autocast_casts_like_torch(device, low, dtypes):
    """torch.autocast casts grid_sampler's inputs to float32 on the CPU, and to the wider
    of their dtypes on CUDA: stn_cuda's samplers cast theirs the same way."""
    input_dtype, grid_dtype = (low if d == "low" else torch.float32 for d in dtypes.split(","))
    input, grid, theta = sampler_inputs(device, input_dtype, grid_dtype)
    runs_in = torch.float32 if device == "cpu" or input_dtype != grid_dtype else low
    tol = 1e-5 if runs_in == torch.float32 else 16 * torch.finfo(runs_in).eps
    out = check_against(under_autocast(stn_cuda.grid_sample, device, low),
                        under_autocast(F.grid_sample, device, low), (input, grid), atol=tol, rtol=tol)
    assert out.dtype == runs_in
    # affine_sample casts (input, theta) as grid_sample casts (input, grid)
    check_against(under_autocast(functools.partial(stn_cuda.affine_sample, out_size=(4, 5)), device, low),
                  lambda x, t: stn_cuda.affine_sample(x.to(runs_in), t.to(runs_in), (4, 5)), (input, theta),
                  atol=tol, rtol=tol)


# -- patch_torch(): torch.nn.functional routed to stn_cuda -------------------------------------

EVERY_DEVICE = ("cpu", "cuda")  # patched_torch's default routes CUDA calls alone


@pytest.fixture(autouse=True)
def _unpatched():
    yield
    stn_cuda.unpatch_torch()  # whatever a test does, the next one starts from torch's functions


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_patched_torch_routes_to_stn_cuda(device, mode, padding_mode, align_corners):
    input, grid, theta = sampler_inputs(device)
    size = (2, 3, 4, 5)
    with stn_cuda.patched_torch(EVERY_DEVICE), Ops() as ops:
        sampled = F.grid_sample(input, grid, mode, padding_mode, align_corners)
        generated = F.affine_grid(theta, size, align_corners=align_corners)
    assert ops.namespaces == {"stn_cuda"}
    assert torch.equal(sampled, stn_cuda.grid_sample(input, grid, mode, padding_mode, align_corners))
    assert torch.equal(generated, stn_cuda.affine_grid(theta, size, align_corners))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_patched_torch_routes_volumes_to_stn_cuda(device, mode, padding_mode, align_corners):
    input, grid, _ = (a.detach() for a in sampler_inputs(device))
    volume = torch.stack([input, input.flip(2)], 2)                          # (2, 3, 2, 7, 6)
    grid = torch.cat([grid, grid[..., :1].flip(1)], -1)[:, None]           # (2, 1, 4, 5, 3)
    theta = torch.eye(3, 4, device=device) + 0.3 * torch.randn(2, 3, 4, device=device)
    size = (2, 3, 3, 4, 5)
    with stn_cuda.patched_torch(EVERY_DEVICE), Ops() as ops:
        sampled = F.grid_sample(volume, grid, mode, padding_mode, align_corners)
        generated = F.affine_grid(theta, size, align_corners=align_corners)
    assert ops.namespaces == {"stn_cuda"}
    assert torch.equal(sampled, stn_cuda.grid_sample(volume, grid, mode, padding_mode, align_corners))
    assert torch.equal(generated, stn_cuda.affine_grid(theta, size, align_corners))


def _outcome(call, *args):
    """What call(*args) returns or raises, and the warnings it gives, comparably."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ("returned", call(*args).tolist())
        except Exception as error:  # noqa: BLE001 (any error: it must be torch's)
            result = ("raised", type(error), str(error))
    return result, [str(w.message) for w in caught]


def _5d(x):
    return x[:, :, None]


FALLBACKS = {  # (input, grid, theta) -> a call stn_cuda leaves to torch
    "5-D input, 4-D grid": lambda x, g, t: F.grid_sample(_5d(x), g, align_corners=False),
    "5-D bicubic": lambda x, g, t: F.grid_sample(_5d(x), _5d(torch.cat([g, g[..., :1]], -1)), mode="bicubic",
                                                 align_corners=False),  # torch raises
    "align_corners=None": lambda x, g, t: F.grid_sample(x, g),  # torch warns
    "dtypes differ": lambda x, g, t: F.grid_sample(x, g.double(), align_corners=False),
    "integer input": lambda x, g, t: F.grid_sample(x.long(), g, align_corners=False),
    "3 coordinates": lambda x, g, t: F.grid_sample(x, torch.cat([g, g[..., :1]], -1), align_corners=False),
    "batch sizes differ": lambda x, g, t: F.grid_sample(x[:1], g, align_corners=False),
    "empty input": lambda x, g, t: F.grid_sample(x[:, :, :0], g, align_corners=False),
    "unknown mode": lambda x, g, t: F.grid_sample(x, g, mode="linear", align_corners=False),
    "affine_grid 3-D, theta 2x3": lambda x, g, t: F.affine_grid(t, (2, 3, 4, 5, 6), align_corners=False),
    "affine_grid 3-D unit size": lambda x, g, t: F.affine_grid(t.new_ones(2, 3, 4), (2, 3, 1, 5, 6), align_corners=True),
    "affine_grid batch": lambda x, g, t: F.affine_grid(t, (3, 3, 4, 5), align_corners=False),
    "affine_grid zero size": lambda x, g, t: F.affine_grid(t, (2, 3, 0, 5), align_corners=False),
    "affine_grid unit size": lambda x, g, t: F.affine_grid(t, (2, 3, 1, 5), align_corners=True),  # torch warns
    "affine_grid integer": lambda x, g, t: F.affine_grid(t.long(), (2, 3, 4, 5), align_corners=False),
    "align_corners int": lambda x, g, t: F.grid_sample(x, g, align_corners=1),  # torch raises
    "affine_grid float size": lambda x, g, t: F.affine_grid(t, (2, 3, 4.5, 5), align_corners=False),
    "affine_grid under autocast": lambda x, g, t: _autocast_affine_grid(t, (2, 3, 4, 5)),  # torch's dtype
}


def _autocast_affine_grid(theta, size):
    with torch.autocast(theta.device.type, dtype=torch.bfloat16):
        return F.affine_grid(theta, size, align_corners=False)


@pytest.mark.parametrize("call", FALLBACKS.values(), ids=FALLBACKS.keys())
def test_patched_torch_falls_back(device, call):
    """What stn_cuda does not support runs torch's function: the same result, errors and warnings."""
    args = [a.detach() for a in sampler_inputs(device)]
    with Ops():  # as below: a dispatch mode can change torch's result (autocast's casts)
        expected = _outcome(call, *args)
    with stn_cuda.patched_torch(EVERY_DEVICE), Ops() as ops:
        assert _outcome(call, *args) == expected
    assert "stn_cuda" not in ops.namespaces


def test_patch_routes_cuda_calls_by_default(device):
    """patch_torch() routes CUDA calls; CPU calls only where asked (ATen's CPU kernels
    are the faster for images), and a nested patch's devices last as long as it."""
    input, grid, _ = (a.detach() for a in sampler_inputs(device))
    routed = {"cpu": False, "cuda": True}[device]

    def sampled_by_stn_cuda():
        with Ops() as ops:
            F.grid_sample(input, grid, align_corners=False)
        return "stn_cuda" in ops.namespaces

    with stn_cuda.patched_torch():
        assert sampled_by_stn_cuda() == routed
        with stn_cuda.patched_torch(device):
            assert sampled_by_stn_cuda()
        assert sampled_by_stn_cuda() == routed
    stn_cuda.patch_torch("cpu")
    assert sampled_by_stn_cuda() == (device == "cpu")
    with pytest.raises(ValueError, match="devices"):
        stn_cuda.patch_torch(["cuda", "tpu"])


def test_patch_torch_is_idempotent_and_restores_torch():
    torch_functions = F.grid_sample, F.affine_grid
    bound_before = F.grid_sample  # as `from torch.nn.functional import grid_sample` would
    stn_cuda.patch_torch(EVERY_DEVICE)
    patched = F.grid_sample, F.affine_grid
    stn_cuda.patch_torch(EVERY_DEVICE)
    assert (F.grid_sample, F.affine_grid) == patched and patched[0] is not torch_functions[0]
    with stn_cuda.patched_torch("cuda"):  # nested: leaves the outer patch in place, devices too
        pass
    assert (F.grid_sample, F.affine_grid) == patched
    input, grid, _ = sampler_inputs("cpu")
    for fn, namespace in [(bound_before, "aten"), (F.grid_sample, "stn_cuda")]:
        with Ops() as ops:
            fn(input, grid, align_corners=False)
        assert ops.namespaces == {namespace}
    stn_cuda.unpatch_torch()
    stn_cuda.unpatch_torch()
    assert (F.grid_sample, F.affine_grid) == torch_functions
    with pytest.raises(KeyError), stn_cuda.patched_torch():
        raise KeyError
    assert (F.grid_sample, F.affine_grid) == torch_functions


def _normalise(height, width, dtype, device):
    """kornia's pixel -> [-1, 1] coordinate map (align_corners=True), 3 x 3."""
    return torch.tensor([[2 / (width - 1), 0, -1], [0, 2 / (height - 1), -1], [0, 0, 1]],
                        dtype=dtype, device=device)


def warp_affine(src, matrix, dsize):
    """kornia.geometry.transform.warp_affine, down to its calls into torch: matrix (N, 2, 3)
    maps src pixels to output pixels; dsize is the output's (H, W)."""
    n, c, h, w = src.shape
    last_row = matrix.new_tensor([0, 0, 1]).expand(n, 1, 3)
    dst_from_src = _normalise(*dsize, src.dtype, src.device) @ torch.cat([matrix, last_row], 1) \
        @ torch.linalg.inv(_normalise(h, w, src.dtype, src.device))
    grid = F.affine_grid(torch.linalg.inv(dst_from_src)[:, :2], [n, c, *dsize], align_corners=True)
    return F.grid_sample(src, grid, align_corners=True)


def test_kornia_style_warp_goes_through_stn_cuda(device):
    src = torch.randn(2, 3, 16, 12, device=device, requires_grad=True)
    rotate = torch.tensor([[0.9, -0.3, 4.0], [0.3, 0.9, -2.0]], device=device)
    matrix = (rotate + 0.05 * torch.randn(2, 2, 3, device=device)).requires_grad_()

    def patched_warp(src, matrix):
        with stn_cuda.patched_torch(EVERY_DEVICE), Ops() as ops:
            out = warp_affine(src, matrix, (10, 14))
        assert {"stn_cuda::affine_grid", "stn_cuda::grid_sample"} <= ops.names
        return out

    check_against(patched_warp, lambda s, m: warp_affine(s, m, (10, 14)), (src, matrix), atol=1e-5, rtol=1e-5)


# -- DistributedDataParallel -----------------------------------------------------------------

def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(stn_cuda.SpatialTransformer(1, out_size=(6, 6)), nn.Flatten(),
                         nn.Linear(36, 3)).double()


def _batch():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=generator),
            torch.randint(3, (4,), generator=generator))


def _train(model, x, labels, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()


def _ddp_worker(rank, world_size, port, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        model = _classifier()
        _train(DistributedDataParallel(model), *(t.chunk(world_size)[rank] for t in _batch()))
        if rank == 0:
            torch.save(model.state_dict(), path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_gloo_available(), reason="torch was built without gloo")
def test_ddp_matches_single_process(tmp_path):
    """Two CPU processes, each with half the batch, train as one process with all of it."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), tmp_path / "ddp.pt"), nprocs=2)
    model = _classifier()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, *_batch())
    expected = model.state_dict()
    # every parameter moved: the gradients through the sampler reached the localisation net
    assert all(not torch.equal(initial[k], expected[k]) for k in expected)
    torch.testing.assert_close(torch.load(tmp_path / "ddp.pt"), expected)

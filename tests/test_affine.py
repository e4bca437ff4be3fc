"""The grid generator (affine_grid), the fused affine sampler (affine_sample) and the
SpatialTransformer module, against torch's affine_grid + grid_sample composition."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stn_cuda
from helpers import check_against, grads, leaf, random_theta, torch_affine_sample

# torch's affine_grid warns about 1-pixel outputs with align_corners=True; those are tested.
pytestmark = pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid")

# (N, C, H_in, W_in, H_out, W_out): odd, prime and 1-sized dimensions.
SHAPES = [(2, 3, 7, 5, 4, 6), (1, 1, 1, 1, 3, 3), (3, 2, 13, 11, 1, 7), (1, 4, 16, 17, 23, 2),
          (2, 2, 9, 9, 9, 9)]


def make(shape, device, spread):
    n, c, h, w, _, _ = shape
    input = torch.randn(n, c, h, w, dtype=torch.float64, device=device, requires_grad=True)
    theta = random_theta(n, device=device, spread=spread).requires_grad_()
    return input, theta


# -- affine_grid ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(2, 3, 4, 6), (1, 1, 1, 1), (3, 2, 7, 1), (2, 1, 1, 13), (1, 1, 29, 31)], ids=str)
def test_affine_grid_matches_torch(device, align_corners, size):
    theta = random_theta(size[0], device=device, spread=1.0).requires_grad_()
    check_against(functools.partial(stn_cuda.affine_grid, size=size, align_corners=align_corners),
                  functools.partial(F.affine_grid, size=size, align_corners=align_corners), (theta,))


@pytest.mark.parametrize("size", [(1, 1, 5, 8), (1, 1, 64, 33)], ids=str)
def test_affine_grid_identity_is_torch_layout(device, align_corners, size):
    theta = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]], dtype=torch.float64, device=device)
    ours = stn_cuda.affine_grid(theta, size, align_corners=align_corners)
    theirs = F.affine_grid(theta, size, align_corners=align_corners)
    assert torch.equal(ours, theirs)  # the same linspace, to the bit (float32 may differ by
    # an ulp or two: torch's vectorised linspace fuses a multiply-add)


def test_affine_grid_gradcheck(device, align_corners):
    theta = random_theta(2, device=device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: stn_cuda.affine_grid(t, (2, 3, 4, 5), align_corners=align_corners), (theta,))


# -- affine_sample: the fused path -------------------------------------------------------

@pytest.mark.parametrize("spread", [0.0, 0.3, 2.0], ids=["identity", "near", "far"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_affine_sample_matches_composition(device, padding_mode, align_corners, shape, spread):
    input, theta = make(shape, device, spread)
    out_size = shape[4:]
    fused = functools.partial(stn_cuda.affine_sample, out_size=out_size, padding_mode=padding_mode,
                              align_corners=align_corners)
    on_lattice = spread == 0 and shape[2:4] == shape[4:6]
    if on_lattice:
        # The identity onto the same size puts every point on a pixel centre, where the
        # gradient with respect to the coordinates jumps, and the side a point falls on is
        # decided by the last bit of its coordinate: grad_theta is compared with stn_cuda's
        # unfused path, which computes the same coordinates, and not with torch's.
        unfused = lambda x, t: stn_cuda.grid_sample(
            x, stn_cuda.affine_grid(t, (*shape[:2], *out_size), align_corners=align_corners),
            padding_mode=padding_mode, align_corners=align_corners)
        check_against(fused, unfused, (input, theta))
        theta.requires_grad_(False)
    check_against(fused, functools.partial(torch_affine_sample, out_size=out_size, padding_mode=padding_mode,
                                           align_corners=align_corners), (input, theta))


def test_affine_sample_nearest_matches_composition(device, padding_mode, align_corners):
    input, theta = make((2, 3, 9, 7, 6, 8), device, 0.4)
    check_against(
        functools.partial(stn_cuda.affine_sample, out_size=(6, 8), mode="nearest",
                          padding_mode=padding_mode, align_corners=align_corners),
        lambda x, t: F.grid_sample(x, F.affine_grid(t, (2, 3, 6, 8), align_corners=align_corners),
                                   mode="nearest", padding_mode=padding_mode, align_corners=align_corners),
        (input, theta))


@pytest.mark.parametrize("spread", [0.3, 2.0], ids=["near", "far"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 7, 6, 8), (1, 2, 1, 5, 4, 3)], ids=str)
def test_affine_sample_bicubic_matches_composition(device, padding_mode, align_corners, shape, spread):
    input, theta = make(shape, device, spread)
    out_size = shape[4:]
    check_against(
        functools.partial(stn_cuda.affine_sample, out_size=out_size, mode="bicubic",
                          padding_mode=padding_mode, align_corners=align_corners),
        lambda x, t: F.grid_sample(x, F.affine_grid(t, (*shape[:2], *out_size), align_corners=align_corners),
                                   mode="bicubic", padding_mode=padding_mode, align_corners=align_corners),
        (input, theta))


def test_affine_sample_out_size_defaults_to_input(device):
    input, theta = make((2, 3, 6, 7, 6, 7), device, 0.3)
    out = stn_cuda.affine_sample(input, theta)
    assert out.shape == input.shape
    torch.testing.assert_close(out, torch_affine_sample(input, theta, (6, 7)))


@pytest.mark.parametrize("needs", ["input", "theta"])
def test_affine_sample_one_gradient(device, needs):
    input, theta = make((2, 3, 6, 7, 5, 4), device, 0.5)
    input.requires_grad_(needs == "input")
    theta.requires_grad_(needs == "theta")
    check_against(functools.partial(stn_cuda.affine_sample, out_size=(5, 4), padding_mode="reflection"),
                  functools.partial(torch_affine_sample, out_size=(5, 4), padding_mode="reflection"),
                  (input, theta))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_affine_sample_gradcheck(device, padding_mode, align_corners, mode):
    input, theta = make((2, 2, 5, 4, 3, 4), device, 0.4)
    fn = functools.partial(stn_cuda.affine_sample, out_size=(3, 4), mode=mode, padding_mode=padding_mode,
                           align_corners=align_corners)
    assert torch.autograd.gradcheck(fn, (input, theta))


def test_affine_sample_memory_layouts(device):
    input, theta = make((2, 3, 8, 9, 5, 6), device, 0.5)
    for x in (input.detach().contiguous(memory_format=torch.channels_last),
              input.detach().transpose(2, 3).contiguous().transpose(2, 3),
              input.detach()[:1].expand(2, -1, -1, -1)):
        for wants_grad_input in (True, False):  # without, the input is read in place
            check_against(functools.partial(stn_cuda.affine_sample, out_size=(5, 6)),
                          functools.partial(torch_affine_sample, out_size=(5, 6)),
                          (x.detach().requires_grad_(wants_grad_input),
                           theta.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_affine_sample_reduced_precision(device, dtype, mode):
    input, theta = make((2, 4, 12, 12, 10, 10), device, 0.3)
    x, t = leaf(input.to(dtype)), leaf(theta.to(dtype))
    out = stn_cuda.affine_sample(x, t, (10, 10), mode=mode)
    x32, t32 = leaf(x.float()), leaf(t.float())
    ref = torch_affine_sample(x32, t32, (10, 10), mode=mode)
    assert out.dtype == dtype
    # In float32 the error is not the final rounding alone: the fused and torch's
    # affine_grid round the source coordinates differently, by an ulp or two, which
    # moves each sample by that much times the image's slope (up to ~2x and ~3x the
    # final rounding's bound for bilinear and bicubic, over 100 seeds).
    eps = torch.finfo(dtype).eps * (4 if dtype == torch.float32 else 1)
    torch.testing.assert_close(out.float(), ref, atol=8 * eps, rtol=8 * eps)
    go = torch.randn_like(ref)
    gi, gt = grads(out, (x, t), go.to(dtype))
    rgi, rgt = grads(ref, (x32, t32), go.to(dtype).float())
    assert gi.dtype == dtype and gt.dtype == dtype
    torch.testing.assert_close(gi.float(), rgi, atol=16 * eps, rtol=16 * eps)
    # grad_theta sums over every point: accumulated in float32, rounded once
    torch.testing.assert_close(gt.float(), rgt, atol=8 * eps * rgt.abs().max().item(), rtol=8 * eps)


def test_affine_opcheck(device):
    input, theta = make((2, 3, 5, 6, 4, 4), device, 0.5)
    ops = torch.ops.stn_cuda
    torch.library.opcheck(ops.affine_sample.default, (input, theta, [4, 3], 0, 2, True))
    go = torch.randn(2, 3, 4, 3, dtype=input.dtype, device=device)
    torch.library.opcheck(ops.affine_sample_backward.default,
                          (go, input.detach(), theta.detach(), 0, 1, False, [True, True]))
    torch.library.opcheck(ops.affine_grid.default, (theta, [2, 3, 4, 3], False))
    torch.library.opcheck(ops.affine_grid_backward.default,
                          (torch.randn(2, 4, 3, 2, dtype=input.dtype, device=device), True))


# -- bad input -----------------------------------------------------------------------

def _x(*shape):
    return torch.randn(*shape)


BAD_CALLS = [
    ("theta 2-D", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(2, 3)), ValueError, "theta"),
    ("theta 3x3", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 3, 3)), ValueError, "theta"),
    ("theta batch", lambda: stn_cuda.affine_sample(_x(2, 3, 4, 4), _x(1, 2, 3)), ValueError, "batch"),
    ("out_size zero", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 2, 3), (0, 4)), ValueError, "out_size"),
    ("out_size negative", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 2, 3), (4, -1)), ValueError, "out_size"),
    ("out_size 3 values", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 2, 3), (4, 4, 4)), ValueError, "out_size"),
    ("theta dtype", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 2, 3).double()), TypeError, "dtype"),
    ("grid size batch", lambda: stn_cuda.affine_grid(_x(2, 2, 3), (3, 1, 4, 4)), ValueError, "batch"),
    ("grid size 3 values", lambda: stn_cuda.affine_grid(_x(1, 2, 3), (1, 4, 4)), ValueError, "size"),
    ("grid size zero", lambda: stn_cuda.affine_grid(_x(1, 2, 3), (1, 1, 0, 4)), ValueError, "size"),
    ("grid size float", lambda: stn_cuda.affine_grid(_x(1, 2, 3), (1, 1, 4.5, 4)), TypeError, "integers"),
    ("grid size channels zero", lambda: stn_cuda.affine_grid(_x(1, 2, 3), (1, 0, 4, 4)), ValueError, "positive"),
    ("grid size batch zero", lambda: stn_cuda.affine_grid(_x(0, 2, 3), (0, 1, 4, 4)), ValueError, "positive"),
    ("out_size float", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 2, 3), (4.5, 4)), TypeError, "integers"),
    ("grid size tensor", lambda: stn_cuda.affine_grid(_x(1, 2, 3), torch.tensor([1, 1, 4, 4])), TypeError,
     "tuple or list of ints, got torch.Tensor"),
    ("out_size tensor", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 2, 3), torch.tensor([4, 4])), TypeError,
     "tuple or list"),
    ("align_corners str", lambda: stn_cuda.affine_grid(_x(1, 2, 3), (1, 1, 4, 4), "yes"), TypeError, "align_corners"),
    ("meta theta", lambda: stn_cuda.affine_sample(_x(1, 3, 4, 4), _x(1, 2, 3).to("meta")), ValueError, "same device"),
    ("3x4 theta, 4-D size", lambda: stn_cuda.affine_grid(_x(1, 3, 4), (1, 1, 2, 2)), ValueError, "theta"),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


# -- the SpatialTransformer module --------------------------------------------------------

@pytest.mark.parametrize("channels,size,out_size", [(1, (28, 28), None), (3, (17, 23), (9, 31)), (5, (1, 1), None)])
def test_module_is_identity_at_initialisation(device, channels, size, out_size):
    stn = stn_cuda.SpatialTransformer(channels, out_size=out_size).to(device).double()
    x = torch.randn(4, channels, *size, dtype=torch.float64, device=device)
    out, theta = stn(x, return_theta=True)
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=torch.float64, device=device).expand(4, 2, 3)
    assert torch.equal(theta, identity)
    if out_size is None:
        torch.testing.assert_close(out, x)  # the identity transform samples pixel centres exactly
    else:
        torch.testing.assert_close(out, F.grid_sample(x, F.affine_grid(identity, (4, channels, *out_size), align_corners=False), align_corners=False))


def _shifted_blob(n, shift, device):
    """A Gaussian blob at the centre of a 24x24 image, and the same blob moved by `shift`
    (normalised units) — the target the transformer must learn to produce."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 24), indexing="ij")
    blob = lambda cx, cy: torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 0.08)
    x = blob(0.0, 0.0).expand(n, 1, 24, 24).to(device)
    target = blob(*shift).expand(n, 1, 24, 24).to(device)
    return x.contiguous(), target.contiguous()


def test_module_learns_a_shift(device):
    torch.manual_seed(0)
    x, target = _shifted_blob(8, (0.3, -0.2), device)
    stn = stn_cuda.SpatialTransformer(1).to(device)
    opt = torch.optim.Adam(stn.parameters(), lr=0.003)
    losses = []
    for _ in range(80):
        loss = F.mse_loss(stn(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0]
    theta = stn.theta(x)[0]
    # V(p) = U(theta p): the blob moves by +shift when theta translates by -shift
    torch.testing.assert_close(theta[:, 2], torch.tensor([-0.3, 0.2], device=device), atol=0.05, rtol=0)


def test_module_with_user_localisation_net(device):
    head = stn_cuda.modules.identity_head(16)
    loc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), head)
    stn = stn_cuda.SpatialTransformer(3, out_size=(4, 4), localization=loc, padding_mode="border").to(device)
    x = torch.randn(5, 3, 8, 8, device=device, requires_grad=True)
    out = stn(x)
    assert out.shape == (5, 3, 4, 4)
    out.square().sum().backward()
    assert x.grad is not None and head.bias.grad is not None and head.bias.grad.abs().sum() > 0
    # the module routes through the fused sampler: same as the explicit composition
    theta = loc(x).view(5, 2, 3)
    torch.testing.assert_close(out, torch_affine_sample(x, theta, (4, 4), padding_mode="border"))


def test_module_rejects_bad_arguments():
    """At construction, with the functions' errors, where it would otherwise fail (or round)
    at the first call."""
    for kwargs, error, words in [
        (dict(in_channels=0), ValueError, "in_channels to be positive"),
        (dict(in_channels=2.5), TypeError, "in_channels to be an int, got float"),
        (dict(in_channels=1, out_size=(0, 3)), ValueError, "out_size to be positive"),
        (dict(in_channels=1, out_size=(3.7, 4)), TypeError, r"out_size to hold integers, got \(3.7, 4\)"),
        (dict(in_channels=1, out_size=4), TypeError, "out_size to be a tuple or list of ints, got int"),
        (dict(in_channels=1, out_size=(4, 4, 4)), ValueError, r"out_size to be \(H_out, W_out\)"),
        (dict(in_channels=1, padding_mode="wrap"), ValueError, "padding_mode to be 'zeros'"),
        (dict(in_channels=1, align_corners=1), TypeError, "align_corners to be a bool, got int"),
    ]:
        with pytest.raises(error, match=r"stn_cuda\.SpatialTransformer\(\): expected " + words):
            stn_cuda.SpatialTransformer(**kwargs)
    assert stn_cuda.SpatialTransformer(torch.tensor(3), out_size=torch.Size([4, 5])).out_size == (4, 5)
    stn = stn_cuda.SpatialTransformer(3)
    with pytest.raises(ValueError, match="input"):
        stn(torch.randn(2, 4, 8, 8))
    bad = stn_cuda.SpatialTransformer(1, localization=nn.Sequential(nn.Flatten(), nn.Linear(16, 4)))
    with pytest.raises(ValueError, match="6 values"):
        bad(torch.randn(2, 1, 4, 4))

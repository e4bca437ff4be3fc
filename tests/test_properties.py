"""Property-based tests (hypothesis): stn_cuda against torch in float64, values and
gradients, for images (4-D input, grid (N, H, W, 2), theta (N, 2, 3)) and volumes (5-D
input, grid (N, D, H, W, 3), theta (N, 3, 4)), on random shapes (1-sized and prime
dimensions, rows longer than the CPU kernels' 64-point runs), memory layouts (any
dimension order, channels last among them, sliced with steps, a storage offset, an
expanded dimension) and coordinates that stress the edges: exact +-1, pixel centres,
pixel edges, just inside and just outside the input, far outside, huge (1e6 .. 3e38),
+-inf and NaN. Every mode (bicubic for images only, as in torch), every padding_mode and
align_corners; where stn_cuda has a deterministic backward (stn_cuda/determinism.py:
images, bilinear and nearest) the gradients are checked from it too, against the same
reference.

A point with a non-finite coordinate samples 0 and passes no gradient in stn_cuda
(README, "Semantics and limits"); the reference is torch on a grid where such points
are moved to 0, its output and their gradients masked, as in
test_grid_sample.py::test_non_finite_points_contribute_nothing. torch's reflection
(and bicubic) padding is undefined beyond ~2**31 pixels, so huge coordinates stay
below 1e6 there (test_grid_sample.py::test_huge_coordinates). Points whose side of a
pixel boundary depends on the last bit are left out where stn_cuda and torch round
differently (seams()).

Settings profiles, chosen by the environment variable STN_HYPOTHESIS_PROFILE:
  ci    (default) bounded (about a minute and a half on two cores) and derandomized:
        the same examples on every run, no example database, so CI is reproducible
  long  25 times as many examples, fresh ones on every run; failures are saved in
        .hypothesis/ and replayed first on the next run:
          STN_HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py
  quick 5 examples per test, derandomized: for runs under compute-sanitizer
"""
import dataclasses
import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stn_cuda
from conftest import PADDING_MODES
from helpers import check_against, grads, leaf

# The fixtures used here (device, the autouse seed) hold nothing an example could change.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                     HealthCheck.too_slow, HealthCheck.data_too_large])
_REPRODUCIBLE = dict(derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("ci", max_examples=25, **_REPRODUCIBLE)
settings.register_profile("long", max_examples=25 * 25, **_COMMON)
settings.register_profile("quick", max_examples=5, **_REPRODUCIBLE)  # under compute-sanitizer
PROFILE = settings.get_profile(os.environ.get("STN_HYPOTHESIS_PROFILE", "ci"))

F64 = torch.float64


# The modes per number of spatial dimensions: torch has no bicubic for volumes (stn_cuda
# raises ValueError for it, test_volume.py). Each runs with the usual and the deterministic
# backward (stn_cuda/determinism.py).
MODES = {2: ("bilinear", "nearest", "bicubic"), 3: ("bilinear", "nearest")}
AXES = "DHW"  # the spatial dimensions' names, outermost first: a 4-D input has the last two


def huge_limit(mode, padding_mode):
    """The largest coordinate magnitude torch has a defined result for."""
    return 1e6 if padding_mode == "reflection" or mode == "bicubic" else 3e38


# -- memory layouts ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    order: tuple     # storage order of the dimensions, outermost first
    steps: tuple     # every dimension is a slice with this step of a larger buffer
    offset: int      # storage offset
    expanded: object  # a dimension stored once and expanded (stride 0), or None


@st.composite
def layouts(draw, ndim):
    """Any dimension order, the usual two (contiguous, channels last) more often."""
    usual = st.sampled_from([tuple(range(ndim)), (0, *range(2, ndim), 1)])
    return Layout(order=tuple(draw(st.one_of(usual, st.permutations(range(ndim))))),
                  steps=tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))),
                  offset=draw(st.integers(0, 3)),
                  expanded=draw(st.one_of(st.none(), st.integers(0, ndim - 1))))


def lay_out(t, layout):
    """t's values in the given memory layout. An expanded dimension repeats t's first
    slice along it, so the values change: use the returned tensor for every reference.
    The buffer's other elements are NaN, so reading one shows."""
    shape = t.shape
    if layout.expanded is not None:
        t = t.narrow(layout.expanded, 0, 1)
    stored = [t.shape[d] * layout.steps[d] for d in layout.order]
    buffer = torch.full((layout.offset + math.prod(stored),), math.nan, dtype=t.dtype, device=t.device)
    view = buffer[layout.offset:].view(stored)[tuple(slice(None, None, layout.steps[d]) for d in layout.order)]
    view.copy_(t.permute(layout.order))
    out = view.permute([layout.order.index(d) for d in range(t.dim())])
    return out.expand(shape) if layout.expanded is not None else out


# -- coordinates ------------------------------------------------------------------------

def normalised(pixel, size, align_corners):
    """The normalised coordinate of a pixel position along an axis of `size` pixels."""
    if align_corners:
        return 0.0 if size == 1 else pixel * 2 / (size - 1) - 1
    return (2 * pixel + 1) / size - 1


def signed(magnitudes):
    return st.tuples(st.sampled_from([-1.0, 1.0]), magnitudes).map(lambda t: t[0] * t[1])


def coordinates(size, align_corners, limit):
    """One coordinate along an axis of `size` pixels, from the places where things break."""
    pixel = st.integers(-2, size + 1)
    return st.one_of(
        st.floats(-1.2, 1.2),
        st.sampled_from([-1.0, 1.0, 0.0]),
        pixel.map(lambda i: normalised(i, size, align_corners)),         # pixel centres
        pixel.map(lambda i: normalised(i - 0.5, size, align_corners)),   # pixel edges
        st.tuples(st.sampled_from([-1.0, 1.0]), signed(st.floats(1e-12, 1e-3)))
          .map(lambda t: t[0] + t[1]),                                   # just inside or outside
        signed(st.floats(1.2, 30.0)),                                    # far outside
        signed(st.floats(1e6, limit)),                                   # huge
        st.sampled_from([math.inf, -math.inf, math.nan]),
    )


@st.composite
def grids(draw, n, out_sizes, in_sizes, align_corners, limit):
    """(n, *out_sizes, len(in_sizes)) points (x, y[, z]) into an input of spatial sizes
    in_sizes ([D,] H, W): uniform in [-1.2, 1.2] but for a drawn share of them, which take
    values from small drawn pools of special coordinates (per axis)."""
    pools = [draw(st.lists(coordinates(size, align_corners, limit), min_size=1, max_size=6))
             for size in reversed(in_sizes)]  # x runs along W, the last
    special = draw(st.floats(0, 1))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    shape = (n, *out_sizes)

    def axis(pool):
        uniform = torch.rand(shape, generator=gen, dtype=F64) * 2.4 - 1.2
        pick = torch.randint(len(pool), shape, generator=gen)
        use = torch.rand(shape, generator=gen, dtype=F64) < special
        return torch.where(use, torch.tensor(pool, dtype=F64)[pick], uniform)

    return torch.stack([axis(pool) for pool in pools], -1)


def randn(draw, *shape):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    return torch.randn(*shape, generator=gen, dtype=F64)


def seed_torch(data):
    """Seed torch's generator (grad_output's values) from the example, so that
    replaying an example replays it all."""
    torch.manual_seed(data.draw(st.integers(0, 2**32 - 1), "torch seed"))


SIZES = st.integers(1, 11)
WIDTHS = st.one_of(st.integers(1, 8), st.sampled_from([13, 63, 64, 65, 70]))  # one run, several


def draw_in_sizes(data, dims):
    """The input's spatial sizes ([D_in,] H_in, W_in)."""
    return tuple(data.draw(SIZES, f"{axis}_in") for axis in AXES[-dims:])


def draw_out_sizes(data, dims):
    """The output's spatial sizes ([D_out,] H_out, W_out): rows of one or several runs."""
    *outer, _ = AXES[-dims:]
    outer_sizes = tuple(data.draw(st.integers(1, 7), f"{axis}_out") for axis in outer)
    return outer_sizes + (data.draw(WIDTHS, "W_out"),)


# -- the reference ----------------------------------------------------------------------

def torch_sampler(mode, padding_mode, align_corners, bad):
    """F.grid_sample with stn_cuda's rule for the points where `bad` (N, [D_out,] H_out, W_out)."""
    keep = (~bad)[:, None].to(F64)

    def sample(input, grid):
        grid = torch.where(bad[..., None], torch.zeros_like(grid), grid)
        out = F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
        return out * keep
    return sample


def non_finite_points(grid):
    return ~torch.isfinite(grid).all(-1)


def exact_axis(size, align_corners):
    """Whether unnormalising is exact along an axis of `size` pixels (a power-of-two scale)."""
    scale = size - 1 if align_corners else size
    return scale & (scale - 1) == 0


def unnormalised(x, size, align_corners):
    """The pixel position of normalised coordinates x, computed as stn_cuda does
    (csrc/sampler_math.h, unnormalize)."""
    return ((x + 1) / 2) * (size - 1) if align_corners else ((x + 1) * size - 1) / 2


def seams(grid, in_sizes, padding_mode, align_corners):
    """(N, [D_out,] H_out, W_out): points left out of the comparisons (see check_sampler).

    Points within rounding of a multiple of half a pixel, where the sampled value (nearest)
    or the gradient with respect to the point (bilinear) jumps, and where the side a point
    falls on depends on the last bit of its pixel position. On the CPU, torch's vectorised
    4-D kernel unnormalises as (x + 1) * (size / 2) - 1/2, where stn_cuda (like torch's
    CUDA kernel and its scalar 5-D CPU kernel) computes ((x + 1) * size - 1) / 2: the two
    agree to the bit only along axes where the scale is a power of two (and no reflection
    moved the point). Elsewhere such points are left out. For volumes and on CUDA the
    formulas are the same: none is, but for the points below."""
    on_seam = torch.zeros(grid.shape[:-1], dtype=torch.bool, device=grid.device)
    torch_rounds_differently = grid.device.type == "cpu" and grid.shape[-1] == 2
    for k, size in enumerate(reversed(in_sizes)):  # x along W, the last
        p = unnormalised(grid[..., k].detach().nan_to_num(0.0, 0.0, 0.0), size, align_corners)
        if not torch_rounds_differently or (exact_axis(size, align_corners) and padding_mode != "reflection"):
            continue
        twice = 2 * p
        near = (twice - twice.round()).abs() <= 64 * torch.finfo(F64).eps * (twice.abs() + 2 * size)
        if padding_mode != "reflection":  # points further out read nothing or are clipped
            near &= (p > -2) & (p < size + 1)
        on_seam |= near
    return on_seam


def tolerances(mode):
    return dict(atol=1e-9, rtol=1e-8) if mode == "bicubic" else dict(atol=1e-10, rtol=1e-8)


def check_sampler(ours, reference, args, mode, skip, deterministic):
    """ours(*args) against reference(*args): values, and the gradients of the arguments that
    require grad, from stn_cuda's deterministic backward where `deterministic`. The points
    where `skip` (N, [D_out,] H_out, W_out) get no gradient from the output, and in mode
    'nearest' (where the value jumps) their values are not compared."""
    ours_args = [leaf(a, a.requires_grad) for a in args]
    ref_args = [leaf(a, a.requires_grad) for a in args]
    out, ref = ours(*ours_args), reference(*ref_args)
    keep = (~skip)[:, None]
    tol = tolerances(mode)
    if mode == "nearest":
        torch.testing.assert_close(out * keep, ref * keep, **tol)
    else:
        torch.testing.assert_close(out, ref, **tol)
    diff = [i for i, a in enumerate(args) if a.requires_grad]
    go = torch.randn_like(ref) * keep
    with stn_cuda.deterministic(deterministic):  # the backward reads it when it runs
        ours_g = grads(out, [ours_args[i] for i in diff], go)
    ref_g = grads(ref, [ref_args[i] for i in diff], go)
    for i, a, b in zip(diff, ours_g, ref_g):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"gradient of argument {i}: {m}")
    return out


def variants():
    """(dims, mode, deterministic): 4-D images and 5-D volumes, each mode, with the usual
    and the deterministic backward."""
    return [pytest.param(dims, mode, det, id=f"{dims + 2}d-{mode}" + ("-deterministic" if det else ""))
            for dims in (2, 3) for mode in MODES[dims] for det in (False, True)]


def sampler_property(test):
    """A hypothesis test over every variant, padding_mode and align_corners."""
    test = PROFILE(given(data=st.data())(test))
    test = pytest.mark.parametrize("dims, mode, deterministic", variants())(test)
    test = pytest.mark.parametrize("padding_mode", PADDING_MODES)(test)
    return pytest.mark.parametrize("align_corners", [False, True], ids=["edges", "corners"])(test)


def draw_input(data, device, shape, other, other_name):
    """A random input in a random layout, and which of it and `other` require grad."""
    input = lay_out(randn(data.draw, *shape).to(device), data.draw(layouts(len(shape)), "input layout"))
    needs = data.draw(st.sampled_from(["both", "input", other_name]), "gradients")
    other.requires_grad_(needs != "input")
    return input.requires_grad_(needs != other_name)


# -- grid_sample --------------------------------------------------------------------------

@sampler_property
def test_grid_sample_property(device, dims, mode, deterministic, padding_mode, align_corners, data):
    seed_torch(data)
    n, c = data.draw(st.integers(1, 3), "N"), data.draw(st.integers(1, 5), "C")
    in_sizes, out_sizes = draw_in_sizes(data, dims), draw_out_sizes(data, dims)
    limit = huge_limit(mode, padding_mode)
    grid = data.draw(grids(n, out_sizes, in_sizes, align_corners, limit), "grid")
    grid = lay_out(grid.to(device), data.draw(layouts(dims + 2), "grid layout"))
    input = draw_input(data, device, (n, c, *in_sizes), grid, "grid")
    skip = seams(grid, in_sizes, padding_mode, align_corners)
    check_sampler(functools.partial(stn_cuda.grid_sample, mode=mode, padding_mode=padding_mode,
                                    align_corners=align_corners),
                  torch_sampler(mode, padding_mode, align_corners, non_finite_points(grid)),
                  (input, grid), mode, skip, deterministic)


# -- affine_grid and affine_sample ------------------------------------------------------------

def thetas(limit):
    """Transform entries: near the identity's, far from it, huge, non-finite."""
    return st.one_of(st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0, -1.0, 0.5]),
                     signed(st.floats(2.0, 1e3)), signed(st.floats(1e3, limit)),
                     st.sampled_from([math.inf, -math.inf, math.nan]))


def draw_theta(data, n, dims, limit, finite=False):
    """theta (n, dims, dims + 1)."""
    entries = thetas(limit) if not finite else st.floats(-1e3, 1e3)
    count = n * dims * (dims + 1)
    theta = torch.tensor(data.draw(st.lists(entries, min_size=count, max_size=count), "theta"), dtype=F64)
    return theta.view(n, dims, dims + 1)


SPATIAL_DIMS = pytest.mark.parametrize("dims", [2, 3], ids=["4d", "5d"])


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid")
@pytest.mark.parametrize("align_corners", [False, True], ids=["edges", "corners"])
@SPATIAL_DIMS
@PROFILE
@given(data=st.data())
def test_affine_grid_property(device, dims, align_corners, data):
    seed_torch(data)
    n, c = data.draw(st.integers(1, 3), "N"), data.draw(st.integers(1, 3), "C")
    size = (n, c, *draw_out_sizes(data, dims))
    theta = draw_theta(data, n, dims, 1e3, finite=True)
    theta = lay_out(theta.to(device), data.draw(layouts(3), "theta layout"))
    check_against(functools.partial(stn_cuda.affine_grid, size=size, align_corners=align_corners),
                  functools.partial(F.affine_grid, size=size, align_corners=align_corners),
                  (theta.requires_grad_(),), atol=1e-9, rtol=1e-8)


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid")
@sampler_property
def test_affine_sample_property(device, dims, mode, deterministic, padding_mode, align_corners, data):
    """The fused path against torch's sampler on the grid of stn_cuda.affine_grid, which
    computes the points exactly as the fused kernels do (and equals F.affine_grid:
    test_affine_grid_property); for continuous modes the values also against the all-torch
    composition, whose points may differ in the last bit."""
    seed_torch(data)
    n, c = data.draw(st.integers(1, 3), "N"), data.draw(st.integers(1, 4), "C")
    in_sizes, out_size = draw_in_sizes(data, dims), draw_out_sizes(data, dims)
    # a point's coordinate is a sum of dims + 1 terms, theta's entries times target
    # coordinates in [-1, 1] (or 1): 1 / (dims + 1) of the limit keeps every point within it
    theta = draw_theta(data, n, dims, huge_limit(mode, padding_mode) / (dims + 1))
    theta = lay_out(theta.to(device), data.draw(layouts(3), "theta layout"))
    input = draw_input(data, device, (n, c, *in_sizes), theta, "theta")

    size = (n, c, *out_size)
    grid_of = functools.partial(stn_cuda.affine_grid, size=size, align_corners=align_corners)
    grid = grid_of(theta.detach())
    sampler = torch_sampler(mode, padding_mode, align_corners, non_finite_points(grid))
    skip = seams(grid, in_sizes, padding_mode, align_corners)
    fused = functools.partial(stn_cuda.affine_sample, out_size=out_size, mode=mode,
                              padding_mode=padding_mode, align_corners=align_corners)
    out = check_sampler(fused, lambda x, t: sampler(x, grid_of(t)), (input, theta), mode, skip, deterministic)
    if mode != "nearest":
        torch_grid = F.affine_grid(theta.detach(), size, align_corners=align_corners)
        ref = torch_sampler(mode, padding_mode, align_corners, non_finite_points(torch_grid))(
            input.detach(), torch_grid)
        scale = max(1.0, theta.detach().nan_to_num(0, 0, 0).abs().max().item() * max(in_sizes))
        torch.testing.assert_close(out.detach(), ref, atol=1e-9 * scale, rtol=1e-7,
                                   msg=lambda m: f"against the all-torch composition: {m}")

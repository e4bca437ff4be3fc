"""Correctness of each implementation on the very inputs it is timed on, checked
before it is timed.

stn_cuda, strictly: the output, grad_input and the geometry's gradient (for a random
grad_output) against torch's native sampler run in float32 on the same coordinates.
  sampler  torch.grid_sampler_2d/3d(input.float(), grid.float())
  affine   the fused kernel computes its coordinates with the function behind
           stn_cuda.affine_grid, so the reference samples at stn_cuda.affine_grid(theta)
           (compared with F.affine_grid: error "grid"), and its grad_theta is its
           grad_grid contracted with the base grid, in float64 (see _strict for the
           points on pixel boundaries).
Each error is max(|x - ref| - slack) / max|ref| and must be within strict_tolerance():
stn_cuda computes in float32 and rounds once to the dtype, and float32 sums taken in
another order (atomics, channel splits, block reductions) differ by rounding that
grows like the square root of the number of terms summed into one value.
The slack is zero but for grad_grid, which jumps where a point crosses a pixel
boundary: a point within a few float32 roundings of one may legitimately land on
either side (float32 kernels round the pixel coordinate differently: ATen's CPU
kernel, for one), so there the slack is the size of the jump (boundary_slack).
Where the exact gradient overflows the dtype (float16 grad_theta of large images),
the result must be that infinity; the check's notes count such values.

Others (torch's cuDNN path, kornia), as a sanity check that they compute the same
warp, not as an accuracy test: the relative RMS error of their output against the
family's float32 torch reference, at most 1e-2 (0.5 in float16 and bfloat16, where a
grid computed in the dtype is off by up to a pixel at 512 px; a wrong warp is ~1.4).
kornia takes its pixel matrix in the input's dtype, so in bfloat16 its warp of an
image of a few hundred pixels is off by pixels, and is reported as a mismatch (a
warning: only stn_cuda's failures fail the run).

The family's reference is what the others are checked against and timed against.
"""
import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

import stn_cuda

from .impls import REFERENCE, SAMPLER, Impl, torch_composition, torch_native
from .workloads import Case

OK, MISMATCH, IS_REFERENCE = "ok", "mismatch", "reference"
EPS32 = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class Check:
    status: str                       # OK, MISMATCH or IS_REFERENCE
    against: str = ""                 # the reference, in words
    errors: Dict[str, float] = field(default_factory=dict)      # per compared tensor
    tolerances: Dict[str, float] = field(default_factory=dict)  # the same keys
    notes: List[str] = field(default_factory=list)

    def as_row(self) -> dict:
        return {"check": self.status, **{f"check_{k}": v for k, v in asdict(self).items() if k != "status"}}


def strict_tolerance(dtype: torch.dtype, terms: float) -> float:
    """4 eps(dtype) for the final rounding, plus float32 rounding that grows with the
    square root of the number of terms summed into one value."""
    return 4 * torch.finfo(dtype).eps + EPS32 * (64 + 2 * math.sqrt(terms))


def max_error(value: torch.Tensor, ref: torch.Tensor, slack: Optional[torch.Tensor] = None) -> float:
    """max(|value - ref| - slack, 0) / max|ref| over the values of ref that value's dtype
    can hold; where ref overflows it, value must be the same infinity (else inf).
    NaN in value gives NaN."""
    expected = ref.to(value.dtype)
    overflow = expected.isinf() & ref.isfinite()
    if not torch.equal(value[overflow], expected[overflow]):
        return math.inf
    diff = (value.double() - ref.double()).abs()
    if slack is not None:
        diff = (diff - slack).clamp_min(0)
    diff, ref = diff[~overflow], ref.double()[~overflow]
    return (diff.max() / ref.abs().max().clamp_min(1e-300)).item() if ref.numel() else 0.0


def rms_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    value, ref = value.double(), ref.double()
    return ((value - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _grad_output(case: Case) -> torch.Tensor:
    """A random grad_output, rounded to the case's dtype, returned in float32."""
    w = case.workload
    gen = torch.Generator(device=case.device).manual_seed(zlib.crc32(f"{w.name}/grad".encode()))
    shape = (w.batch, w.channels, *w.out_size)
    return torch.randn(shape, generator=gen, device=case.device).to(case.dtype).float()


def _value_and_grads(fn, input, geometry, grad_output):
    leaves = (input.detach().requires_grad_(), geometry.detach().requires_grad_())
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, grad_output))


def boundary_slack(sample, input: torch.Tensor, coords: torch.Tensor, grad_output: torch.Tensor,
                   case: Case) -> torch.Tensor:
    """Per point and axis, how far grad_grid may legitimately be off: at a point within a
    few float32 roundings of a pixel boundary (an integer pixel coordinate, or a half
    integer, where reflection folds), the jump of grad_grid when the point moves across
    it; zero elsewhere."""
    input = input.detach()
    near_px = 8 * EPS32 * max(case.workload.in_size)  # float32 rounding of a pixel coordinate
    slack = torch.zeros_like(coords)
    for axis, size in enumerate(reversed(case.workload.in_size)):  # x (width), y (height)[, z (depth)]
        c = coords[..., axis].double()
        if case.sampling.align_corners:
            pixel = (c + 1) / 2 * (size - 1)
        else:
            pixel = ((c + 1) * size - 1) / 2
        near = (2 * pixel - torch.round(2 * pixel)).abs() <= 2 * near_px
        shift = torch.zeros(coords.shape[-1], device=coords.device)
        shift[axis] = 4 * near_px / max(size - 1, 1)  # 2 near_px in pixels, in normalised units
        moved = []
        for sign in (1, -1):
            grid = (coords + sign * shift).requires_grad_()
            moved.append(torch.autograd.grad(sample(input, grid), grid, grad_output)[0])
        slack += (moved[0] - moved[1]).abs() * near[..., None]
    return slack


def _base_grid(case: Case) -> torch.Tensor:
    """(points, dims + 1): the target coordinates (x_t, y_t[, z_t], 1) of affine_grid, in float64."""
    dims = case.workload.dims
    identity = torch.eye(dims, dims + 1, dtype=torch.float64, device=case.device)[None]
    base = F.affine_grid(identity, (1, 1, *case.workload.out_size), align_corners=case.sampling.align_corners)[0]
    return torch.cat([base, torch.ones_like(base[..., :1])], -1).reshape(-1, dims + 1)


def _summed_terms(case: Case) -> Dict[str, float]:
    """How many products are summed into one value of each result (at most, or on average
    for grad_input: the points that read a pixel, four neighbours each, eight in a volume)."""
    w = case.workload
    points, corners = w.batch * math.prod(w.out_size), 2 ** w.dims
    return {"grid": w.dims + 1, "output": corners, "grad_input": max(corners, corners * points / max(case.footprint, 1)),
            "grad_grid": corners * w.channels, "grad_theta": corners * w.channels * points / w.batch}


def _strict(impl: Impl, case: Case) -> Check:
    sampling, out_size = impl.sampling(case), case.workload.out_size
    terms = _summed_terms(case)
    errors, tolerances, notes = {}, {}, []

    def compare(name, value, expected, slack=None):
        errors[name] = max_error(value, expected, slack)
        tolerances[name] = strict_tolerance(value.dtype, terms[name])
        overflow = int((expected.to(value.dtype).isinf() & expected.isfinite()).sum())
        if overflow:
            notes.append(f"{name}: {overflow} of {expected.numel()} exact values overflow {value.dtype}")

    def sample(x, g):
        return torch_native(x, g, out_size, sampling)

    grad_output = _grad_output(case)
    input = case.input.float()
    if impl.family == SAMPLER:
        coords, against = case.grid.float(), "torch's native sampler in float32, same grid"
    else:
        size = (case.workload.batch, case.workload.channels, *out_size)
        theta = case.theta.float()
        coords = stn_cuda.affine_grid(theta, size, align_corners=sampling.align_corners)
        compare("grid", coords, F.affine_grid(theta, size, align_corners=sampling.align_corners))
        against = "torch's native sampler in float32 at stn_cuda.affine_grid(theta), itself against F.affine_grid"
    ref_output, ref_grad_input, ref_grad_grid = _value_and_grads(sample, input, coords, grad_output)
    slack = boundary_slack(sample, input, coords, grad_output, case)

    output, grad_input, grad_geometry = _value_and_grads(
        lambda x, g: impl(case, x, g), impl.input(case), impl.geometry(case), grad_output.to(case.dtype))
    compare("output", output, ref_output)
    compare("grad_input", grad_input, ref_grad_input)
    if impl.family == SAMPLER:
        compare("grad_grid", grad_geometry, ref_grad_grid, slack)
    else:
        # grad_theta sums grad_grid over every point, so a slack there would add up; instead,
        # at the points where either side of a boundary is right, the reference takes the side
        # stn_cuda.grid_sample takes (its code decides the fused kernel's too), once that
        # is checked against torch's within the slack.
        stn_grad_grid = _value_and_grads(lambda x, g: stn_cuda.grid_sample(
            x, g, padding_mode=sampling.padding_mode, align_corners=sampling.align_corners),
            input, coords, grad_output)[2]
        compare("grad_grid", stn_grad_grid, ref_grad_grid, slack)
        resolved = torch.where(slack > 0, stn_grad_grid, ref_grad_grid)
        resolved = resolved.double().flatten(1, -2)  # (N, points, dims)
        compare("grad_theta", grad_geometry, torch.einsum("npi,pj->nij", resolved, _base_grid(case)))
    ok = all(errors[name] <= tolerances[name] for name in errors)  # False for NaN
    return Check(OK if ok else MISMATCH, against, errors, tolerances, notes)


def _sanity(impl: Impl, case: Case) -> Check:
    sampling, out_size = impl.sampling(case), case.workload.out_size
    if impl.family == SAMPLER:
        ref = torch_native(case.input.float(), case.grid.float(), out_size, sampling)
        against = f"torch's native sampler in float32, same grid, {sampling}"
    else:
        ref = torch_composition(case.input.float(), case.theta.float(), out_size, sampling)
        against = "F.affine_grid+F.grid_sample in float32, same theta"
    with torch.no_grad():
        out = impl(case, case.input, impl.geometry(case))
    error = rms_error(out, ref)
    tolerance = 1e-2 if torch.finfo(case.dtype).bits >= 32 else 0.5
    return Check(OK if error <= tolerance else MISMATCH, against + "; output, relative RMS",
                 {"output": error}, {"output": tolerance})


def check(impl: Impl, case: Case) -> Check:
    """impl's results on case against torch's (see the module's docstring)."""
    if impl.role == REFERENCE:
        return Check(IS_REFERENCE)
    if not impl.is_stn_cuda:
        return _sanity(impl, case)
    with impl.context():
        return _strict(impl, case)

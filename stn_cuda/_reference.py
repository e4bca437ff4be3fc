"""stn_cuda's sampler in plain, differentiable torch ops: what the kernels compute, in a
form that autograd can differentiate twice.

The kernels' backward ops have no derivative formulas of their own; their autograd
(stn_cuda/_ops.py) differentiates this reference where no closed form with the fast
ops exists. It runs only for double backward, never for the forward or first backward.

Images (N, C, H, W) and volumes (N, C, D, H, W) alike: each axis is padded on its own,
the taps are the corners of a square or cube (bicubic is for images only, as in torch).
It follows csrc/sampler_math.h (and ATen) step by step, conventions included:
- padding gradients as ATen's: clipping passes gradient 0 at and beyond the borders,
  each reflection flips its sign;
- a point with a non-finite coordinate samples 0 and passes no gradient;
- huge coordinates are safe: positions become indices only where they lie inside;
- bicubic is ATen's: cubic convolution with A = -0.75 over 4 x 4 taps, the padding
  applied to each tap's position, the gradient through the weights alone.
Gathers read the taps; their backward scatters, so every derivative is autograd's.
"""
import functools
import math
import operator

import torch

BILINEAR, NEAREST, BICUBIC = 0, 1, 2
ZEROS, BORDER, REFLECTION = 0, 1, 2
CUBIC_A = -0.75


# -- normalised coordinate -> pixel, with the padding rule -------------------------------

def unnormalize(coord, size, align_corners):
    if align_corners:
        return ((coord + 1) / 2) * (size - 1)
    return ((coord + 1) * size - 1) / 2


def clip(p, size):
    """Clamp to [0, size - 1]; the borders themselves count as clipped (gradient 0)."""
    inside = (p > 0) & (p < size - 1)
    return torch.where(inside, p, p.detach().clamp(0, size - 1))


def reflect(p, twice_low, twice_high):
    """Reflect into [twice_low / 2, twice_high / 2]; the flips' parity in floating point."""
    if twice_low == twice_high:
        return p * 0
    low = twice_low / 2
    span = (twice_high - twice_low) / 2
    inside = p - low
    inside = torch.where(inside < 0, -inside, inside)
    extra = torch.fmod(inside, span)
    odd_flips = torch.fmod(torch.floor(inside.detach() / span), 2) != 0
    return torch.where(odd_flips, span - extra + low, extra + low)


def pad(p, size, padding_mode, align_corners):
    """A pixel position after the padding rule (unchanged for zeros)."""
    if padding_mode == BORDER:
        return clip(p, size)
    if padding_mode == REFLECTION:
        p = reflect(p, 0, 2 * (size - 1)) if align_corners else reflect(p, -1, 2 * size - 1)
        return clip(p, size)
    return p


def clamp_pixel(p, size):
    """As the kernels do: NaN -> -2, and only points wholly outside move, so that their
    (zero) contribution is unchanged and their position stays finite."""
    # size + 1, a little more where p's dtype cannot hold it (it can round down into the image)
    high = float(size + 1 + int(size * torch.finfo(p.dtype).eps / 2))
    p = torch.where(p >= -2, p, -2.0)
    return torch.where(p <= high, p, high)


# -- reading taps --------------------------------------------------------------------------

def reader(planes, sizes):
    """read(*positions): planes (N, C, prod(sizes)) at integral pixel positions (N, 1, P), one
    per axis in the grid's order x, y[, z] as sizes (W, H[, D]); 0 where a position lies
    outside the image (no index is formed for those)."""
    n, c, _ = planes.shape

    def read(*positions):
        positions = [p.double() for p in positions]  # size - 1 would round in float32 past 2**24
        inside = functools.reduce(operator.and_, ((p >= 0) & (p <= size - 1)
                                                  for p, size in zip(positions, sizes)))
        index, stride = 0, 1
        for p, size in zip(positions, sizes):  # x is the fastest axis in memory
            index = index + torch.where(inside, p, 0).long() * stride
            stride *= size
        return torch.where(inside, planes.gather(2, index.expand(n, c, -1)), 0)

    return read


# -- the three interpolations, on normalised coordinates (N, 1, P) each -> (N, C, P) --------------

def bilinear_or_nearest(read, coords, sizes, interpolation_mode, padding_mode, align_corners):
    """Bilinear (trilinear for a volume) or nearest at coords (x, y[, z]), sizes (W, H[, D])."""
    positions = [clamp_pixel(pad(unnormalize(g, size, align_corners), size, padding_mode, align_corners), size)
                 for g, size in zip(coords, sizes)]
    if interpolation_mode == NEAREST:  # rounding halves to even, as the kernels; no gradient to the grid
        return read(*(torch.round(p.detach()) for p in positions))
    lows = [torch.floor(p.detach()) for p in positions]
    fractions = [p - p0 for p, p0 in zip(positions, lows)]
    weights = [(1 - f, f) for f in fractions]  # written as ATen's CPU kernel writes them
    out = 0
    # ATen's order: corner k has offset (k >> axis) & 1 along each axis, x fastest (nw, ne, sw,
    # se, then the bottom layer's), its weight the product w_x * w_y [* w_z] in that order.
    for k in range(2 ** len(positions)):
        offsets = [(k >> axis) & 1 for axis in range(len(positions))]
        weight = functools.reduce(operator.mul, (w[o] for w, o in zip(weights, offsets)))
        # In float64: p0 + 1 would round in float32 past 2**24 (the kernels add in integers)
        out = out + read(*(p0.double() + o for p0, o in zip(lows, offsets))) * weight
    return out


def cubic_weights(t):
    """ATen's get_cubic_upsample_coefficients: the weights of taps -1, 0, 1, 2 at offset t."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    s = 1 - t
    return far(t + 1), near(t), near(s), far(s + 1)


def bicubic(read, coords, sizes, padding_mode, align_corners):
    """Bicubic at coords (x, y) of an image of sizes (W, H)."""
    (gx, gy), (width, height) = coords, sizes
    # The position itself is not padded (ATen: the taps' directions would break at a border).
    x, y = unnormalize(gx, width, align_corners), unnormalize(gy, height, align_corners)
    # A position that overflowed to infinity: no taps, as for a non-finite coordinate.
    finite = torch.isfinite(x) & torch.isfinite(y)
    x, y = torch.where(finite, x, 0), torch.where(finite, y, 0)
    x0, y0 = torch.floor(x.detach()), torch.floor(y.detach())
    wx, wy = cubic_weights(x - x0), cubic_weights(y - y0)
    taps_x = [pad(x0 + (i - 1), width, padding_mode, align_corners) for i in range(4)]
    taps_y = [pad(y0 + (j - 1), height, padding_mode, align_corners) for j in range(4)]
    out = 0
    for j in range(4):  # ATen's order: each row interpolated along x, then the rows along y
        row = 0
        for i in range(4):
            row = row + read(taps_x[i], taps_y[j]) * wx[i]
        out = out + row * wy[j]
    return torch.where(finite, out, 0)


def grid_sample(input, grid, interpolation_mode=BILINEAR, padding_mode=ZEROS, align_corners=False):
    """stn_cuda.grid_sample with the ops' integer codes: input (N, C, [D,] H, W) sampled at
    grid (N, [D_out,] H_out, W_out, 2 or 3). Computed in float32 at least (as the kernels
    accumulate); the result has input's dtype."""
    n, c, *spatial = input.shape
    out_spatial, dims = grid.shape[1:-1], grid.shape[-1]
    if interpolation_mode == BICUBIC and dims != 2:
        raise ValueError("bicubic interpolation is for 4-D input only")
    dtype = torch.promote_types(torch.promote_types(input.dtype, grid.dtype), torch.float32)
    planes = input.to(dtype).reshape(n, c, math.prod(spatial))
    points = grid.to(dtype).reshape(n, 1, math.prod(out_spatial), dims)
    finite = torch.isfinite(points).all(-1)
    points = torch.where(finite[..., None], points, 0)  # no NaN reaches the arithmetic or its gradient
    coords, sizes = points.unbind(-1), spatial[::-1]  # both in the grid's order x, y[, z]
    read = reader(planes, sizes)
    if interpolation_mode == BICUBIC:
        out = bicubic(read, coords, sizes, padding_mode, align_corners)
    else:
        out = bilinear_or_nearest(read, coords, sizes, interpolation_mode, padding_mode, align_corners)
    out = torch.where(finite, out, 0)
    return out.reshape(n, c, *out_spatial).to(input.dtype)

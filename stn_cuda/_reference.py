"""stn_cuda's sampler in plain, differentiable torch ops: what the kernels compute, in a
form that autograd can differentiate twice.

The kernels' backward ops have no derivative formulas of their own; their autograd
(stn_cuda/_ops.py) differentiates this reference where no closed form with the fast
ops exists. It runs only for double backward, never for the forward or first backward.

It follows csrc/sampler_math.h (and ATen) step by step, conventions included:
- padding gradients as ATen's: clipping passes gradient 0 at and beyond the borders,
  each reflection flips its sign;
- a point with a non-finite coordinate samples 0 and passes no gradient;
- huge coordinates are safe: positions become indices only where they lie inside;
- bicubic is ATen's: cubic convolution with A = -0.75 over 4 x 4 taps, the padding
  applied to each tap's position, the gradient through the weights alone.
Gathers read the taps; their backward scatters, so every derivative is autograd's.
"""
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
    p = torch.where(p >= -2, p, -2.0)
    return torch.where(p <= size + 1, p, float(size + 1))


# -- reading taps --------------------------------------------------------------------------

def reader(planes, height, width):
    """read(ix, iy): planes (N, C, H * W) at integral pixel positions ix, iy (N, 1, P),
    0 where a position lies outside the image (no index is formed for those)."""
    n, c, _ = planes.shape

    def read(ix, iy):
        inside = (ix >= 0) & (ix <= width - 1) & (iy >= 0) & (iy <= height - 1)
        index = torch.where(inside, iy, 0).long() * width + torch.where(inside, ix, 0).long()
        return torch.where(inside, planes.gather(2, index.expand(n, c, -1)), 0)

    return read


# -- the three interpolations, on pixel coordinates (N, 1, P) -> (N, C, P) ------------------------

def bilinear_or_nearest(read, gx, gy, height, width, interpolation_mode, padding_mode, align_corners):
    x = clamp_pixel(pad(unnormalize(gx, width, align_corners), width, padding_mode, align_corners), width)
    y = clamp_pixel(pad(unnormalize(gy, height, align_corners), height, padding_mode, align_corners), height)
    if interpolation_mode == NEAREST:  # rounding halves to even, as the kernels; no gradient to the grid
        return read(torch.round(x.detach()), torch.round(y.detach()))
    x0, y0 = torch.floor(x.detach()), torch.floor(y.detach())
    wx = ((x0 + 1) - x, x - x0)  # written as ATen writes them
    wy = ((y0 + 1) - y, y - y0)
    out = 0
    for k in range(4):  # ATen's order: nw, ne, sw, se
        i, j = k & 1, k >> 1
        out = out + read(x0 + i, y0 + j) * (wx[i] * wy[j])
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


def bicubic(read, gx, gy, height, width, padding_mode, align_corners):
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
    """stn_cuda.grid_sample with the ops' integer codes: input (N, C, H, W) sampled at
    grid (N, H_out, W_out, 2). Computed in float32 at least (as the kernels accumulate);
    the result has input's dtype."""
    n, c, height, width = input.shape
    _, h_out, w_out, _ = grid.shape
    dtype = torch.promote_types(torch.promote_types(input.dtype, grid.dtype), torch.float32)
    planes = input.to(dtype).reshape(n, c, height * width)
    points = grid.to(dtype).reshape(n, 1, h_out * w_out, 2)
    finite = torch.isfinite(points).all(-1)
    points = torch.where(finite[..., None], points, 0)  # no NaN reaches the arithmetic or its gradient
    gx, gy = points[..., 0], points[..., 1]
    read = reader(planes, height, width)
    if interpolation_mode == BICUBIC:
        out = bicubic(read, gx, gy, height, width, padding_mode, align_corners)
    else:
        out = bilinear_or_nearest(read, gx, gy, height, width, interpolation_mode, padding_mode,
                                  align_corners)
    out = torch.where(finite, out, 0)
    return out.reshape(n, c, h_out, w_out).to(input.dtype)

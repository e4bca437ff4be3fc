// The per-point math of the spatial transformer's grid generator and sampler.
//
// Every function here is C10_HOST_DEVICE: the CPU kernels (cpu/) and the CUDA
// kernels (cuda/) call exactly the same code, so a CPU test exercises the
// arithmetic the GPU runs. The formulas follow ATen's grid sampler step by step
// (unnormalise, then clip or reflect), so results agree with
// torch.nn.functional.grid_sample / affine_grid to the last bits in float64.
//
// Conventions: "coordinate" means the normalised grid value in [-1, 1];
// "pixel" means a position in input index space. Dual<T> carries a value with
// its derivative with respect to the normalised coordinate.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

// Inlined everywhere: the kernels are loops around these few lines.
#define STN_HD C10_HOST_DEVICE C10_ALWAYS_INLINE
#ifdef __CUDACC__
#define STN_UNROLL _Pragma("unroll")
#else
#define STN_UNROLL
#endif

namespace stn {

// Same numbering as ATen's GridSamplerInterpolation / GridSamplerPadding.
enum class Interpolation : int64_t { Bilinear = 0, Nearest = 1, Bicubic = 2 };
enum class Padding : int64_t { Zeros = 0, Border = 1, Reflection = 2 };

namespace math {
#ifdef __CUDA_ARCH__
template <typename T> __device__ inline T floor(T x) { return ::floor(x); }
template <typename T> __device__ inline T fmod(T x, T y) { return ::fmod(x, y); }
template <typename T> __device__ inline bool isfinite(T x) { return ::isfinite(x); }
#else
template <typename T> inline T floor(T x) { return std::floor(x); }
template <typename T> inline T fmod(T x, T y) { return std::fmod(x, y); }
template <typename T> inline bool isfinite(T x) { return std::isfinite(x); }
#endif
}  // namespace math

template <typename T>
struct Dual {
  T val;
  T grad;  // d val / d coordinate
};

// ---------------------------------------------------------------------------
// Grid generator: the normalised target coordinate of output pixel i along an
// axis of `size` pixels, as torch.nn.functional.affine_grid lays it out
// (torch.linspace(-1, 1, size), scaled by (size - 1) / size when
// align_corners=False; 0 for a single pixel).
template <typename T>
STN_HD T target_coordinate(int64_t i, int64_t size, bool align_corners) {
  if (size <= 1) return T(0);
  const T step = T(2) / T(size - 1);
  // linspace fills its two halves from opposite ends, so it is symmetric.
  T v = (i < size / 2) ? T(-1) + step * T(i) : T(1) - step * T(size - 1 - i);
  if (!align_corners) v = v * T(size - 1) / T(size);
  return v;
}

// (x_s, y_s) = theta . (x_t, y_t, 1), theta a row-major 2x3 matrix.
template <typename T>
struct Point2 {
  T x, y;
};
template <typename T>
STN_HD Point2<T> apply_affine(const T* theta, T xt, T yt) {
  return {theta[0] * xt + theta[1] * yt + theta[2],
          theta[3] * xt + theta[4] * yt + theta[5]};
}

// ---------------------------------------------------------------------------
// Sampler, step 1: normalised coordinate -> pixel, with the padding rule.

// align_corners: -1 and +1 are the centres of the corner pixels, 0 and size-1.
// otherwise:     -1 and +1 are the outer edges of the image, -0.5 and size-0.5.
template <typename T>
STN_HD Dual<T> unnormalize(T coord, int64_t size, bool align_corners) {
  if (align_corners) return {((coord + T(1)) / T(2)) * T(size - 1), T(size - 1) / T(2)};
  return {((coord + T(1)) * T(size) - T(1)) / T(2), T(size) / T(2)};
}

// Clamp to [0, size - 1]. The borders themselves count as clipped (gradient 0),
// as in ATen.
template <typename T>
STN_HD Dual<T> clip(Dual<T> p, int64_t size) {
  const T hi = T(size - 1);
  if (p.val <= T(0)) return {T(0), T(0)};
  if (p.val >= hi) return {hi, T(0)};
  return p;
}

// Reflect into [twice_low / 2, twice_high / 2]. Bounds come doubled so that the
// half-pixel edges of align_corners=False stay integers. The parity of the
// number of flips is taken in floating point, so huge coordinates are safe.
template <typename T>
STN_HD Dual<T> reflect(Dual<T> p, int64_t twice_low, int64_t twice_high) {
  if (twice_low == twice_high) return {T(0), T(0)};
  const T low = T(twice_low) / T(2);
  const T span = T(twice_high - twice_low) / T(2);
  T in = p.val - low;
  T grad = p.grad;
  if (in < T(0)) {
    in = -in;
    grad = -grad;
  }
  const T extra = math::fmod(in, span);
  const bool odd_flips = math::fmod(math::floor(in / span), T(2)) != T(0);
  if (odd_flips) return {span - extra + low, -grad};
  return {extra + low, grad};
}

template <typename T>
STN_HD Dual<T> source_pixel(T coord, int64_t size, Padding padding, bool align_corners) {
  Dual<T> p = unnormalize(coord, size, align_corners);
  if (padding == Padding::Border) {
    p = clip(p, size);
  } else if (padding == Padding::Reflection) {
    p = align_corners ? reflect(p, 0, 2 * (size - 1)) : reflect(p, -1, 2 * size - 1);
    p = clip(p, size);
  }
  return p;
}

// ---------------------------------------------------------------------------
// Sampler, step 2: the four neighbours of a source point and their weights.
//
// A point with a non-finite coordinate is invalid: it reads nothing (value 0)
// and receives and passes on no gradient. Pixel positions are clamped to
// [-2, size + 1] before the integer conversion; that only moves points that
// are entirely outside the image, so their (zero) contribution is unchanged
// and no float-to-int conversion can overflow.
template <typename T>
struct Bilinear {
  int64_t x0, y0;  // north-west neighbour; x0 + 1, y0 + 1 are east and south
  T wx[2], wy[2];  // weights of the west/east columns and north/south rows
  T dx, dy;        // d pixel / d coordinate (zero where padding clips)
  bool valid;
};

template <typename T>
STN_HD T clamp_pixel(T p, int64_t size) {
  return p < T(-2) ? T(-2) : (p > T(size + 1) ? T(size + 1) : p);
}

template <typename T>
STN_HD Bilinear<T> bilinear_point(T gx, T gy, int64_t H, int64_t W, Padding padding,
                                  bool align_corners) {
  Bilinear<T> b;
  const Dual<T> px = source_pixel(gx, W, padding, align_corners);
  const Dual<T> py = source_pixel(gy, H, padding, align_corners);
  b.valid = math::isfinite(gx) && math::isfinite(gy) && math::isfinite(px.val) &&
            math::isfinite(py.val);
  const T x = b.valid ? clamp_pixel(px.val, W) : T(-2);
  const T y = b.valid ? clamp_pixel(py.val, H) : T(-2);
  // floor of a value >= -2, by truncation: one instruction on any CPU.
  b.x0 = static_cast<int64_t>(x + T(2)) - 2;
  b.y0 = static_cast<int64_t>(y + T(2)) - 2;
  const T x0 = static_cast<T>(b.x0);
  const T y0 = static_cast<T>(b.y0);
  // Written as ATen writes them, e.g. w_west = x_east - x.
  b.wx[0] = (x0 + T(1)) - x;
  b.wx[1] = x - x0;
  b.wy[0] = (y0 + T(1)) - y;
  b.wy[1] = y - y0;
  b.dx = b.valid ? px.grad : T(0);
  b.dy = b.valid ? py.grad : T(0);
  return b;
}

STN_HD bool within_bounds(int64_t y, int64_t x, int64_t H, int64_t W) {
  return y >= 0 && y < H && x >= 0 && x < W;
}

// A strided (N, C, H, W) view of a tensor's storage.
template <typename scalar_t>
struct Image {
  scalar_t* data;
  int64_t N, C, H, W;
  int64_t sN, sC, sH, sW;

  STN_HD scalar_t* plane(int64_t n, int64_t c) const { return data + n * sN + c * sC; }
  STN_HD int64_t offset(int64_t y, int64_t x) const { return y * sH + x * sW; }
};

// ---------------------------------------------------------------------------
// Sampler, step 3: the forward value of one point for channels [c0, c1), and
// its backward: grad_input is scattered through `add(n, c, y, x, value)` (a
// plain add on the CPU, an atomic add on the GPU) and the gradient with respect
// to the point's normalised coordinates is returned.
//
// The neighbours are visited in ATen's order: nw, ne, sw, se (k = 0..3 with
// column k & 1 and row k >> 1).

template <typename acc_t, typename scalar_t, typename out_t>
STN_HD void bilinear_forward(const Image<const scalar_t>& in, const Image<out_t>& out,
                             int64_t n, int64_t out_offset, const Bilinear<acc_t>& b,
                             int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    const scalar_t* plane = in.plane(n, c);
    acc_t v = acc_t(0);
STN_UNROLL
    for (int k = 0; k < 4; ++k) {
      const int64_t x = b.x0 + (k & 1), y = b.y0 + (k >> 1);
      if (b.valid && within_bounds(y, x, in.H, in.W)) {
        v += static_cast<acc_t>(plane[in.offset(y, x)]) * (b.wx[k & 1] * b.wy[k >> 1]);
      }
    }
    out.plane(n, c)[out_offset] = static_cast<out_t>(v);
  }
}

template <typename acc_t, typename scalar_t, typename AddFn>
STN_HD Point2<acc_t> bilinear_backward(const Image<const scalar_t>& grad_out,
                                         int64_t out_offset, const Image<const scalar_t>& in,
                                         int64_t n, const Bilinear<acc_t>& b, int64_t c0,
                                         int64_t c1, bool need_input_grad,
                                         bool need_grid_grad, AddFn&& add) {
  acc_t gx = acc_t(0), gy = acc_t(0);
  if (!b.valid) return {gx, gy};
  for (int64_t c = c0; c < c1; ++c) {
    const acc_t g = static_cast<acc_t>(grad_out.plane(n, c)[out_offset]);
    const scalar_t* plane = in.plane(n, c);
STN_UNROLL
    for (int k = 0; k < 4; ++k) {
      const int ix = k & 1, iy = k >> 1;
      const int64_t x = b.x0 + ix, y = b.y0 + iy;
      if (!within_bounds(y, x, in.H, in.W)) continue;
      if (need_input_grad) add(n, c, y, x, g * (b.wx[ix] * b.wy[iy]));
      if (need_grid_grad) {
        const acc_t v = static_cast<acc_t>(plane[in.offset(y, x)]) * g;
        // d weight / d x is -wy for the west column and +wy for the east one.
        gx += ix ? v * b.wy[iy] : -(v * b.wy[iy]);
        gy += iy ? v * b.wx[ix] : -(v * b.wx[ix]);
      }
    }
  }
  return {gx * b.dx, gy * b.dy};
}

// ---------------------------------------------------------------------------
// Where the sampler's source points come from: a grid tensor (grid_sample) or
// theta, generating each point on the fly (affine_sample, the fused path that
// never materialises the grid).

// grid (N, H_out, W_out, 2), any strides.
template <typename scalar_t>
struct TensorGrid {
  const scalar_t* data;
  int64_t sN, sH, sW, sXY;

  template <typename acc_t>
  STN_HD Point2<acc_t> point(int64_t n, int64_t h, int64_t w) const {
    const scalar_t* p = data + n * sN + h * sH + w * sW;
    return {static_cast<acc_t>(p[0]), static_cast<acc_t>(p[sXY])};
  }
};

// theta (N, 2, 3), contiguous, in the accumulation type.
template <typename acc_t>
struct ThetaGrid {
  const acc_t* theta;
  int64_t H_out, W_out;
  bool align_corners;

  STN_HD acc_t xt(int64_t w) const { return target_coordinate<acc_t>(w, W_out, align_corners); }
  STN_HD acc_t yt(int64_t h) const { return target_coordinate<acc_t>(h, H_out, align_corners); }

  template <typename T>
  STN_HD Point2<T> point(int64_t n, int64_t h, int64_t w) const {
    return apply_affine<acc_t>(theta + 6 * n, xt(w), yt(h));
  }
};

// d loss / d theta of one batch element, summed over its points:
// d (x_s, y_s) / d theta = [[x_t, y_t, 1, 0, 0, 0], [0, 0, 0, x_t, y_t, 1]].
template <typename acc_t>
struct ThetaGradSum {
  acc_t v[6] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};

  STN_HD void add(acc_t xt, acc_t yt, Point2<acc_t> g) {
    v[0] += g.x * xt;
    v[1] += g.x * yt;
    v[2] += g.x;
    v[3] += g.y * xt;
    v[4] += g.y * yt;
    v[5] += g.y;
  }
};

}  // namespace stn

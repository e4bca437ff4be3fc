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
#include <limits>
#include <type_traits>

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

// The options of grid_sample, as the kernels receive them.
struct Sampling {
  Interpolation interpolation;
  Padding padding;
  bool align_corners;
};

namespace math {
#ifdef __CUDA_ARCH__
template <typename T> __device__ inline T floor(T x) { return ::floor(x); }
template <typename T> __device__ inline T fmod(T x, T y) { return ::fmod(x, y); }
#else
template <typename T> inline T floor(T x) { return std::floor(x); }
template <typename T> inline T fmod(T x, T y) { return std::fmod(x, y); }
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

// Below this distance from the reflection's low edge, in pixels, reflect()
// reduces a position by exact arithmetic alone (2^21 for float, 2^50 for double).
template <typename T>
STN_HD constexpr T exact_reduction_limit() {
  return T(1) / (T(4) * std::numeric_limits<T>::epsilon());
}

// Whether a coordinate reflects off an axis of `size` pixels within that limit
// (false for NaN and infinities), with a pixel to spare for rounding.
template <typename T>
STN_HD bool reflects_exactly(T coord, int64_t size) {
  const T bound = exact_reduction_limit<T>() / T(size + 1) - T(1);
  return coord > -bound && coord < bound;
}

// Reflect into [twice_low / 2, twice_high / 2]. Bounds come doubled so that the
// half-pixel edges of align_corners=False stay integers. The result is ATen's:
// extra = fmod(in, span), flipped if floor(in / span) is odd.
//
// Below exact_reduction_limit (in < 2^(digits - 3), span a multiple of 1/2),
// fmod needs no call: q = floor(in / span) is the quotient (or, should the
// division round up to an integer, one more; never less), q * span and
// in - q * span are exact, and in the second case adding span back is exact
// too, fmod's result being representable. With kBounded, every point takes
// this path (the caller has checked reflects_exactly: the CPU kernels' loops
// vectorise only without the call); farther out, fmod itself. The parity is
// taken in floating point either way, so that huge coordinates are safe.
template <bool kBounded = false, typename T>
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
  const T flips = math::floor(in / span);
  T extra;
  if (kBounded || in < exact_reduction_limit<T>()) {
    extra = in - flips * span;
    extra = extra < T(0) ? extra + span : extra;
  } else {
    extra = math::fmod(in, span);
  }
  const bool odd_flips = flips - T(2) * math::floor(flips * T(0.5)) != T(0);
  if (odd_flips) return {span - extra + low, -grad};
  return {extra + low, grad};
}

// The padding rule applied to a pixel position (ATen's compute_coordinates):
// border clips it into the image; reflection reflects it off the image's edges,
// then clips it (against rounding); zeros leaves it where it is.
template <bool kBounded = false, typename T>
STN_HD Dual<T> pad(Dual<T> p, int64_t size, Padding padding, bool align_corners) {
  if (padding == Padding::Border) {
    p = clip(p, size);
  } else if (padding == Padding::Reflection) {
    p = align_corners ? reflect<kBounded>(p, 0, 2 * (size - 1))
                      : reflect<kBounded>(p, -1, 2 * size - 1);
    p = clip(p, size);
  }
  return p;
}

template <bool kBounded = false, typename T>
STN_HD Dual<T> source_pixel(T coord, int64_t size, Padding padding, bool align_corners) {
  return pad<kBounded>(unnormalize(coord, size, align_corners), size, padding, align_corners);
}

// ---------------------------------------------------------------------------
// Sampler, step 2: the four neighbours of a source point and their weights.
//
// Written without branches, so that the CPU kernels' loops over a run of
// points vectorise. A point with a non-finite coordinate gets a NaN pixel
// position (even where border padding would clip it back into the image),
// which clamp_pixel sends to -2: all four neighbours then lie outside, so the
// point reads nothing and passes no gradient. Clamping to [-2, size + 1] (a
// little more past 2^digits) only moves points that are entirely outside the
// image, so their (zero) contribution is unchanged and no float-to-int
// conversion can overflow.
template <typename T, typename index_t>
struct Bilinear {
  index_t x0, y0;  // north-west neighbour; x0 + 1, y0 + 1 are east and south
  T wx[2], wy[2];  // weights of the west/east columns and north/south rows
  T dx, dy;        // d pixel / d coordinate (zero where padding clips)
};

template <typename T>
STN_HD T clamp_pixel(T p, int64_t size) {
  // size + 1, or a little more where T cannot hold it: T(size + 1) alone can
  // round down into the image past 2^digits (to size - 3 at 2^26 + 3 pixels),
  // and points past the edge would read the last pixels.
  const T high = static_cast<T>(size + 1 + (size >> std::numeric_limits<T>::digits));
  p = p >= T(-2) ? p : T(-2);  // NaN fails the comparison: -2
  return p <= high ? p : high;
}

// floor(p) for a pixel position p >= -2 (as clamp_pixel leaves it), without a
// branch or a call: truncation toward zero (one instruction on any CPU), less
// one where that moved p up (p negative, not an integer). T(i) is exact: below
// 2^(digits) every integer is a T, and above it p is an integer already.
template <typename index_t, typename T>
STN_HD index_t floor_pixel(T p) {
  const index_t i = static_cast<index_t>(p);
  return i - static_cast<index_t>(static_cast<T>(i) > p);
}

// nearbyint(p) for a pixel position p >= -2 (as clamp_pixel leaves it),
// without a call (the baseline x86-64 has no rounding instruction): p + shift
// lies where T's spacing is 1, so the addition rounds p to an integer, halves
// to even (in the default rounding mode, as nearbyint there), and subtracting
// shift again is exact. From 2^(digits - 1) on, p is an integer already.
template <typename index_t, typename T>
STN_HD index_t round_pixel(T p) {
  constexpr T kIntegral = T(1) / std::numeric_limits<T>::epsilon();  // 2^(digits - 1)
  // p + shift in [kIntegral, 2 * kIntegral] (the top only where p rounds up to it).
  const T shift = p < kIntegral / T(2) ? T(1.5) * kIntegral : kIntegral;
  return static_cast<index_t>(p < kIntegral ? (p + shift) - shift : p);
}

// One axis of a source point: its lower neighbour, the weights of the lower
// and upper neighbours and d pixel / d coordinate. The weights are written as
// ATen's CPU kernel writes them: w_east = x - x_west, w_west = 1 - w_east.
// Its CUDA kernel's w_west = x_east - x is the same number, except where
// x_east = x_west + 1 rounds (float32 past 2^24 columns: w_west is 0 there, or
// 2 at every other column below 2^25) and where x is in (-1, 0), whose west
// pixel, -1, is outside.
// `not_finite` is NaN when any coordinate of the point is, else 0: it sends
// the point outside. kBounded: see reflect.
template <typename T, typename index_t>
struct Linear {
  index_t i0;
  T w[2];
  T d;
};

template <typename index_t, bool kBounded = false, typename T>
STN_HD Linear<T, index_t> linear_axis(T coord, T not_finite, int64_t size, Padding padding,
                                      bool align_corners) {
  const Dual<T> p = source_pixel<kBounded>(coord, size, padding, align_corners);
  const T v = clamp_pixel(p.val + not_finite, size);
  Linear<T, index_t> a;
  a.i0 = floor_pixel<index_t>(v);
  a.w[1] = v - static_cast<T>(a.i0);
  a.w[0] = T(1) - a.w[1];
  a.d = p.grad;
  return a;
}

template <typename index_t, bool kBounded = false, typename T>
STN_HD Bilinear<T, index_t> bilinear_point(T gx, T gy, int64_t H, int64_t W, Padding padding,
                                           bool align_corners) {
  const T not_finite = (gx - gx) + (gy - gy);  // 0 for a finite point, else NaN
  const auto x = linear_axis<index_t, kBounded>(gx, not_finite, W, padding, align_corners);
  const auto y = linear_axis<index_t, kBounded>(gy, not_finite, H, padding, align_corners);
  return {x.i0, y.i0, {x.w[0], x.w[1]}, {y.w[0], y.w[1]}, x.d, y.d};
}

// i in [0, size), with one comparison.
template <typename index_t>
STN_HD bool in_range(index_t i, index_t size) {
  using unsigned_t = typename std::make_unsigned<index_t>::type;
  return static_cast<unsigned_t>(i) < static_cast<unsigned_t>(size);
}

// The extent and strides of one input plane, in the index type the kernel
// chose (32 bits where the plane allows).
template <typename index_t>
struct Plane {
  index_t H, W, sH, sW;

  // Offset of neighbour k from the north-west one. The neighbours are visited
  // in ATen's order nw, ne, sw, se: k = 0..3, column k & 1, row k >> 1.
  STN_HD index_t neighbour_offset(int k) const { return (k & 1) * sW + (k >> 1) * sH; }
};

// A point's four neighbours in a plane: where they are, which of them lie
// inside the image (the others read as 0 and receive no gradient) and their
// bilinear weights. Computed once per point, used for every channel.
template <typename T, typename index_t>
struct Corners {
  index_t base;    // offset of the north-west neighbour (meaningful only if inside)
  int inside;      // bit k: neighbour k lies inside the image
  T weight[4];
};

template <typename T, typename index_t>
STN_HD Corners<T, index_t> corners(const Bilinear<T, index_t>& b, const Plane<index_t>& plane) {
  // Arithmetic on the 0/1 results rather than && or ?:, so no branches.
  const int columns = in_range(b.x0, plane.W) | in_range<index_t>(b.x0 + 1, plane.W) << 1;
  const int north = columns * in_range(b.y0, plane.H);
  const int south = columns * in_range<index_t>(b.y0 + 1, plane.H);
  Corners<T, index_t> c;
  c.base = b.y0 * plane.sH + b.x0 * plane.sW;  // no overflow: see the kernels' index_t
  c.inside = north | south << 2;
STN_UNROLL
  for (int k = 0; k < 4; ++k) c.weight[k] = b.wx[k & 1] * b.wy[k >> 1];
  return c;
}

// mode="nearest": the neighbour nearest to the point, rounding halves to even
// as nearbyint does, with the whole weight. Along an axis, the point lies at
// i0 + frac (frac: the upper neighbour's weight), and frac = x - i0 is exact
// (but for x in (-0.5, 0), where it may round to 0.5 or 1: i0 = -1 is odd, so
// either gives 0), so this is nearbyint(x) to the bit.
template <typename T, typename index_t>
STN_HD index_t nearest_index(index_t i0, T frac) {
  return i0 + (frac > T(0.5) || (frac == T(0.5) && (i0 & 1)));
}

// Pixel (x, y) as the one neighbour, with the whole weight.
template <typename T, typename index_t>
STN_HD Corners<T, index_t> nearest_corners(index_t x, index_t y, const Plane<index_t>& plane) {
  Corners<T, index_t> c;
  c.base = y * plane.sH + x * plane.sW;
  c.inside = in_range(x, plane.W) & in_range(y, plane.H);
  c.weight[0] = T(1);
  c.weight[1] = c.weight[2] = c.weight[3] = T(0);
  return c;
}

template <typename T, typename index_t>
STN_HD Corners<T, index_t> nearest_corner(const Bilinear<T, index_t>& b,
                                          const Plane<index_t>& plane) {
  return nearest_corners<T>(nearest_index(b.x0, b.wx[1]), nearest_index(b.y0, b.wy[1]), plane);
}

// mode="nearest" from the normalised coordinates: the same neighbour as
// nearest_corner of bilinear_point's result (whose i0 + frac is the clamped
// pixel position, rounded here directly), in fewer steps.
template <typename index_t, bool kBounded = false, typename T>
STN_HD index_t nearest_axis(T coord, T not_finite, int64_t size, Padding padding,
                            bool align_corners) {
  const T p = source_pixel<kBounded>(coord, size, padding, align_corners).val;
  return round_pixel<index_t>(clamp_pixel(p + not_finite, size));
}

template <typename index_t, bool kBounded = false, typename T>
STN_HD Corners<T, index_t> nearest_point(T gx, T gy, const Plane<index_t>& plane, Padding padding,
                                         bool align_corners) {
  const T not_finite = (gx - gx) + (gy - gy);  // as bilinear_point
  // Calls, not a lambda: GCC would not inline one into the CPU's vectorised loops.
  const index_t x =
      nearest_axis<index_t, kBounded>(gx, not_finite, plane.W, padding, align_corners);
  const index_t y =
      nearest_axis<index_t, kBounded>(gy, not_finite, plane.H, padding, align_corners);
  return nearest_corners<T>(x, y, plane);
}

// The neighbours a point reads in the given mode (bilinear or nearest).
template <typename T, typename index_t>
STN_HD Corners<T, index_t> corners(const Bilinear<T, index_t>& b, const Plane<index_t>& plane,
                                   Interpolation interpolation) {
  return interpolation == Interpolation::Nearest ? nearest_corner(b, plane) : corners(b, plane);
}

// ---------------------------------------------------------------------------
// mode="bicubic": the 4 x 4 pixels around a point, weighted by the cubic
// convolution kernel of Keys (1981) with A = -0.75, as ATen's bicubic sampler
// (and its bicubic upsampling) weighs them.
//
// Padding works differently from bilinear: the point is only unnormalised, and
// each of its taps, at the integer positions floor(x) - 1 .. floor(x) + 2, is
// clipped or reflected on its own (ATen's get_value_bounded). Border and
// reflection padding thus extend the image by its edge or mirrored pixels, and
// d pixel / d coordinate is the unnormalisation factor alone.

// The weights of the taps at distances 1 + t, t, 1 - t and 2 - t from the
// point, t in [0, 1), written as ATen's get_cubic_upsampling_coefficients.
template <typename T>
STN_HD void cubic_weights(T t, T (&w)[4]) {
  const T A = T(-0.75);
  auto near = [A](T x) { return ((A + T(2)) * x - (A + T(3))) * x * x + T(1); };      // |x| <= 1
  auto far = [A](T x) { return ((A * x - T(5) * A) * x + T(8) * A) * x - T(4) * A; };  // 1 < |x| < 2
  w[0] = far(t + T(1));
  w[1] = near(t);
  w[2] = near(T(1) - t);
  w[3] = far((T(1) - t) + T(1));
}

// Minus d weight / d t, as ATen's get_cubic_coefficients_grad (whose callers
// subtract it).
template <typename T>
STN_HD void cubic_weight_grads(T t, T (&g)[4]) {
  const T A = T(-0.75);
  T x = T(-1) - t;
  g[0] = (T(-3) * A * x - T(10) * A) * x - T(8) * A;
  x = -t;
  g[1] = (T(-3) * (A + T(2)) * x - T(2) * (A + T(3))) * x;
  x = T(1) - t;
  g[2] = (T(3) * (A + T(2)) * x - T(2) * (A + T(3))) * x;
  x = T(2) - t;
  g[3] = (T(3) * A * x - T(10) * A) * x + T(8) * A;
}

// A tap's index along an axis: its integer position, padded as a float, then
// clamped as clamp_pixel does (an outside tap stays outside; huge positions
// and NaN convert safely) and converted, exactly, as it is an integer.
template <typename index_t, typename T>
STN_HD index_t tap_index(T p, int64_t size, Padding padding, bool align_corners) {
  return static_cast<index_t>(clamp_pixel(pad(Dual<T>{p, T(0)}, size, padding, align_corners).val, size));
}

// The four taps' indices along an axis, x0 - 1 .. x0 + 2 for x0 = floor(x),
// each x0 + (k - 1) in floating point, as ATen forms them: past 2^24 columns
// in float32 they round to even ones, and stay whole numbers. (ATen's CUDA
// kernel forms rows as (y0 - 1) + k, which rounds twice; the same below 2^24.)
// Padding leaves taps inside the image where they are, so the common case of
// four taps inside skips it (and its fmod, for reflection).
template <typename index_t, typename T>
STN_HD void tap_indices(T x0, index_t size, Padding padding, bool align_corners, index_t (&taps)[4]) {
  if (x0 >= T(1) && x0 <= T(size - 3)) {  // false for NaN
STN_UNROLL
    for (int k = 0; k < 4; ++k) taps[k] = static_cast<index_t>(x0 + T(k - 1));
    return;
  }
STN_UNROLL
  for (int k = 0; k < 4; ++k) taps[k] = tap_index<index_t>(x0 + T(k - 1), size, padding, align_corners);
}

// A bicubic point: where its taps are, which of them lie inside the image
// (the others read as 0 and receive no gradient) and their weights. Computed
// once per point, used for every channel.
template <typename T, typename index_t>
struct Bicubic {
  index_t x_offset[4], y_offset[4];  // offsets of the taps' columns and rows
  int inside;                        // bit 4 * j + i: the tap in column i, row j is inside
  T wx[4], wy[4];                    // weights of the columns and rows
  T gx[4], gy[4];                    // minus their derivatives with respect to the pixel
  T dx, dy;                          // d pixel / d coordinate
};

template <typename index_t, typename T>
STN_HD Bicubic<T, index_t> bicubic_point(T gx, T gy, const Plane<index_t>& plane, Padding padding,
                                         bool align_corners) {
  const Dual<T> px = unnormalize(gx, plane.W, align_corners);
  const Dual<T> py = unnormalize(gy, plane.H, align_corners);
  const T x0 = math::floor(px.val), y0 = math::floor(py.val);
  index_t xs[4], ys[4];
  tap_indices(x0, plane.W, padding, align_corners, xs);
  tap_indices(y0, plane.H, padding, align_corners, ys);
  Bicubic<T, index_t> b;
  int columns = 0, rows = 0;
STN_UNROLL
  for (int k = 0; k < 4; ++k) {
    columns |= int(in_range(xs[k], plane.W)) << k;
    rows |= int(in_range(ys[k], plane.H)) << k;
    b.x_offset[k] = xs[k] * plane.sW;
    b.y_offset[k] = ys[k] * plane.sH;
  }
  // A point whose pixel position is not finite (a non-finite coordinate, or a
  // float overflow) reads nothing, and its weights stay finite, so that it
  // samples exactly 0 and passes no gradient.
  const bool finite = (px.val - px.val) + (py.val - py.val) == T(0);
  b.inside = 0;
STN_UNROLL
  for (int j = 0; j < 4; ++j) {
    if (finite && (rows >> j & 1)) b.inside |= columns << (4 * j);
  }
  const T tx = finite ? px.val - x0 : T(0);
  const T ty = finite ? py.val - y0 : T(0);
  cubic_weights(tx, b.wx);
  cubic_weights(ty, b.wy);
  cubic_weight_grads(tx, b.gx);
  cubic_weight_grads(ty, b.gy);
  b.dx = px.grad;
  b.dy = py.grad;
  return b;
}

// The forward value in one channel plane: each row of taps interpolated along
// x, then the four rows along y, summed in ATen's order.
template <typename acc_t, typename scalar_t, typename index_t>
STN_HD acc_t bicubic_interpolate(const scalar_t* data, const Bicubic<acc_t, index_t>& b) {
  auto tap = [&](int i, int j) {
    return b.inside >> (4 * j + i) & 1 ? static_cast<acc_t>(data[b.y_offset[j] + b.x_offset[i]])
                                       : acc_t(0);
  };
  auto row = [&](int j) {
    return tap(0, j) * b.wx[0] + tap(1, j) * b.wx[1] + tap(2, j) * b.wx[2] + tap(3, j) * b.wx[3];
  };
  return row(0) * b.wy[0] + row(1) * b.wy[1] + row(2) * b.wy[2] + row(3) * b.wy[3];
}

// The backward in one channel plane, as interpolate_backward: scatters into
// grad_input through `add` and accumulates d loss / d pixel into `grad`, to be
// scaled by (dx, dy) after the last channel. The taps go in ATen's order
// (column-major); an outside tap reads 0 and would add 0 to `grad`.
template <typename acc_t, typename scalar_t, typename index_t, typename AddFn>
STN_HD void bicubic_backward(const scalar_t* data, acc_t grad_out, const Bicubic<acc_t, index_t>& b,
                             bool need_input_grad, bool need_grid_grad, AddFn&& add,
                             Point2<acc_t>& grad) {
STN_UNROLL
  for (int i = 0; i < 4; ++i) {
STN_UNROLL
    for (int j = 0; j < 4; ++j) {
      if (!(b.inside >> (4 * j + i) & 1)) continue;
      const index_t offset = b.y_offset[j] + b.x_offset[i];
      if (need_input_grad) add(offset, grad_out * b.wx[i] * b.wy[j]);
      if (need_grid_grad) {
        const acc_t v = static_cast<acc_t>(data[offset]);
        grad.x -= v * b.gx[i] * b.wy[j] * grad_out;
        grad.y -= v * b.gy[j] * b.wx[i] * grad_out;
      }
    }
  }
}

// A strided (N, C, H, W) view of a tensor's storage.
template <typename scalar_t>
struct Image {
  scalar_t* data;
  int64_t N, C, H, W;
  int64_t sN, sC, sH, sW;

  STN_HD scalar_t* plane(int64_t n, int64_t c) const { return data + n * sN + c * sC; }
  STN_HD int64_t offset(int64_t y, int64_t x) const { return y * sH + x * sW; }
  template <typename index_t>
  STN_HD Plane<index_t> plane_shape() const {
    return {static_cast<index_t>(H), static_cast<index_t>(W), static_cast<index_t>(sH),
            static_cast<index_t>(sW)};
  }
};

// ---------------------------------------------------------------------------
// Sampler, step 3, for one point in one channel plane: the forward value, and
// the backward, which scatters into grad_input through `add(offset, value)` (a
// plain add on the CPU, an atomic add on the GPU) and accumulates the gradient
// with respect to the point's pixel position into `grad`. The caller scales
// that by (dx, dy) once, after the last channel.

// f(k) for each neighbour k of a point that lies inside the image, in order
// (the common case, all four, without a test per neighbour).
template <typename T, typename index_t, typename F>
STN_HD void for_each_inside(const Corners<T, index_t>& c, F&& f) {
  if (c.inside == 0xf) {
STN_UNROLL
    for (int k = 0; k < 4; ++k) f(k);
    return;
  }
STN_UNROLL
  for (int k = 0; k < 4; ++k) {
    if (c.inside >> k & 1) f(k);
  }
}

// Adds to grad (d loss / d pixel) neighbour k's share, v its value times
// grad_output: d weight / d x is -wy for the west column and +wy for the east
// one, and d weight / d y likewise.
template <typename T, typename index_t>
STN_HD void add_neighbour_grad(Point2<T>& grad, const Bilinear<T, index_t>& b, int k, T v) {
  const int ix = k & 1, iy = k >> 1;
  grad.x += ix ? v * b.wy[iy] : -(v * b.wy[iy]);
  grad.y += iy ? v * b.wx[ix] : -(v * b.wx[ix]);
}

template <typename acc_t, typename scalar_t, typename index_t>
STN_HD acc_t interpolate(const scalar_t* data, const Corners<acc_t, index_t>& c,
                         const Plane<index_t>& plane) {
  auto term = [&](int k) {
    return static_cast<acc_t>(data[c.base + plane.neighbour_offset(k)]) * c.weight[k];
  };
  if (c.inside == 0xf) return term(0) + term(1) + term(2) + term(3);  // the common case
  if (c.inside == 0) return acc_t(0);
  // -0.0 + x is x, -0.0 included: a nearest point's value keeps its sign, as in torch.
  acc_t v = -acc_t(0);
STN_UNROLL
  for (int k = 0; k < 4; ++k) {
    if (c.inside >> k & 1) v += term(k);
  }
  return v;
}

template <typename acc_t, typename scalar_t, typename index_t, typename AddFn>
STN_HD void interpolate_backward(const scalar_t* data, acc_t grad_out,
                                 const Corners<acc_t, index_t>& c, const Bilinear<acc_t, index_t>& b,
                                 const Plane<index_t>& plane, bool need_input_grad,
                                 bool need_grid_grad, AddFn&& add, Point2<acc_t>& grad) {
  for_each_inside(c, [&](int k) {
    const index_t offset = c.base + plane.neighbour_offset(k);
    if (need_input_grad) add(offset, grad_out * c.weight[k]);
    if (need_grid_grad) add_neighbour_grad(grad, b, k, static_cast<acc_t>(data[offset]) * grad_out);
  });
}

// The same for V adjacent channels at once (a channels_last input, whose
// channels of one pixel lie side by side: the CUDA kernels' channel vectors).
// load(offset, values) reads the V channels of the pixel at `offset` into
// values[0..V), add(offset, values) adds V values into grad_input's. Each
// channel's value is the sum of the same terms in the same order as
// interpolate's; the backward's gradient with respect to the pixel sums them
// corner by corner rather than channel by channel.
template <int V, typename acc_t, typename index_t, typename LoadFn>
STN_HD void interpolate_channels(LoadFn&& load, const Corners<acc_t, index_t>& c,
                                 const Plane<index_t>& plane, acc_t (&v)[V]) {
  // As in interpolate: 0 outside, and -0.0 + x where a corner is inside (-0.0 + x
  // is x, so the common case's sum is the same as interpolate's).
STN_UNROLL
  for (int i = 0; i < V; ++i) v[i] = c.inside == 0 ? acc_t(0) : -acc_t(0);
  for_each_inside(c, [&](int k) {
    acc_t x[V];
    load(c.base + plane.neighbour_offset(k), x);
STN_UNROLL
    for (int i = 0; i < V; ++i) v[i] += x[i] * c.weight[k];
  });
}

template <int V, typename acc_t, typename index_t, typename LoadFn, typename AddFn>
STN_HD void interpolate_backward_channels(LoadFn&& load, const acc_t (&grad_out)[V],
                                          const Corners<acc_t, index_t>& c,
                                          const Bilinear<acc_t, index_t>& b,
                                          const Plane<index_t>& plane, bool need_input_grad,
                                          bool need_grid_grad, AddFn&& add, Point2<acc_t>& grad) {
  for_each_inside(c, [&](int k) {
    const index_t offset = c.base + plane.neighbour_offset(k);
    if (need_input_grad) {
      acc_t g[V];
STN_UNROLL
      for (int i = 0; i < V; ++i) g[i] = grad_out[i] * c.weight[k];
      add(offset, g);
    }
    if (need_grid_grad) {
      acc_t x[V];
      load(offset, x);
STN_UNROLL
      for (int i = 0; i < V; ++i) add_neighbour_grad(grad, b, k, x[i] * grad_out[i]);
    }
  });
}

// ---------------------------------------------------------------------------
// Where the sampler's source points come from: a grid tensor (grid_sample) or
// theta, generating each point on the fly (affine_sample, the fused path that
// never materialises the grid).

// grid (N, H_out, W_out, 2), any strides.
template <typename scalar_t>
struct TensorGrid {
  static constexpr int kDims = 2;
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
  static constexpr int kDims = 2;
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

// ---------------------------------------------------------------------------
// Volumes: 5-D input (N, C, D, H, W) sampled at grid points (x, y, z), with
// trilinear ('bilinear') or nearest interpolation. The same steps as above,
// per axis, with eight neighbours instead of four; neighbour k has x offset
// k & 1, y offset (k >> 1) & 1 and z offset k >> 2, ATen's order tnw, tne,
// tsw, tse, bnw, bne, bsw, bse.

template <typename T>
struct Point3 {
  T x, y, z;
};

// (x_s, y_s, z_s) = theta . (x_t, y_t, z_t, 1), theta a row-major 3x4 matrix.
template <typename T>
STN_HD Point3<T> apply_affine3(const T* theta, T xt, T yt, T zt) {
  return {theta[0] * xt + theta[1] * yt + theta[2] * zt + theta[3],
          theta[4] * xt + theta[5] * yt + theta[6] * zt + theta[7],
          theta[8] * xt + theta[9] * yt + theta[10] * zt + theta[11]};
}

template <typename T, typename index_t>
struct Trilinear {
  Linear<T, index_t> x, y, z;
};

// kBounded: see reflect.
template <typename index_t, bool kBounded = false, typename T>
STN_HD Trilinear<T, index_t> trilinear_point(Point3<T> g, int64_t D, int64_t H, int64_t W,
                                             Padding padding, bool align_corners) {
  const T not_finite = (g.x - g.x) + (g.y - g.y) + (g.z - g.z);  // 0 if finite, else NaN
  return {linear_axis<index_t, kBounded>(g.x, not_finite, W, padding, align_corners),
          linear_axis<index_t, kBounded>(g.y, not_finite, H, padding, align_corners),
          linear_axis<index_t, kBounded>(g.z, not_finite, D, padding, align_corners)};
}

// The extent and strides of one input volume (one channel).
template <typename index_t>
struct Volume {
  index_t D, H, W, sD, sH, sW;

  STN_HD index_t neighbour_offset(int k) const {
    return (k & 1) * sW + (k >> 1 & 1) * sH + (k >> 2) * sD;
  }
};

// A point's eight neighbours in a volume, as Corners for a plane.
template <typename T, typename index_t>
struct Corners3 {
  index_t base;  // offset of neighbour 0 (meaningful only if inside)
  int inside;    // bit k: neighbour k lies inside the volume
  T weight[8];
};

template <typename T, typename index_t>
STN_HD Corners3<T, index_t> corners(const Trilinear<T, index_t>& t, const Volume<index_t>& vol) {
  Corners3<T, index_t> c;
  c.base = t.z.i0 * vol.sD + t.y.i0 * vol.sH + t.x.i0 * vol.sW;
  c.inside = 0;
STN_UNROLL
  for (int k = 0; k < 8; ++k) {
    const int ix = k & 1, iy = k >> 1 & 1, iz = k >> 2;
    const bool in = in_range<index_t>(t.x.i0 + ix, vol.W) & in_range<index_t>(t.y.i0 + iy, vol.H) &
                    in_range<index_t>(t.z.i0 + iz, vol.D);
    c.inside |= int(in) << k;
    // ATen's order: (w_x * w_y) * w_z.
    c.weight[k] = t.x.w[ix] * t.y.w[iy] * t.z.w[iz];
  }
  return c;
}

// Voxel (x, y, z) as the one neighbour, with the whole weight.
template <typename T, typename index_t>
STN_HD Corners3<T, index_t> nearest_corners(index_t x, index_t y, index_t z,
                                            const Volume<index_t>& vol) {
  Corners3<T, index_t> c;
  c.base = z * vol.sD + y * vol.sH + x * vol.sW;
  c.inside = in_range(x, vol.W) & in_range(y, vol.H) & in_range(z, vol.D);
  c.weight[0] = T(1);
STN_UNROLL
  for (int k = 1; k < 8; ++k) c.weight[k] = T(0);
  return c;
}

// mode="nearest": nearbyint of each pixel coordinate (halves to even; exact,
// as in nearest_corner for a plane).
template <typename T, typename index_t>
STN_HD Corners3<T, index_t> nearest_corner(const Trilinear<T, index_t>& t,
                                           const Volume<index_t>& vol) {
  return nearest_corners<T>(nearest_index(t.x.i0, t.x.w[1]), nearest_index(t.y.i0, t.y.w[1]),
                            nearest_index(t.z.i0, t.z.w[1]), vol);
}

// mode="nearest" from the normalised coordinates, as nearest_point for a plane.
template <typename index_t, bool kBounded = false, typename T>
STN_HD Corners3<T, index_t> nearest_point(Point3<T> g, const Volume<index_t>& vol,
                                          Padding padding, bool align_corners) {
  const T not_finite = (g.x - g.x) + (g.y - g.y) + (g.z - g.z);  // as trilinear_point
  const index_t x = nearest_axis<index_t, kBounded>(g.x, not_finite, vol.W, padding, align_corners);
  const index_t y = nearest_axis<index_t, kBounded>(g.y, not_finite, vol.H, padding, align_corners);
  const index_t z = nearest_axis<index_t, kBounded>(g.z, not_finite, vol.D, padding, align_corners);
  return nearest_corners<T>(x, y, z, vol);
}

template <typename T, typename index_t>
STN_HD Corners3<T, index_t> corners(const Trilinear<T, index_t>& t, const Volume<index_t>& vol,
                                    Interpolation interpolation) {
  return interpolation == Interpolation::Nearest ? nearest_corner(t, vol) : corners(t, vol);
}

// Step 1 and 2 for a volume: a point's trilinear position and the neighbours
// it reads in the sampling's mode.
template <typename T, typename index_t>
struct Located3 {
  Trilinear<T, index_t> t;
  Corners3<T, index_t> corners;
};

// kBounded: see reflect.
template <bool kBounded = false, typename index_t, typename T>
STN_HD Located3<T, index_t> locate(Point3<T> g, const Volume<index_t>& vol, Sampling sampling) {
  const auto t = trilinear_point<index_t, kBounded>(g, vol.D, vol.H, vol.W, sampling.padding,
                                                    sampling.align_corners);
  return {t, corners(t, vol, sampling.interpolation)};
}

// The forward value of one point in one channel, summed in ATen's order.
template <typename acc_t, typename scalar_t, typename index_t>
STN_HD acc_t interpolate(const scalar_t* data, const Corners3<acc_t, index_t>& c,
                         const Volume<index_t>& vol) {
  if (c.inside == 0) return acc_t(0);
  acc_t v = -acc_t(0);  // as for a plane: the first term exactly, sign of zero included
STN_UNROLL
  for (int k = 0; k < 8; ++k) {
    if (c.inside >> k & 1) {
      v += static_cast<acc_t>(data[c.base + vol.neighbour_offset(k)]) * c.weight[k];
    }
  }
  return v;
}

// The backward of one point in one channel, as interpolate_backward for a
// plane: grad_input through `add`, d loss / d pixel position into `grad`
// (scaled by the axes' d later), each term in ATen's order of factors.
template <typename acc_t, typename scalar_t, typename index_t, typename AddFn>
STN_HD void interpolate_backward(const scalar_t* data, acc_t grad_out,
                                 const Corners3<acc_t, index_t>& c,
                                 const Trilinear<acc_t, index_t>& t, const Volume<index_t>& vol,
                                 bool need_input_grad, bool need_grid_grad, AddFn&& add,
                                 Point3<acc_t>& grad) {
STN_UNROLL
  for (int k = 0; k < 8; ++k) {
    if (!(c.inside >> k & 1)) continue;
    const index_t offset = c.base + vol.neighbour_offset(k);
    if (need_input_grad) add(offset, c.weight[k] * grad_out);
    if (need_grid_grad) {
      // d weight / d x is -w_y w_z for the lower x neighbour, +w_y w_z for the upper.
      const int ix = k & 1, iy = k >> 1 & 1, iz = k >> 2;
      const acc_t v = static_cast<acc_t>(data[offset]);
      const acc_t gx = v * t.y.w[iy] * t.z.w[iz] * grad_out;
      const acc_t gy = v * t.x.w[ix] * t.z.w[iz] * grad_out;
      const acc_t gz = v * t.x.w[ix] * t.y.w[iy] * grad_out;
      grad.x += ix ? gx : -gx;
      grad.y += iy ? gy : -gy;
      grad.z += iz ? gz : -gz;
    }
  }
}

// A strided (N, C, D, H, W) view of a tensor's storage.
template <typename scalar_t>
struct Image3 {
  scalar_t* data;
  int64_t N, C, D, H, W;
  int64_t sN, sC, sD, sH, sW;

  STN_HD scalar_t* volume(int64_t n, int64_t c) const { return data + n * sN + c * sC; }
  STN_HD int64_t offset(int64_t d, int64_t h, int64_t w) const { return d * sD + h * sH + w * sW; }
  template <typename index_t>
  STN_HD Volume<index_t> volume_shape() const {
    return {static_cast<index_t>(D), static_cast<index_t>(H), static_cast<index_t>(W),
            static_cast<index_t>(sD), static_cast<index_t>(sH), static_cast<index_t>(sW)};
  }
};

// grid (N, D_out, H_out, W_out, 3), any strides.
template <typename scalar_t>
struct TensorGrid3 {
  static constexpr int kDims = 3;
  const scalar_t* data;
  int64_t sN, sD, sH, sW, sXYZ;

  template <typename acc_t>
  STN_HD Point3<acc_t> point(int64_t n, int64_t d, int64_t h, int64_t w) const {
    const scalar_t* p = data + n * sN + d * sD + h * sH + w * sW;
    return {static_cast<acc_t>(p[0]), static_cast<acc_t>(p[sXYZ]),
            static_cast<acc_t>(p[2 * sXYZ])};
  }
};

// theta (N, 3, 4), contiguous, in the accumulation type.
template <typename acc_t>
struct ThetaGrid3 {
  static constexpr int kDims = 3;
  const acc_t* theta;
  int64_t D_out, H_out, W_out;
  bool align_corners;

  STN_HD acc_t xt(int64_t w) const { return target_coordinate<acc_t>(w, W_out, align_corners); }
  STN_HD acc_t yt(int64_t h) const { return target_coordinate<acc_t>(h, H_out, align_corners); }
  STN_HD acc_t zt(int64_t d) const { return target_coordinate<acc_t>(d, D_out, align_corners); }

  template <typename T>
  STN_HD Point3<T> point(int64_t n, int64_t d, int64_t h, int64_t w) const {
    return apply_affine3<acc_t>(theta + 12 * n, xt(w), yt(h), zt(d));
  }
};

// d loss / d theta (3x4) of one batch element, summed over its points:
// row i of theta gets the point's gradient component i times (x_t, y_t, z_t, 1).
template <typename acc_t>
struct ThetaGradSum3 {
  acc_t v[12] = {};

  STN_HD void add(acc_t xt, acc_t yt, acc_t zt, Point3<acc_t> g) {
    const acc_t gi[3] = {g.x, g.y, g.z};
STN_UNROLL
    for (int i = 0; i < 3; ++i) {
      v[4 * i] += gi[i] * xt;
      v[4 * i + 1] += gi[i] * yt;
      v[4 * i + 2] += gi[i] * zt;
      v[4 * i + 3] += gi[i];
    }
  }
};

}  // namespace stn

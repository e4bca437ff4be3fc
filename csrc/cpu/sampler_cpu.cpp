// CPU kernels for images (4-D input): at::parallel_for over runs of output
// points (forward) or batch elements (backward), around the per-point math of
// sampler_math.h. Deterministic: the backward pass gives each batch element to
// one thread, so grad_input is summed in a fixed order.
//
// A run is up to kRun consecutive output points of one batch element, in
// row-major order: it wraps from the end of one row to the start of the next,
// so small outputs (28 x 28, say) fill whole runs rather than short ones with a
// scalar tail each. A run goes in two phases:
//  1. for every point of the run, its source position and its neighbours
//     (offsets, masks, weights), stored as structure-of-arrays. The padding
//     mode is a compile-time constant here and the math is branch-free, so the
//     compiler vectorises this loop (bicubic: for the points whose taps need no
//     padding, the others after it, one by one);
//  2. for every channel, the gather (forward) or scatter (backward) of the
//     run's points, reusing phase 1's neighbours (or, in some backward passes,
//     for every point, each of its channels).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#define STN_CPU_GATHERS 1  // Tuning::cpu_gathers' AVX-512 phase 2, below
#include <immintrin.h>
#endif

#include "../kernels.h"
#include "common.h"

namespace stn {
namespace {

constexpr int kRun = 64;               // points per run
constexpr int64_t kGrainSize = 32768;  // work per parallel task, as ATen's GRAIN_SIZE

// Where a run starts and how long it is: batch element n, output row h and
// column w, `size` points from there in row-major order.
struct RunStart {
  int64_t n, h, w;
  int size;
};

// The runs of an output of H x W points per batch element, numbered across the
// batch: run r is the (r % per_plane)-th of batch element r / per_plane.
struct Runs {
  int64_t H, W, per_plane;

  Runs(int64_t H, int64_t W) : H(H), W(W), per_plane((H * W + kRun - 1) / kRun) {}
  RunStart operator[](int64_t r) const {
    const int64_t n = r / per_plane, p0 = (r % per_plane) * kRun;
    return {n, p0 / W, p0 % W, static_cast<int>(std::min<int64_t>(kRun, H * W - p0))};
  }
};

// f(i, h, w) for the run's points i = 0 .. size - 1 at (h, w).
template <typename F>
void for_each_point(const RunStart& run, int64_t W, F&& f) {
  int64_t h = run.h, w = run.w;
  for (int i = 0; i < run.size; ++i) {
    f(i, h, w);
    if (++w == W) {
      w = 0;
      ++h;
    }
  }
}

// A run's points after phase 1 for sampling mode I, structure-of-arrays.
// Nearest needs only each point's one neighbour: phase 1 leaves its weights
// (always 1) and the backward's rest of Bilinear (its grid gets no gradient)
// unwritten, and corners and bilinear stand in constants.
template <Interpolation I, typename acc_t, typename index_t>
struct Run {
  static constexpr bool kNearest = I == Interpolation::Nearest;
  int size;
  acc_t gx[kRun], gy[kRun];  // normalised source coordinates
  // Corners of each point.
  index_t base[kRun];
  int inside[kRun];
  acc_t weight[4][kRun];
  // Backward only: the rest of each point's Bilinear.
  acc_t wx[2][kRun], wy[2][kRun], dx[kRun], dy[kRun];

  Corners<acc_t, index_t> corners(int i) const {
    if constexpr (kNearest) return {base[i], inside[i], {acc_t(1), acc_t(0), acc_t(0), acc_t(0)}};
    return {base[i], inside[i], {weight[0][i], weight[1][i], weight[2][i], weight[3][i]}};
  }
  Bilinear<acc_t, index_t> bilinear(int i) const {
    if constexpr (kNearest) return {};
    return {0, 0, {wx[0][i], wx[1][i]}, {wy[0][i], wy[1][i]}, dx[i], dy[i]};
  }
};

// The source coordinates of a run's points: from the grid tensor (where the
// run's points are contiguous, a plain, vectorised deinterleave) or generated
// from theta.
template <typename RunT, typename scalar_t>
void load_points(RunT& run, const TensorGrid<scalar_t>& grid, const RunStart& at, int64_t W) {
  using acc_t = std::remove_reference_t<decltype(run.gx[0])>;
  if (grid.sW == 2 && grid.sXY == 1 && (grid.sH == 2 * W || at.w + run.size <= W)) {
    const scalar_t* p = grid.data + at.n * grid.sN + at.h * grid.sH + at.w * grid.sW;
    for (int i = 0; i < run.size; ++i) {
      run.gx[i] = static_cast<acc_t>(p[2 * i]);
      run.gy[i] = static_cast<acc_t>(p[2 * i + 1]);
    }
    return;
  }
  for_each_point(at, W, [&](int i, int64_t h, int64_t w) {
    const auto pt = grid.template point<acc_t>(at.n, h, w);
    run.gx[i] = pt.x;
    run.gy[i] = pt.y;
  });
}

template <typename RunT, typename acc_t>
void load_points(RunT& run, const TabulatedThetaGrid<acc_t>& theta, const RunStart& at,
                 int64_t W) {
  for_each_point(at, W, [&](int i, int64_t h, int64_t w) {
    const auto pt = theta.template point<acc_t>(at.n, h, w);
    run.gx[i] = pt.x;
    run.gy[i] = pt.y;
  });
}

// Phase 1: the points of a run (W: the output's width), and their corners.
// With reflection padding, the vectorised loop reflects only coordinates that
// need no call to fmod (reflects_exactly: all but the farthest), standing in 0
// for the others, which the scalar loop after it then locates.
template <bool kBackward, Interpolation I, Padding P, bool kAlignCorners, typename acc_t,
          typename index_t, typename Source>
STN_VECTOR_CLONES void locate_run(Run<I, acc_t, index_t>& run, const Source& src,
                                  const RunStart& at, int64_t W,
                                  const Plane<index_t> plane) {  // by value: in registers
  run.size = at.size;
  load_points(run, src, at, W);
  constexpr bool kReflection = P == Padding::Reflection;
  auto bounded = [&](int i) {
    return !kReflection ||
           (reflects_exactly(run.gx[i], plane.W) && reflects_exactly(run.gy[i], plane.H));
  };
  // Point i at (gx, gy), kBounded as for reflect; nearest needs only its
  // neighbour (nearest_point).
  auto store = [&](int i, acc_t gx, acc_t gy, auto kBounded) {
    constexpr bool bounded_point = decltype(kBounded)::value;
    if constexpr (I == Interpolation::Nearest) {
      const auto c = nearest_point<index_t, bounded_point>(gx, gy, plane, P, kAlignCorners);
      run.base[i] = c.base;
      run.inside[i] = c.inside;
      return;
    }
    const auto b =
        bilinear_point<index_t, bounded_point>(gx, gy, plane.H, plane.W, P, kAlignCorners);
    const auto c = corners(b, plane);
    run.base[i] = c.base;
    run.inside[i] = c.inside;
    for (int k = 0; k < 4; ++k) run.weight[k][i] = c.weight[k];
    if (kBackward) {
      for (int j = 0; j < 2; ++j) {
        run.wx[j][i] = b.wx[j];
        run.wy[j][i] = b.wy[j];
      }
      run.dx[i] = b.dx;
      run.dy[i] = b.dy;
    }
  };
  for (int i = 0; i < run.size; ++i) {  // vectorised
    const bool near = bounded(i);
    store(i, near ? run.gx[i] : acc_t(0), near ? run.gy[i] : acc_t(0),
          std::bool_constant<kReflection>{});
  }
  if (!kReflection) return;
  for (int i = 0; i < run.size; ++i) {
    if (!bounded(i)) store(i, run.gx[i], run.gy[i], std::false_type{});
  }
}

// Phase 2 for one point in one channel plane, forward (sample) and backward
// (scatter): nearest reads and scatters through its one neighbour, whose weight
// is 1 (the value itself, -0.0 included, as torch), without bilinear's four;
// the grid gets no gradient from it.
template <Interpolation I, typename acc_t, typename index_t, typename scalar_t>
acc_t sample(const scalar_t* data, const Corners<acc_t, index_t>& c, const Plane<index_t>& plane) {
  if constexpr (I == Interpolation::Nearest) {
    return c.inside ? static_cast<acc_t>(data[c.base]) : acc_t(0);
  } else {
    return interpolate(data, c, plane);
  }
}

template <Interpolation I, typename acc_t, typename index_t, typename scalar_t, typename AddFn>
void scatter(const scalar_t* data, acc_t grad_out, const Corners<acc_t, index_t>& c,
             const Bilinear<acc_t, index_t>& b, const Plane<index_t>& plane, bool need_input_grad,
             bool need_grid_grad, AddFn&& add, Point2<acc_t>& grad) {
  if constexpr (I == Interpolation::Nearest) {
    if (need_input_grad && c.inside) add(c.base, grad_out);
  } else {
    interpolate_backward(data, grad_out, c, b, plane, need_input_grad, need_grid_grad, add,
                         grad);
  }
}

#ifdef STN_CPU_GATHERS
// The lanes of a group of 16 points that hold one of its first `lanes`.
inline __mmask16 lanes_mask(int lanes) { return lanes >= 16 ? 0xffff : (1u << lanes) - 1; }
#endif

// Phase 2 of the forward pass with AVX-512 (Tuning::cpu_gathers): 16 points
// at a time, each neighbour k of all 16 read by one gather masked by their
// inside bits k, so outside neighbours are never read. The sums are
// interpolate's, lane by lane: -0.0 plus each inside term in order (-0.0 + x
// is x, so where all four are inside this is term 0 + term 1 + term 2 +
// term 3), and +0.0 where none is inside; a multiply and an add, not fused.
// The same bits as the scalar loop (tests/test_tuning.py).
#ifdef STN_CPU_GATHERS
template <Interpolation I>
__attribute__((target("avx512f"))) void interpolate_run_gathers(
    const Run<I, float, int>& run, const Plane<int> plane, const float* in, int64_t in_sC,
    float* out, int64_t out_sC, int64_t C) {
  for (int i0 = 0; i0 < run.size; i0 += 16) {
    const __mmask16 live = lanes_mask(run.size - i0);
    const __m512i base = _mm512_maskz_loadu_epi32(live, run.base + i0);
    const __m512i inside = _mm512_maskz_loadu_epi32(live, run.inside + i0);
    const __mmask16 none_inside = _mm512_testn_epi32_mask(inside, inside);
    __mmask16 mask[4];
    __m512i offset[4];
    __m512 weight[4];
    for (int k = 0; k < 4; ++k) {
      mask[k] = _mm512_test_epi32_mask(inside, _mm512_set1_epi32(1 << k));
      offset[k] = _mm512_add_epi32(base, _mm512_set1_epi32(plane.neighbour_offset(k)));
      if constexpr (I != Interpolation::Nearest) {
        weight[k] = _mm512_maskz_loadu_ps(live, run.weight[k] + i0);
      }
    }
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; ++c) {
      const float* in_c = in + c * in_sC;
      __m512 v;
      if constexpr (I == Interpolation::Nearest) {  // the value itself, as sample's
        v = _mm512_mask_i32gather_ps(zero, mask[0], offset[0], in_c, 4);
      } else {
        v = _mm512_set1_ps(-0.0f);
        for (int k = 0; k < 4; ++k) {
          const __m512 pixel = _mm512_mask_i32gather_ps(zero, mask[k], offset[k], in_c, 4);
          v = _mm512_mask_add_ps(v, mask[k], v, _mm512_mul_ps(pixel, weight[k]));
        }
        v = _mm512_mask_mov_ps(v, none_inside, zero);
      }
      _mm512_mask_storeu_ps(out + c * out_sC + i0, live, v);
    }
  }
}
#endif

// Phase 2 of the forward pass: the run's points, channel by channel (measured
// faster than channels innermost, for one channel and for many), into a
// contiguous output, where the run's points are consecutive; with gathers
// where they apply. Everything by value, so that it stays in registers.
template <Interpolation I, typename acc_t, typename index_t, typename scalar_t>
void interpolate_run(const Run<I, acc_t, index_t>& run, const Plane<index_t> plane,
                     const scalar_t* in, int64_t in_sC, scalar_t* out, int64_t out_sC, int64_t C,
                     bool gathers) {
#ifdef STN_CPU_GATHERS
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int>) {
    if (gathers) return interpolate_run_gathers<I>(run, plane, in, in_sC, out, out_sC, C);
  }
#endif
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* in_c = in + c * in_sC;
    scalar_t* out_c = out + c * out_sC;
    for (int i = 0; i < run.size; ++i) {
      out_c[i] = static_cast<scalar_t>(sample<I>(in_c, run.corners(i), plane));
    }
  }
}

// Gradient sinks: where the gradient with respect to each point's source
// coordinates goes.
template <typename acc_t>
struct GridGradSink {  // grad_grid (N, H_out, W_out, 2), contiguous
  acc_t* data;
  int64_t H, W;
  void add(int64_t n, int64_t h, int64_t w, Point2<acc_t> g) {
    acc_t* d = data + ((n * H + h) * W + w) * 2;
    d[0] = g.x;
    d[1] = g.y;
  }
  void add_run(const RunStart& at, int64_t, const Point2<acc_t>* g) {  // side by side
    acc_t* d = data + ((at.n * H + at.h) * W + at.w) * 2;
    for (int i = 0; i < at.size; ++i) {
      d[2 * i] = g[i].x;
      d[2 * i + 1] = g[i].y;
    }
  }
  void finish(int64_t) {}
};

template <typename acc_t>
struct ThetaGradSink {  // grad_theta (N, 2, 3), contiguous
  acc_t* data;
  const TabulatedThetaGrid<acc_t>* grid;
  ThetaGradSum<acc_t> sum;
  void add(int64_t, int64_t h, int64_t w, Point2<acc_t> g) {
    sum.add(grid->xt(w), grid->yt(h), g);
  }
  void add_run(const RunStart& at, int64_t W, const Point2<acc_t>* g) {
    for_each_point(at, W, [&](int i, int64_t h, int64_t w) { add(at.n, h, w, g[i]); });
  }
  void finish(int64_t n) {
    for (int k = 0; k < 6; ++k) data[6 * n + k] = sum.v[k];
    sum = {};
  }
};

// mode="bicubic": a run's points after phase 1. A point whose 16 taps all lie
// inside the image (`interior`: most points of most transforms; those of the
// widest images' last columns and rows may count as edge points) needs no
// padding and no mask, only the offsets of its first column and row of taps
// and its weights, which the vectorised loop of locate_cubic_run finds; the
// others (edge points) get their full Bicubic from bicubic_point in a scalar
// loop.
template <typename acc_t, typename index_t>
struct CubicRun {
  int size;
  acc_t gx[kRun], gy[kRun];  // normalised source coordinates
  // Interior points: the offsets of their first column and row of taps, the
  // columns' and rows' weights, and (backward only) minus their derivatives.
  int interior[kRun];
  index_t x_offset[kRun], y_offset[kRun];
  acc_t wx[4][kRun], wy[4][kRun];
  acc_t gwx[4][kRun], gwy[4][kRun];
  Bicubic<acc_t, index_t> edge[kRun];  // edge points

  // Interior point i as bicubic_point gives it (d: d pixel / d coordinate, the
  // unnormalisation's factors, the same for every point).
  Bicubic<acc_t, index_t> interior_point(int i, const Plane<index_t>& plane,
                                         Point2<acc_t> d) const {
    Bicubic<acc_t, index_t> b;
    for (int k = 0; k < 4; ++k) {
      b.x_offset[k] = x_offset[i] + k * plane.sW;
      b.y_offset[k] = y_offset[i] + k * plane.sH;
      b.wx[k] = wx[k][i];
      b.wy[k] = wy[k][i];
      b.gx[k] = gwx[k][i];
      b.gy[k] = gwy[k][i];
    }
    b.inside = 0xffff;
    b.dx = d.x;
    b.dy = d.y;
    return b;
  }
};

// The largest T at most n (T(n) rounds to the nearest, which may be above).
template <typename T>
T at_most(int64_t n) {
  const T t = static_cast<T>(n);
  return static_cast<int64_t>(t) > n ? std::nextafter(t, T(0)) : t;
}

template <bool kBackward, Padding P, bool kAlignCorners, typename acc_t, typename index_t,
          typename Source>
STN_VECTOR_CLONES void locate_cubic_run(CubicRun<acc_t, index_t>& run, const Source& src,
                                        const RunStart& at, int64_t W,
                                        const Plane<index_t> plane) {  // by value: in registers
  run.size = at.size;
  load_points(run, src, at, W);
  // The interior points' x0 and y0: from 1 to W - 3 and H - 3, bounds that
  // acc_t may not hold exactly (float, past 2^24): then the nearest below.
  const acc_t last_x = at_most<acc_t>(plane.W - 3), last_y = at_most<acc_t>(plane.H - 3);
  for (int i = 0; i < run.size; ++i) {  // vectorised; as bicubic_point for interior points
    const acc_t px = unnormalize(run.gx[i], plane.W, kAlignCorners).val;
    const acc_t py = unnormalize(run.gy[i], plane.H, kAlignCorners).val;
    const acc_t x0 = math::floor(px), y0 = math::floor(py);
    // False for NaN and infinities.
    const bool interior = x0 >= acc_t(1) && x0 <= last_x && y0 >= acc_t(1) && y0 <= last_y;
    run.interior[i] = interior;
    run.x_offset[i] = (static_cast<index_t>(interior ? x0 : acc_t(1)) - 1) * plane.sW;
    run.y_offset[i] = (static_cast<index_t>(interior ? y0 : acc_t(1)) - 1) * plane.sH;
    acc_t w[2][4];
    cubic_weights(px - x0, w[0]);
    cubic_weights(py - y0, w[1]);
    for (int k = 0; k < 4; ++k) {
      run.wx[k][i] = w[0][k];
      run.wy[k][i] = w[1][k];
    }
    if constexpr (kBackward) {
      cubic_weight_grads(px - x0, w[0]);
      cubic_weight_grads(py - y0, w[1]);
      for (int k = 0; k < 4; ++k) {
        run.gwx[k][i] = w[0][k];
        run.gwy[k][i] = w[1][k];
      }
    }
  }
  for (int i = 0; i < run.size; ++i) {
    if (!run.interior[i]) {
      run.edge[i] = bicubic_point<index_t>(run.gx[i], run.gy[i], plane, P, kAlignCorners);
    }
  }
}

// mode="bicubic", forward: phase 1, then each channel's points, into a
// contiguous output. An interior point sums its taps as bicubic_interpolate
// does, in the same order, without masks.
template <Padding P, bool kAlignCorners, typename acc_t, typename scalar_t, typename index_t,
          typename Source>
void bicubic_run(CubicRun<acc_t, index_t>& run, const Source& src, const RunStart& at,
                 const Plane<index_t> plane, const Image<const scalar_t>& in,
                 const Image<scalar_t>& out) {
  locate_cubic_run<false, P, kAlignCorners>(run, src, at, out.W, plane);
  const index_t sW = plane.sW, sH = plane.sH;
  for (int64_t c = 0; c < in.C; ++c) {
    const scalar_t* data = in.plane(at.n, c);
    scalar_t* out_c = out.plane(at.n, c) + out.offset(at.h, at.w);
    for (int i = 0; i < run.size; ++i) {
      if (!run.interior[i]) {
        out_c[i] = static_cast<scalar_t>(bicubic_interpolate(data, run.edge[i]));
        continue;
      }
      const scalar_t* taps = data + run.y_offset[i] + run.x_offset[i];
      auto row = [&](int j) {
        const scalar_t* r = taps + j * sH;
        return static_cast<acc_t>(r[0]) * run.wx[0][i] + static_cast<acc_t>(r[sW]) * run.wx[1][i] +
               static_cast<acc_t>(r[2 * sW]) * run.wx[2][i] +
               static_cast<acc_t>(r[3 * sW]) * run.wx[3][i];
      };
      out_c[i] = static_cast<scalar_t>(row(0) * run.wy[0][i] + row(1) * run.wy[1][i] +
                                       row(2) * run.wy[2][i] + row(3) * run.wy[3][i]);
    }
  }
}

// A run after phase 1, for sampling mode I.
template <Interpolation I, typename acc_t, typename index_t>
using RunOf = std::conditional_t<I == Interpolation::Bicubic, CubicRun<acc_t, index_t>,
                                 Run<I, acc_t, index_t>>;

template <typename scalar_t, typename Source>
void sample_forward(const at::Tensor& input, const Source& src, const at::Tensor& output,
                    Sampling sampling) {
  using acc_t = at::opmath_type<scalar_t>;
  TORCH_INTERNAL_ASSERT(output.is_contiguous(), "the ops allocate the output contiguous");
  const auto in = image_of<const scalar_t>(input);
  const auto out = image_of<scalar_t>(output);
  const Runs runs(out.H, out.W);
  const int64_t grain = std::max<int64_t>(1, kGrainSize / (kRun * std::max<int64_t>(1, in.C)));
  const bool gathers = tuning().cpu_gathers && cpu_has_gathers();
  with_modes</*kVolume=*/false>(sampling, [&](auto I, auto P, auto kAlignCorners) {
    with_index_type(in, [&](auto index) {
      using index_t = decltype(index);
      const auto plane = in.template plane_shape<index_t>();
      at::parallel_for(0, out.N * runs.per_plane, grain, [&, plane](int64_t begin, int64_t end) {
        RunOf<I, acc_t, index_t> run;
        for (int64_t r = begin; r < end; ++r) {
          const RunStart at = runs[r];
          if constexpr (I == Interpolation::Bicubic) {
            bicubic_run<P, kAlignCorners>(run, src, at, plane, in, out);
          } else {
            locate_run<false, I, P, kAlignCorners>(run, src, at, out.W, plane);
            interpolate_run<I>(run, plane, in.plane(at.n, 0), in.sC,
                               out.plane(at.n, 0) + out.offset(at.h, at.w), out.sC, in.C, gathers);
          }
        }
      });
    });
  });
}

#ifdef STN_CPU_GATHERS
// One channel plane of grad_output at a run's points i0 .. i0 + lanes - 1
// (lanes <= 16): at offset[i], or, dense, at offset[0] + i (the points side by
// side).
__attribute__((target("avx512f"))) inline __m512 load_grad_output(const float* plane,
                                                                  const int64_t* offset,
                                                                  bool dense, int i0, int lanes) {
  const __mmask16 live = lanes_mask(lanes);
  if (dense) return _mm512_maskz_loadu_ps(live, plane + offset[0] + i0);
  alignas(64) float v[16] = {};
  for (int i = 0; i < lanes; ++i) v[i] = plane[offset[i0 + i]];
  return _mm512_load_ps(v);
}

// Phase 2 of the bilinear backward with AVX-512 (Tuning::cpu_gathers), 16
// points at a time. First, over the channels in order, d loss / d pixel: each
// neighbour k of all 16 read by one gather masked by their inside bits k, and
// lane by lane the terms of interpolate_backward in its order (+0.0 plus each
// inside neighbour's share), so grad gets the scalar loop's sums. Then, channel
// by channel, the 16 points' adds into grad_input, one at a time in point
// order, as ATen's backward makes them (two points' neighbours may be the same
// pixel): each channel plane gets its adds in the scalar loops' order. The same
// bits as those loops (tests/test_tuning.py). Reads and adds go in two passes
// because the input and grad_input are page-aligned, so a gather from the input
// just after adds into grad_input at the same offsets waits on the stores (4 KiB
// aliasing): interleaved, 2.5x slower with 32 channels.
__attribute__((target("avx512f"))) void backward_run_gathers(
    const Run<Interpolation::Bilinear, float, int>& run, const Plane<int> plane, const float* in,
    int64_t in_sC, const float* go, const int64_t* go_offset, bool go_dense, int64_t go_sC,
    float* gi, int64_t gi_sC, int64_t C, bool need_grid_grad, Point2<float>* grad) {
  for (int i0 = 0; i0 < run.size; i0 += 16) {
    const int lanes = std::min(16, run.size - i0);
    const __mmask16 live = lanes_mask(lanes);
    const __m512i base = _mm512_maskz_loadu_epi32(live, run.base + i0);
    const __m512i inside = _mm512_maskz_loadu_epi32(live, run.inside + i0);
    __mmask16 mask[4];
    alignas(64) int offset[4][16];
    __m512 weight[4], wx[2], wy[2];
    for (int k = 0; k < 4; ++k) {
      mask[k] = _mm512_test_epi32_mask(inside, _mm512_set1_epi32(1 << k));
      _mm512_store_epi32(offset[k], _mm512_add_epi32(base, _mm512_set1_epi32(plane.neighbour_offset(k))));
      weight[k] = _mm512_maskz_loadu_ps(live, run.weight[k] + i0);
    }
    for (int j = 0; j < 2; ++j) {
      wx[j] = _mm512_maskz_loadu_ps(live, run.wx[j] + i0);
      wy[j] = _mm512_maskz_loadu_ps(live, run.wy[j] + i0);
    }
    const __m512 zero = _mm512_setzero_ps();
    __m512 grad_x = zero, grad_y = zero;
    for (int64_t c = 0; need_grid_grad && c < C; ++c) {  // add_neighbour_grad's terms
      const float* in_c = in + c * in_sC;
      const __m512 g = load_grad_output(go + c * go_sC, go_offset, go_dense, i0, lanes);
      for (int k = 0; k < 4; ++k) {
        const __m512i at = _mm512_load_epi32(offset[k]);
        const __m512 v = _mm512_mul_ps(_mm512_mask_i32gather_ps(zero, mask[k], at, in_c, 4), g);
        const __m512 tx = _mm512_mul_ps(v, wy[k >> 1]), ty = _mm512_mul_ps(v, wx[k & 1]);
        grad_x = k & 1 ? _mm512_mask_add_ps(grad_x, mask[k], grad_x, tx)
                       : _mm512_mask_sub_ps(grad_x, mask[k], grad_x, tx);
        grad_y = k >> 1 ? _mm512_mask_add_ps(grad_y, mask[k], grad_y, ty)
                        : _mm512_mask_sub_ps(grad_y, mask[k], grad_y, ty);
      }
    }
    for (int64_t c = 0; gi != nullptr && c < C; ++c) {
      float* gi_c = gi + c * gi_sC;
      const __m512 g = load_grad_output(go + c * go_sC, go_offset, go_dense, i0, lanes);
      alignas(64) float share[4][16];
      for (int k = 0; k < 4; ++k) _mm512_store_ps(share[k], _mm512_mul_ps(g, weight[k]));
      for (int i = 0; i < lanes; ++i) {
        const int in_i = run.inside[i0 + i];
        for (int k = 0; k < 4; ++k) {
          if (in_i >> k & 1) gi_c[offset[k][i]] += share[k][i];
        }
      }
    }
    alignas(64) float x[16], y[16];
    _mm512_store_ps(x, grad_x);
    _mm512_store_ps(y, grad_y);
    for (int i = 0; i < lanes; ++i) grad[i0 + i] = {x[i], y[i]};
  }
}
#endif

// Phase 2 of the backward pass, channel by channel, each channel's points in a
// tight loop (or, where they apply, 16 points at a time with the gathers
// above): they scatter into grad_input and add d loss / d pixel into grad[i]
// (over the channels in order), which the sink then gets scaled by d pixel /
// d coordinate. grad_input's image gi has no data where it is not wanted.
template <Interpolation I, typename acc_t, typename index_t, typename scalar_t, typename Sink>
void backward_run_by_channel(const Run<I, acc_t, index_t>& run, const RunStart& at,
                             const Plane<index_t> plane, const Image<const scalar_t>& in,
                             const Image<const scalar_t>& go, const Image<acc_t>& gi,
                             bool need_grid_grad, bool gathers, Sink& sink) {
  const bool need_input_grad = gi.data != nullptr;
  Point2<acc_t> grad[kRun];
  // grad_output's offsets at the run's points, the first alone where they lie side by side.
  const bool go_dense = go.sW == 1 && go.sH == go.W;
  int64_t go_offset[kRun];
  go_offset[0] = go.offset(at.h, at.w);
  if (!go_dense) {
    for_each_point(at, go.W, [&](int i, int64_t h, int64_t w) { go_offset[i] = go.offset(h, w); });
  }
  const scalar_t* go_n = go.plane(at.n, 0);
  auto to_sink = [&] {
    if (!need_grid_grad) return;
    for (int i = 0; i < run.size; ++i) grad[i] = {grad[i].x * run.dx[i], grad[i].y * run.dy[i]};
    sink.add_run(at, go.W, grad);
  };
#ifdef STN_CPU_GATHERS
  if constexpr (I == Interpolation::Bilinear && std::is_same_v<scalar_t, float> &&
                std::is_same_v<index_t, int>) {
    if (gathers) {
      backward_run_gathers(run, plane, in.plane(at.n, 0), in.sC, go_n, go_offset, go_dense, go.sC,
                           need_input_grad ? gi.plane(at.n, 0) : nullptr, gi.sC, in.C,
                           need_grid_grad, grad);
      return to_sink();
    }
  }
#endif
  std::fill_n(grad, run.size, Point2<acc_t>{acc_t(0), acc_t(0)});
  for (int64_t c = 0; c < in.C; ++c) {
    const scalar_t* go_c = go_n + c * go.sC;
    acc_t buffer[kRun];
    const acc_t* g = buffer;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (go_dense) g = go_c + go_offset[0];
    }
    if (g == buffer) {
      for (int i = 0; i < run.size; ++i) {
        buffer[i] = static_cast<acc_t>(go_c[go_dense ? go_offset[0] + i : go_offset[i]]);
      }
    }
    acc_t* gi_c = need_input_grad ? gi.plane(at.n, c) : nullptr;
    auto add = [gi_c](index_t offset, acc_t v) { gi_c[offset] += v; };
    const scalar_t* in_c = in.plane(at.n, c);
    for (int i = 0; i < run.size; ++i) {
      scatter<I>(in_c, g[i], run.corners(i), run.bilinear(i), plane, need_input_grad,
                 need_grid_grad, add, grad[i]);
    }
  }
  to_sink();
}

// The backward of the point at (h, w) of batch element n, channel by channel:
// channel(data, g, add, grad) scatters grad_output's value g in that channel
// into grad_input by add(offset, value) and adds d loss / d pixel into grad,
// which the sink then gets scaled by d_pixel (d pixel / d coordinate).
template <typename index_t, typename acc_t, typename scalar_t, typename Sink, typename Channel>
void point_backward(const Image<const scalar_t>& in, const Image<const scalar_t>& go,
                    const Image<acc_t>& gi, bool need_grid_grad, int64_t n, int64_t h, int64_t w,
                    Point2<acc_t> d_pixel, Sink& sink, Channel&& channel) {
  Point2<acc_t> grad{acc_t(0), acc_t(0)};
  const scalar_t* go_point = go.plane(n, 0) + go.offset(h, w);
  for (int64_t c = 0; c < in.C; ++c) {
    acc_t* gi_plane = gi.data != nullptr ? gi.plane(n, c) : nullptr;
    auto add = [gi_plane](index_t offset, acc_t v) { gi_plane[offset] += v; };
    channel(in.plane(n, c), static_cast<acc_t>(go_point[c * go.sC]), add, grad);
  }
  if (need_grid_grad) sink.add(n, h, w, {grad.x * d_pixel.x, grad.y * d_pixel.y});
}

// Phase 2 of the backward pass, point by point, each point through every
// channel.
template <Interpolation I, typename acc_t, typename index_t, typename scalar_t, typename Sink>
void backward_run_by_point(const Run<I, acc_t, index_t>& run, const RunStart& at,
                           const Plane<index_t> plane, const Image<const scalar_t>& in,
                           const Image<const scalar_t>& go, const Image<acc_t>& gi,
                           bool need_grid_grad, Sink& sink) {
  const bool need_input_grad = gi.data != nullptr;
  for_each_point(at, go.W, [&](int i, int64_t h, int64_t w) {
    const auto corners = run.corners(i);
    const auto b = run.bilinear(i);
    point_backward<index_t>(in, go, gi, need_grid_grad, at.n, h, w, {b.dx, b.dy}, sink,
                            [&](const scalar_t* data, acc_t g, auto& add, Point2<acc_t>& grad) {
      scatter<I>(data, g, corners, b, plane, need_input_grad, need_grid_grad, add, grad);
    });
  });
}

// mode="bicubic": the backward of a run, phase 1 (locate_cubic_run), then
// point by point through the channels.
template <Padding P, bool kAlignCorners, typename acc_t, typename index_t, typename scalar_t,
          typename Source, typename Sink>
void bicubic_backward_run(CubicRun<acc_t, index_t>& run, const Source& src, const RunStart& at,
                          const Plane<index_t> plane, const Image<const scalar_t>& in,
                          const Image<const scalar_t>& go, const Image<acc_t>& gi,
                          bool need_grid_grad, Sink& sink) {
  const bool need_input_grad = gi.data != nullptr;
  locate_cubic_run<true, P, kAlignCorners>(run, src, at, go.W, plane);
  const Point2<acc_t> d{unnormalize(acc_t(0), plane.W, kAlignCorners).grad,
                        unnormalize(acc_t(0), plane.H, kAlignCorners).grad};
  for_each_point(at, go.W, [&](int i, int64_t h, int64_t w) {
    const auto b = run.interior[i] ? run.interior_point(i, plane, d) : run.edge[i];
    point_backward<index_t>(in, go, gi, need_grid_grad, at.n, h, w, {b.dx, b.dy}, sink,
                            [&](const scalar_t* data, acc_t g, auto& add, Point2<acc_t>& grad) {
      bicubic_backward(data, g, b, need_input_grad, need_grid_grad, add, grad);
    });
  });
}

template <typename scalar_t, typename Source, typename Sink>
void sample_backward(const at::Tensor& grad_output, const at::Tensor& input, const Source& src,
                     const at::Tensor& grad_input, Sink sink, bool need_grid_grad,
                     Sampling sampling) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto go = image_of<const scalar_t>(grad_output);
  const auto in = image_of<const scalar_t>(input);
  // grad_input is allocated contiguous with the input's memory format, so its
  // plane strides equal the input's or (channels_last) match them too.
  const auto gi = grad_input.defined() ? image_of<acc_t>(grad_input) : Image<acc_t>{};
  with_modes</*kVolume=*/false>(sampling, [&](auto I, auto P, auto kAlignCorners) {
    with_index_type(in, [&](auto index) {
      using index_t = decltype(index);
      const auto plane = in.template plane_shape<index_t>();
      const Runs runs(go.H, go.W);
      // Where backward_run_gathers applies and pays. Without a gradient to the
      // grid it gathers nothing: with more than one channel, its order (16
      // points through every channel's adds) still beat the general loop in a
      // rough timing (0.36 against 0.47 ms on 64x4x28x28, a noisy Zen 4), but
      // with one channel the plain loop is faster (0.52 against 0.70 ms on
      // 256x1x28x28).
      const bool gathers = I == Interpolation::Bilinear && std::is_same_v<scalar_t, float> &&
                           std::is_same_v<index_t, int> && tuning().cpu_gathers &&
                           cpu_has_gathers() && (need_grid_grad || in.C > 1);
      // Channel by channel where a point's work per channel is small: with the
      // gathers; with one channel (point by point costs a fifth more there); and
      // for nearest sampling, whose lone adds into planes 16 KiB apart thrash
      // the cache when each point visits all its channels (5x slower at 32
      // channels). Point by point otherwise (bilinear with more channels): that
      // order keeps each point's neighbourhood in registers and the
      // same-address adds apart.
      const bool by_channel = gathers || in.C == 1 || I == Interpolation::Nearest;
      at::parallel_for(0, go.N, 1, [&, plane](int64_t n0, int64_t n1) {
        Sink s = sink;
        RunOf<I, acc_t, index_t> run;
        for (int64_t n = n0; n < n1; ++n) {
          for (int64_t r = n * runs.per_plane; r < (n + 1) * runs.per_plane; ++r) {
            const RunStart at = runs[r];
            if constexpr (I == Interpolation::Bicubic) {
              bicubic_backward_run<P, kAlignCorners>(run, src, at, plane, in, go, gi,
                                                     need_grid_grad, s);
            } else {
              locate_run<true, I, P, kAlignCorners>(run, src, at, go.W, plane);
              if (by_channel) {
                backward_run_by_channel<I>(run, at, plane, in, go, gi, need_grid_grad, gathers, s);
              } else {
                backward_run_by_point<I>(run, at, plane, in, go, gi, need_grid_grad, s);
              }
            }
          }
          if (need_grid_grad) s.finish(n);
        }
      });
    });
  });
}

void grid_sample_forward(const at::Tensor& input, const at::Tensor& grid,
                         const at::Tensor& output, Sampling sampling) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::grid_sample", [&] {
    sample_forward<scalar_t>(input, tensor_grid_of<scalar_t>(grid), output, sampling);
  });
}

void grid_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                          const at::Tensor& grid, const at::Tensor& grad_input,
                          const at::Tensor& grad_grid, Sampling sampling,
                          bool /*deterministic: always*/) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::grid_sample_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GridGradSink<acc_t> sink{
        grad_grid.defined() ? grad_grid.data_ptr<acc_t>() : nullptr, grid.size(1),
        grid.size(2)};
    sample_backward<scalar_t>(grad_output, input, tensor_grid_of<scalar_t>(grid), grad_input,
                              sink, grad_grid.defined(), sampling);
  });
}

void affine_sample_forward(const at::Tensor& input, const at::Tensor& theta,
                           const at::Tensor& output, Sampling sampling) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const TabulatedThetaGrid<acc_t> src(
        theta_grid_of<acc_t>(theta, output.sizes().slice(2), sampling.align_corners));
    sample_forward<scalar_t>(input, src, output, sampling);
  });
}

void affine_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& theta, const at::Tensor& grad_input,
                            const at::Tensor& grad_theta, Sampling sampling,
                            bool /*deterministic: always*/) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const TabulatedThetaGrid<acc_t> src(
        theta_grid_of<acc_t>(theta, grad_output.sizes().slice(2), sampling.align_corners));
    const ThetaGradSink<acc_t> sink{
        grad_theta.defined() ? grad_theta.data_ptr<acc_t>() : nullptr, &src, {}};
    sample_backward<scalar_t>(grad_output, input, src, grad_input, sink, grad_theta.defined(),
                              sampling);
  });
}

void affine_grid_forward(const at::Tensor& theta, const at::Tensor& grid, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grid.scalar_type(),
                                  "stn_cuda::affine_grid", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grid.size(0), H = grid.size(1), W = grid.size(2);
    const TabulatedThetaGrid<acc_t> src(theta_grid_of<acc_t>(theta, {H, W}, align_corners));
    scalar_t* out = grid.data_ptr<scalar_t>();
    at::parallel_for(0, N * H, std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, W)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t w = 0; w < W; ++w) {
          const auto p = src.template point<acc_t>(i / H, i % H, w);
          out[(i * W + w) * 2] = static_cast<scalar_t>(p.x);
          out[(i * W + w) * 2 + 1] = static_cast<scalar_t>(p.y);
        }
      }
    });
  });
}

void affine_grid_backward(const at::Tensor& grad_grid, const at::Tensor& grad_theta,
                          bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_grid.scalar_type(),
                                  "stn_cuda::affine_grid_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grad_grid.size(0), H = grad_grid.size(1), W = grad_grid.size(2);
    const auto gg = tensor_grid_of<scalar_t>(grad_grid);
    const TabulatedThetaGrid<acc_t> targets(
        theta_grid_of<acc_t>(at::Tensor(), {H, W}, align_corners));
    const ThetaGradSink<acc_t> sink{grad_theta.data_ptr<acc_t>(), &targets, {}};
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      ThetaGradSink<acc_t> s = sink;
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) s.add(n, h, w, gg.template point<acc_t>(n, h, w));
        s.finish(n);
      }
    });
  });
}

}  // namespace

bool cpu_has_gathers() {
#ifdef STN_CPU_GATHERS
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

const Kernels& cpu_kernels() {
  static const Kernels k{grid_sample_forward, grid_sample_backward, affine_sample_forward,
                         affine_sample_backward, affine_grid_forward, affine_grid_backward};
  return k;
}

}  // namespace stn

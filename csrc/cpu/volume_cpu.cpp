// CPU kernels for volumes (5-D input): at::parallel_for over output rows
// (forward) or batch elements (backward), with plain loops over each row's
// points around the volume math of sampler_math.h, in two phases as for images
// (sampler_cpu.cpp): up to kChunk points of a row located in a vectorised loop
// (locate_chunk; the sampling modes compile-time constants), then each
// channel's values or gradients of them. In 32-bit offsets within a volume
// where they fit (with_index_type). Deterministic: the backward pass gives each
// batch element to one thread, so grad_input is summed in a fixed order
// (ATen's: each element's terms in (d, h, w) order of their points).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../kernels.h"
#include "common.h"

namespace stn {
namespace {

constexpr int64_t kGrainSize = 32768;  // work per parallel task, as ATen's GRAIN_SIZE
constexpr int kChunk = 64;             // points of a row located at a time

// Gradient sinks: where the gradient with respect to each point's source
// coordinates goes. Points are numbered p = (d * H_out + h) * W_out + w.
template <typename acc_t>
struct GridGradSink3 {  // grad_grid (N, D_out, H_out, W_out, 3), contiguous
  acc_t* data;
  int64_t points;
  void add(int64_t n, int64_t p, int64_t, int64_t, int64_t, Point3<acc_t> g) {
    acc_t* d = data + (n * points + p) * 3;
    d[0] = g.x;
    d[1] = g.y;
    d[2] = g.z;
  }
  void finish(int64_t) {}
};

template <typename acc_t>
struct ThetaGradSink3 {  // grad_theta (N, 3, 4), contiguous
  acc_t* data;
  const TabulatedThetaGrid3<acc_t>* grid;
  ThetaGradSum3<acc_t> sum;
  void add(int64_t, int64_t, int64_t d, int64_t h, int64_t w, Point3<acc_t> g) {
    sum.add(grid->xt(w), grid->yt(h), grid->zt(d), g);
  }
  void finish(int64_t n) {
    std::copy(sum.v, sum.v + 12, data + 12 * n);
    sum = {};
  }
};

int64_t grain_for(int64_t row_cost) {
  return std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, row_cost));
}

// Phase 1: the points w0 .. w0 + size - 1 of output row (n, d, h), where each
// of their source positions lies, given to keep(i, located): a Located3, or
// for nearest only the point's neighbour (Corners3). With reflection
// padding, as for images (locate_run), the vectorised loop reflects only
// coordinates that need no call to fmod (reflects_exactly), standing in 0 for
// the others, which the scalar loop after it then locates.
template <Interpolation I, Padding P, bool kAlignCorners, typename acc_t, typename index_t,
          typename Source, typename KeepFn>
STN_VECTOR_CLONES void locate_chunk(const Source& src, int64_t n, int64_t d, int64_t h,
                                    int64_t w0, int size, const Volume<index_t> vol,
                                    KeepFn&& keep) {
  constexpr Sampling modes{I, P, kAlignCorners};
  constexpr bool kReflection = P == Padding::Reflection;
  Point3<acc_t> p[kChunk];
  for (int i = 0; i < size; ++i) p[i] = src.template point<acc_t>(n, d, h, w0 + i);
  auto bounded = [&](int i) {
    return !kReflection || (reflects_exactly(p[i].x, vol.W) && reflects_exactly(p[i].y, vol.H) &&
                            reflects_exactly(p[i].z, vol.D));
  };
  // Written out at each call rather than through a lambda, which GCC would not
  // inline into the vectorised loop.
  for (int i = 0; i < size; ++i) {  // vectorised
    const Point3<acc_t> q = bounded(i) ? p[i] : Point3<acc_t>{};
    if constexpr (I == Interpolation::Nearest) {
      keep(i, nearest_point<index_t, kReflection>(q, vol, P, kAlignCorners));
    } else {
      keep(i, locate<kReflection>(q, vol, modes));
    }
  }
  if (!kReflection) return;
  for (int i = 0; i < size; ++i) {
    if (bounded(i)) continue;
    if constexpr (I == Interpolation::Nearest) {
      keep(i, nearest_point<index_t>(p[i], vol, P, kAlignCorners));
    } else {
      keep(i, locate(p[i], vol, modes));
    }
  }
}

template <typename scalar_t, typename Source>
void volume_forward(const at::Tensor& input, const Source& src, const at::Tensor& output,
                    Sampling sampling) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto in = image3_of<const scalar_t>(input);
  const auto out = image3_of<scalar_t>(output);
  with_modes</*kVolume=*/true>(sampling, [&](auto I, auto P, auto kAlignCorners) {
    with_index_type(in, [&](auto index) {
      const auto vol = in.template volume_shape<decltype(index)>();
      constexpr bool nearest = I == Interpolation::Nearest;
      at::parallel_for(0, out.N * out.D * out.H, grain_for(out.W * in.C),
                       [&](int64_t begin, int64_t end) {
        Corners3<acc_t, decltype(index)> corners[kChunk];
        auto keep = [&](int i, const auto& located) {
          if constexpr (nearest) {
            corners[i] = located;
          } else {
            corners[i] = located.corners;
          }
        };
        for (int64_t row = begin; row < end; ++row) {
          const int64_t h = row % out.H, d = row / out.H % out.D, n = row / out.H / out.D;
          for (int64_t w0 = 0; w0 < out.W; w0 += kChunk) {
            const int size = static_cast<int>(std::min<int64_t>(kChunk, out.W - w0));
            locate_chunk<I, P, kAlignCorners, acc_t>(src, n, d, h, w0, size, vol, keep);
            for (int64_t c = 0; c < in.C; ++c) {
              const scalar_t* in_c = in.volume(n, c);
              scalar_t* out_c = out.volume(n, c) + out.offset(d, h, w0);
              for (int i = 0; i < size; ++i) {
                const auto& k = corners[i];
                // Nearest: interpolate's sum of its one neighbour, -0 + v * 1, is v.
                const acc_t v = !nearest   ? interpolate(in_c, k, vol)
                                : k.inside ? static_cast<acc_t>(in_c[k.base])
                                           : acc_t(0);
                out_c[i * out.sW] = static_cast<scalar_t>(v);
              }
            }
          }
        }
      });
    });
  });
}

template <typename scalar_t, typename Source, typename Sink>
void volume_backward(const at::Tensor& grad_output, const at::Tensor& input, const Source& src,
                     const at::Tensor& grad_input, Sink sink, bool need_grid_grad,
                     Sampling sampling) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto go = image3_of<const scalar_t>(grad_output);
  const auto in = image3_of<const scalar_t>(input);
  const bool need_input_grad = grad_input.defined();
  const auto gi = need_input_grad ? image3_of<acc_t>(grad_input) : Image3<acc_t>{};
  // grad_input is laid out like the input (see ops.cpp), so the input's offsets address it.
  with_modes</*kVolume=*/true>(sampling, [&](auto I, auto P, auto kAlignCorners) {
    with_index_type(in, [&](auto index) {
      using index_t = decltype(index);
      const auto vol = in.template volume_shape<index_t>();
      constexpr bool nearest = I == Interpolation::Nearest;
      // Nearest needs only each point's neighbour (kernels.h: no gradient to its grid).
      TORCH_INTERNAL_ASSERT(!(nearest && need_grid_grad), "nearest sampling's grid gradient");
      at::parallel_for(0, go.N, 1, [&](int64_t n0, int64_t n1) {
        Sink s = sink;
        Point3<acc_t> g[kChunk];
        Located3<acc_t, index_t> loc[kChunk];
        auto keep = [&](int i, const auto& located) {
          if constexpr (nearest) {
            loc[i].corners = located;
          } else {
            loc[i] = located;
          }
        };
        for (int64_t n = n0; n < n1; ++n) {
          for (int64_t row = 0; row < go.D * go.H; ++row) {
            const int64_t d = row / go.H, h = row % go.H;
            for (int64_t w0 = 0; w0 < go.W; w0 += kChunk) {
              const int size = static_cast<int>(std::min<int64_t>(kChunk, go.W - w0));
              locate_chunk<I, P, kAlignCorners, acc_t>(src, n, d, h, w0, size, vol, keep);
              if (need_grid_grad) std::fill(g, g + size, Point3<acc_t>{});
              // Each channel in turn: every grad_input element still gets its adds in
              // the order of the points, and every point its channels' in theirs.
              for (int64_t c = 0; c < in.C; ++c) {
                const scalar_t* in_c = in.volume(n, c);
                const scalar_t* go_c = go.volume(n, c) + go.offset(d, h, w0);
                acc_t* gi_c = need_input_grad ? gi.volume(n, c) : nullptr;
                auto add = [gi_c](index_t offset, acc_t v) { gi_c[offset] += v; };
                for (int i = 0; i < size; ++i) {
                  const acc_t grad_out = static_cast<acc_t>(go_c[i * go.sW]);
                  const auto& k = loc[i].corners;
                  if constexpr (nearest) {  // interpolate_backward's one add, of 1 * grad_out
                    if (need_input_grad && k.inside) add(k.base, grad_out);
                  } else {
                    interpolate_backward(in_c, grad_out, k, loc[i].t, vol, need_input_grad,
                                         need_grid_grad, add, g[i]);
                  }
                }
              }
              if constexpr (!nearest) {
                for (int i = 0; need_grid_grad && i < size; ++i) {
                  const auto& t = loc[i].t;
                  s.add(n, row * go.W + w0 + i, d, h, w0 + i,
                        {g[i].x * t.x.d, g[i].y * t.y.d, g[i].z * t.z.d});
                }
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
                                  "stn_cuda::grid_sample (5-D)", [&] {
    volume_forward<scalar_t>(input, tensor_grid3_of<scalar_t>(grid), output, sampling);
  });
}

void grid_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                          const at::Tensor& grid, const at::Tensor& grad_input,
                          const at::Tensor& grad_grid, Sampling sampling,
                          bool /*deterministic: always*/) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::grid_sample_backward (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GridGradSink3<acc_t> sink{grad_grid.defined() ? grad_grid.data_ptr<acc_t>() : nullptr,
                                    grid.size(1) * grid.size(2) * grid.size(3)};
    volume_backward<scalar_t>(grad_output, input, tensor_grid3_of<scalar_t>(grid), grad_input,
                              sink, grad_grid.defined(), sampling);
  });
}

void affine_sample_forward(const at::Tensor& input, const at::Tensor& theta,
                           const at::Tensor& output, Sampling sampling) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const TabulatedThetaGrid3<acc_t> src(
        theta_grid3_of<acc_t>(theta, output.sizes().slice(2), sampling.align_corners));
    volume_forward<scalar_t>(input, src, output, sampling);
  });
}

void affine_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& theta, const at::Tensor& grad_input,
                            const at::Tensor& grad_theta, Sampling sampling,
                            bool /*deterministic: always*/) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample_backward (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const TabulatedThetaGrid3<acc_t> src(
        theta_grid3_of<acc_t>(theta, grad_output.sizes().slice(2), sampling.align_corners));
    const ThetaGradSink3<acc_t> sink{
        grad_theta.defined() ? grad_theta.data_ptr<acc_t>() : nullptr, &src, {}};
    volume_backward<scalar_t>(grad_output, input, src, grad_input, sink, grad_theta.defined(),
                              sampling);
  });
}

void affine_grid_forward(const at::Tensor& theta, const at::Tensor& grid, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grid.scalar_type(),
                                  "stn_cuda::affine_grid (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grid.size(0), D = grid.size(1), H = grid.size(2), W = grid.size(3);
    const TabulatedThetaGrid3<acc_t> src(
        theta_grid3_of<acc_t>(theta, grid.sizes().slice(1, 3), align_corners));
    scalar_t* out = grid.data_ptr<scalar_t>();
    at::parallel_for(0, N * D * H, grain_for(W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t h = row % H, d = row / H % D, n = row / H / D;
        for (int64_t w = 0; w < W; ++w) {
          const auto p = src.template point<acc_t>(n, d, h, w);
          scalar_t* o = out + (row * W + w) * 3;
          o[0] = static_cast<scalar_t>(p.x);
          o[1] = static_cast<scalar_t>(p.y);
          o[2] = static_cast<scalar_t>(p.z);
        }
      }
    });
  });
}

void affine_grid_backward(const at::Tensor& grad_grid, const at::Tensor& grad_theta,
                          bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_grid.scalar_type(),
                                  "stn_cuda::affine_grid_backward (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grad_grid.size(0), D = grad_grid.size(1), H = grad_grid.size(2),
                  W = grad_grid.size(3);
    const auto gg = tensor_grid3_of<scalar_t>(grad_grid);
    const TabulatedThetaGrid3<acc_t> targets(
        theta_grid3_of<acc_t>(at::Tensor(), grad_grid.sizes().slice(1, 3), align_corners));
    const ThetaGradSink3<acc_t> sink{grad_theta.data_ptr<acc_t>(), &targets, {}};
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      ThetaGradSink3<acc_t> s = sink;
      for (int64_t n = n0; n < n1; ++n) {
        int64_t p = 0;
        for (int64_t d = 0; d < D; ++d)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w < W; ++w, ++p)
              s.add(n, p, d, h, w, gg.template point<acc_t>(n, d, h, w));
        s.finish(n);
      }
    });
  });
}

}  // namespace

const Kernels& cpu_volume_kernels() {
  static const Kernels k{grid_sample_forward, grid_sample_backward, affine_sample_forward,
                         affine_sample_backward, affine_grid_forward, affine_grid_backward};
  return k;
}

}  // namespace stn

// CUDA kernels: one thread per (output point, group of channels) around the
// per-point math of sampler_math.h.
//
// Threads cover the output points of one batch element along x, channel groups
// along y and batch elements along z. Splitting channels across threads keeps
// the GPU busy when there are few points and many channels (torch loops over
// every channel inside one thread). grad_input is scattered with atomic adds
// into an accumulation-type buffer (Scatter::WarpRuns: summed over the lanes of
// a warp that share a corner first, scatter.cuh); grad_theta is reduced per
// block, then added once per block and batch element. Tuning::channel_vectors
// (vectors.cuh) has a thread take a channels_last input's channels 16 bytes at
// a time.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include "../kernels.h"
#include "launch.cuh"
#include "scatter.cuh"
#include "vectors.cuh"

namespace stn {
namespace {

// Gradient sinks: where the gradient with respect to each point's source
// coordinates goes.
template <typename acc_t>
struct GridGradSink {  // grad_grid (N, H_out, W_out, 2), contiguous
  acc_t* data;
  int64_t H, W;
  bool atomic;  // several channel groups add into the same point
  __device__ void add(int64_t n, int64_t h, int64_t w, Point2<acc_t> g) {
    store_point_grad(data + ((n * H + h) * W + w) * 2, {g.x, g.y}, atomic);
  }
  __device__ void finish(int64_t) {}
};

// grad_theta (N, 2, 3), contiguous: summed per block, then as reduce_block_sums
// does.
template <typename acc_t>
struct ThetaGradSink {
  acc_t* data;
  ThetaGrid<acc_t> src;
  acc_t* partials = nullptr;
  ThetaGradSum<acc_t> sum = {};
  __device__ void add(int64_t, int64_t h, int64_t w, Point2<acc_t> g) {
    sum.add(src.xt(w), src.yt(h), g);
  }
  __device__ void finish(int64_t n) {
    reduce_block_sums(data, partials, n, sum.v);
    sum = {};
  }
};

// kBicubic: mode="bicubic" (16 taps per point) in a kernel of its own, so that
// its registers do not weigh on the bilinear and nearest kernels.
// kV: the channels per step, 1 or a channel vector's (vectors.cuh).
// index_t: of output points and plane offsets (with_point_index_type).
template <bool kBicubic, int kV, typename index_t, typename scalar_t, typename Source>
__global__ void __launch_bounds__(kMaxThreads)
sample_forward_kernel(Image<const scalar_t> in, Image<scalar_t> out, Source src,
                      int64_t channels_per_thread, Sampling sampling) {
  static_assert(!kBicubic || kV == 1, "bicubic reads one channel at a time");
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c0 = blockIdx.y * channels_per_thread;
  const int64_t c1 = min(c0 + channels_per_thread, in.C);
  const auto plane = in.template plane_shape<index_t>();
  const index_t W_out = static_cast<index_t>(out.W), points = static_cast<index_t>(out.H * out.W);
  STN_FOR_EACH_N(out.N) {
    STN_FOR_EACH_POINT(points) {
      const index_t h = p / W_out, w = p - h * W_out;
      const auto pt = src.template point<acc_t>(n, h, w);
      if constexpr (kBicubic) {
        const auto b = bicubic_point<index_t>(pt.x, pt.y, plane, sampling.padding,
                                              sampling.align_corners);
        for (int64_t c = c0; c < c1; ++c) {
          out.plane(n, c)[out.offset(h, w)] =
              static_cast<scalar_t>(bicubic_interpolate(in.plane(n, c), b));
        }
      } else {
        const auto b = bilinear_point<index_t>(pt.x, pt.y, in.H, in.W, sampling.padding,
                                               sampling.align_corners);
        const auto corner = corners(b, plane, sampling.interpolation);
        if constexpr (kV == 1) {
          for (int64_t c = c0; c < c1; ++c) {
            out.plane(n, c)[out.offset(h, w)] =
                static_cast<scalar_t>(interpolate(in.plane(n, c), corner, plane));
          }
        } else {
          for (int64_t c = c0; c < c1; c += kV) {
            acc_t v[kV];
            interpolate_channels(ChannelLoader<kV, scalar_t>{in.plane(n, c)}, corner, plane, v);
STN_UNROLL
            for (int i = 0; i < kV; ++i) {
              out.plane(n, c + i)[out.offset(h, w)] = static_cast<scalar_t>(v[i]);
            }
          }
        }
      }
    }
  }
}

// kScatter: how grad_input is added into (Scatter in kernels.h). WarpRuns runs
// the loop over points by whole warps (scatter.cuh); bicubic and channel
// vectors (kV > 1, as in sample_forward_kernel) have Atomic alone.
template <bool kBicubic, Scatter kScatter, int kV, typename index_t, typename scalar_t,
          typename Source, typename Sink>
__global__ void __launch_bounds__(kMaxThreads)
sample_backward_kernel(Image<const scalar_t> grad_out, Image<const scalar_t> in,
                       Image<at::opmath_type<scalar_t>> grad_in, Source src, Sink sink,
                       bool need_grid_grad, int64_t channels_per_thread, Sampling sampling) {
  static_assert(!kBicubic || (kScatter == Scatter::Atomic && kV == 1),
                "bicubic scatters atomically, one channel at a time");
  static_assert(kV == 1 || kScatter == Scatter::Atomic, "channel vectors scatter atomically");
  using acc_t = at::opmath_type<scalar_t>;
  const bool need_input_grad = grad_in.data != nullptr;
  const int64_t c0 = blockIdx.y * channels_per_thread;
  const int64_t c1 = min(c0 + channels_per_thread, in.C);
  // grad_in is laid out like in (see ops.cpp), so in's offsets address it.
  const auto plane = in.template plane_shape<index_t>();
  const index_t W_out = static_cast<index_t>(grad_out.W);
  const index_t points = static_cast<index_t>(grad_out.H * grad_out.W);
  // grad_input's plane of channel c of batch element n, null where it is not wanted.
  auto grad_in_plane = [&](int64_t n, int64_t c) {
    return need_input_grad ? grad_in.plane(n, c) : nullptr;
  };
  auto atomic_add_into = [](acc_t* plane_data) {
    return [plane_data](index_t offset, acc_t v) { atomicAdd(plane_data + offset, v); };
  };
  // The backward of point p of batch element n (`lanes`: the warp's lanes
  // that run it together, for WarpRuns).
  auto backward_at = [&](int64_t n, index_t p, unsigned lanes) {
    const index_t h = p / W_out, w = p - h * W_out;
    const auto pt = src.template point<acc_t>(n, h, w);
    auto grad_out_at = [&](int64_t c) {
      return static_cast<acc_t>(grad_out.plane(n, c)[grad_out.offset(h, w)]);
    };
    // The point's backward, kV channels a step: `step(c, g)` scatters channels
    // c.. into grad_input and accumulates d loss / d pixel into g, which the
    // sink gets scaled by d pixel / d coordinate.
    auto point_backward = [&](Point2<acc_t> d_pixel, auto&& step) {
      Point2<acc_t> g{acc_t(0), acc_t(0)};
      for (int64_t c = c0; c < c1; c += kV) step(c, g);
      if (need_grid_grad) sink.add(n, h, w, {g.x * d_pixel.x, g.y * d_pixel.y});
    };
    if constexpr (kBicubic) {
      const auto b = bicubic_point<index_t>(pt.x, pt.y, plane, sampling.padding,
                                            sampling.align_corners);
      point_backward({b.dx, b.dy}, [&](int64_t c, Point2<acc_t>& g) {
        bicubic_backward(in.plane(n, c), grad_out_at(c), b, need_input_grad, need_grid_grad,
                         atomic_add_into(grad_in_plane(n, c)), g);
      });
    } else {
      const auto b = bilinear_point<index_t>(pt.x, pt.y, in.H, in.W, sampling.padding,
                                             sampling.align_corners);
      const auto corner = corners(b, plane, sampling.interpolation);
      if constexpr (kScatter == Scatter::WarpRuns) {
        // need_input_grad is the same for the whole launch: every lane of
        // `lanes` calls scatter.add as often, or none does.
        const WarpScatter<acc_t, index_t> scatter(lanes, corner, plane, sampling.interpolation);
        point_backward({b.dx, b.dy}, [&](int64_t c, Point2<acc_t>& g) {
          const acc_t go = grad_out_at(c);
          if (need_input_grad) scatter.add(grad_in_plane(n, c), go, corner, plane);
          interpolate_backward(in.plane(n, c), go, corner, b, plane, /*need_input_grad=*/false,
                               need_grid_grad, [](index_t, acc_t) {}, g);
        });
      } else if constexpr (kV > 1) {
        point_backward({b.dx, b.dy}, [&](int64_t c, Point2<acc_t>& g) {
          acc_t go[kV];
STN_UNROLL
          for (int i = 0; i < kV; ++i) go[i] = grad_out_at(c + i);
          interpolate_backward_channels(ChannelLoader<kV, scalar_t>{in.plane(n, c)}, go, corner,
                                        b, plane, need_input_grad, need_grid_grad,
                                        ChannelAdder<kV, acc_t>{grad_in_plane(n, c)}, g);
        });
      } else {
        point_backward({b.dx, b.dy}, [&](int64_t c, Point2<acc_t>& g) {
          interpolate_backward(in.plane(n, c), grad_out_at(c), corner, b, plane, need_input_grad,
                               need_grid_grad, atomic_add_into(grad_in_plane(n, c)), g);
        });
      }
    }
  };
  STN_FOR_EACH_N(grad_out.N) {
    if constexpr (kScatter == Scatter::WarpRuns) {
      STN_FOR_EACH_WARP_POINT(points, lanes) backward_at(n, p, lanes);
    } else {
      STN_FOR_EACH_POINT(points) backward_at(n, p, 0xffffffffu);
    }
    if (need_grid_grad) sink.finish(n);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
affine_grid_kernel(ThetaGrid<at::opmath_type<scalar_t>> src, scalar_t* grid, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  STN_FOR_EACH_N(N) {
    STN_FOR_EACH_POINT(src.H_out * src.W_out) {
      const int64_t h = p / src.W_out, w = p - h * src.W_out;
      const auto pt = src.template point<acc_t>(n, h, w);
      scalar_t* out = grid + (n * src.H_out * src.W_out + p) * 2;
      out[0] = static_cast<scalar_t>(pt.x);
      out[1] = static_cast<scalar_t>(pt.y);
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
affine_grid_backward_kernel(TensorGrid<scalar_t> grad_grid,
                            ThetaGradSink<at::opmath_type<scalar_t>> sink, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto& src = sink.src;
  STN_FOR_EACH_N(N) {
    STN_FOR_EACH_POINT(src.H_out * src.W_out) {
      const int64_t h = p / src.W_out, w = p - h * src.W_out;
      sink.add(n, h, w, grad_grid.template point<acc_t>(n, h, w));
    }
    sink.finish(n);
  }
}

template <typename scalar_t, typename Source>
void sample_forward(const at::Tensor& input, const Source& src, const at::Tensor& output,
                    Sampling sampling) {
  const int64_t points = output.size(2) * output.size(3);
  const auto in = image_of<const scalar_t>(input);
  const auto plan = plan_launch(output.size(0), output.size(1), points,
                                channel_vector(in, at::Tensor(), sampling, points));
  auto launch = [&](auto kernel) {
    launch_kernel(kernel, plan, in, image_of<scalar_t>(output), src, plan.channels_per_thread,
                  sampling);
  };
  constexpr int V = kChannelVector<scalar_t>;
  if (plan.vector > 1) return launch(sample_forward_kernel<false, V, int32_t, scalar_t, Source>);
  with_point_index_type(in, points, [&](auto index) {
    using index_t = decltype(index);
    launch(sampling.interpolation == Interpolation::Bicubic
               ? sample_forward_kernel<true, 1, index_t, scalar_t, Source>
               : sample_forward_kernel<false, 1, index_t, scalar_t, Source>);
  });
}

// The backward's plan: channel vectors where channel_vector allows them.
template <typename scalar_t>
LaunchPlan plan_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                const at::Tensor& grad_input, Sampling sampling,
                                bool deterministic) {
  const int vector = channel_vector(image_of<const scalar_t>(input), grad_input, sampling,
                                    grad_output.size(2) * grad_output.size(3));
  return plan_backward(grad_output, deterministic, vector);
}

template <typename scalar_t, typename Source, typename Sink>
void sample_backward(const at::Tensor& grad_output, const at::Tensor& input, const Source& src,
                     const at::Tensor& grad_input, bool need_grid_grad, Sampling sampling,
                     const LaunchPlan& plan, const Sink& sink) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto in = image_of<const scalar_t>(input);
  auto launch = [&](auto kernel) {
    launch_kernel(kernel, plan, image_of<const scalar_t>(grad_output), in,
                  grad_input.defined() ? image_of<acc_t>(grad_input) : Image<acc_t>{}, src, sink,
                  need_grid_grad, plan.channels_per_thread, sampling);
  };
  constexpr int V = kChannelVector<scalar_t>;
  if (plan.vector > 1) {
    return launch(
        sample_backward_kernel<false, Scatter::Atomic, V, int32_t, scalar_t, Source, Sink>);
  }
  // Only grad_input is scattered: without it (the deterministic path's grid or
  // theta gradient alone), Atomic.
  const bool warp_runs = grad_input.defined() && tuning().scatter == Scatter::WarpRuns;
  TORCH_INTERNAL_ASSERT(!warp_runs || plan.block.x % 32 == 0);  // whole warps: scatter.cuh
  with_point_index_type(in, grad_output.size(2) * grad_output.size(3), [&](auto index) {
    using index_t = decltype(index);
    launch(sampling.interpolation == Interpolation::Bicubic
               ? sample_backward_kernel<true, Scatter::Atomic, 1, index_t, scalar_t, Source, Sink>
           : warp_runs
               ? sample_backward_kernel<false, Scatter::WarpRuns, 1, index_t, scalar_t, Source, Sink>
               : sample_backward_kernel<false, Scatter::Atomic, 1, index_t, scalar_t, Source, Sink>);
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
                          bool deterministic) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::grid_sample_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto plan =
        plan_sample_backward<scalar_t>(grad_output, input, grad_input, sampling, deterministic);
    const bool split = splits_channels(plan);
    if (split && grad_grid.defined()) zero_async(grad_grid);  // the channel groups add into it
    const GridGradSink<acc_t> sink{grad_grid.defined() ? grad_grid.data_ptr<acc_t>() : nullptr,
                                   grid.size(1), grid.size(2), split};
    sample_backward<scalar_t>(grad_output, input, tensor_grid_of<scalar_t>(grid), grad_input,
                              grad_grid.defined(), sampling, plan, sink);
  });
}

void affine_sample_forward(const at::Tensor& input, const at::Tensor& theta,
                           const at::Tensor& output, Sampling sampling) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto src = theta_grid_of<acc_t>(theta, output.sizes().slice(2), sampling.align_corners);
    sample_forward<scalar_t>(input, src, output, sampling);
  });
}

void affine_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& theta, const at::Tensor& grad_input,
                            const at::Tensor& grad_theta, Sampling sampling,
                            bool deterministic) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto src =
        theta_grid_of<acc_t>(theta, grad_output.sizes().slice(2), sampling.align_corners);
    const auto plan =
        plan_sample_backward<scalar_t>(grad_output, input, grad_input, sampling, deterministic);
    const ThetaGradSink<acc_t> sink{
        grad_theta.defined() ? grad_theta.data_ptr<acc_t>() : nullptr, src};
    with_theta_sink(sink, grad_theta, plan, deterministic, [&](const auto& s) {
      sample_backward<scalar_t>(grad_output, input, src, grad_input, grad_theta.defined(),
                                sampling, plan, s);
    });
  });
}

void affine_grid_forward(const at::Tensor& theta, const at::Tensor& grid, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grid.scalar_type(),
                                  "stn_cuda::affine_grid", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grid.size(0), H = grid.size(1), W = grid.size(2);
    const auto plan = plan_launch(N, 1, H * W);
    launch_kernel(affine_grid_kernel<scalar_t>, plan,
                  theta_grid_of<acc_t>(theta, {H, W}, align_corners), grid.data_ptr<scalar_t>(), N);
  });
}

// Deterministic: per-block partial sums, added in a fixed order (cheap here,
// with no sampling to weigh against).
void affine_grid_backward(const at::Tensor& grad_grid, const at::Tensor& grad_theta,
                          bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_grid.scalar_type(),
                                  "stn_cuda::affine_grid_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grad_grid.size(0), H = grad_grid.size(1), W = grad_grid.size(2);
    const auto plan = plan_launch(N, 1, H * W);
    const ThetaGradSink<acc_t> sink{grad_theta.data_ptr<acc_t>(),
                                    theta_grid_of<acc_t>(at::Tensor(), {H, W}, align_corners)};
    with_theta_sink(sink, grad_theta, plan, /*deterministic=*/true, [&](const auto& s) {
      launch_kernel(affine_grid_backward_kernel<scalar_t>, plan,
                    tensor_grid_of<scalar_t>(grad_grid), s, N);
    });
  });
}

}  // namespace

const Kernels& cuda_kernels() {
  static const Kernels k{grid_sample_forward, grid_sample_backward, affine_sample_forward,
                         affine_sample_backward, affine_grid_forward, affine_grid_backward};
  return k;
}

}  // namespace stn

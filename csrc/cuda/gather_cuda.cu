// CUDA kernels of the deterministic backward (gather.h) around gather_math.h:
// no atomic adds anywhere. grad_input: one thread per (pixel, channel group),
// gathering in a fixed order. grad_grid / grad_theta: one thread per point over
// all its channels; theta's sums reduced per block into a buffer, whose blocks
// at::sum then adds in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "../gather.h"
#include "../kernels.h"
#include "launch.cuh"

namespace stn {
namespace {

template <typename acc_t, typename Source>
__global__ void __launch_bounds__(kMaxThreads)
cells_kernel(Source src, int64_t N, int64_t H_out, int64_t W_out, CellShape cells,
             int64_t unused, int64_t* keys, acc_t* weights, Sampling sampling) {
  STN_FOR_EACH_N(N) {
    STN_FOR_EACH_POINT(H_out * W_out) {
      const int64_t h = p / W_out, w = p - h * W_out;
      const auto e = cell_entry(src.template point<acc_t>(n, h, w), n, cells, unused, sampling);
      const int64_t i = n * H_out * W_out + p;
      keys[i] = e.key;
#pragma unroll
      for (int k = 0; k < 4; ++k) weights[4 * i + k] = e.weight[k];
    }
  }
}

template <typename acc_t, typename Source>
void cells_of(const Source& src, int64_t N, int64_t H_out, int64_t W_out, const at::Tensor& input,
              int64_t unused, const at::Tensor& keys, const at::Tensor& weights,
              Sampling sampling) {
  const auto plan = plan_launch(N, 1, H_out * W_out);
  cells_kernel<acc_t><<<plan.grid, plan.block, 0, current_stream()>>>(
      src, N, H_out, W_out, CellShape{input.size(2), input.size(3)}, unused,
      keys.data_ptr<int64_t>(), weights.data_ptr<acc_t>(), sampling);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void cells(const at::Tensor& source, const at::Tensor& input, at::IntArrayRef out_size,
           int64_t unused, const at::Tensor& keys, const at::Tensor& weights, Sampling sampling) {
  with_point_source(source, input, out_size, sampling.align_corners, [&](auto s, const auto& src) {
    cells_of<at::opmath_type<decltype(s)>>(src, source.size(0), out_size[0], out_size[1], input,
                                           unused, keys, weights, sampling);
  });
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
gather_kernel(Image<const scalar_t> grad_out, Image<at::opmath_type<scalar_t>> grad_in,
              CellRuns<at::opmath_type<scalar_t>> runs, int64_t channels_per_thread) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c0 = blockIdx.y * channels_per_thread;
  const int64_t c1 = min(c0 + channels_per_thread, grad_in.C);
  STN_FOR_EACH_N(grad_in.N) {
    STN_FOR_EACH_POINT(grad_in.H * grad_in.W) {
      const int64_t y = p / grad_in.W, x = p - y * grad_in.W;
      for (int64_t c = c0; c < c1; ++c) {
        grad_in.plane(n, c)[grad_in.offset(y, x)] = gather_pixel<acc_t>(
            runs, n, y, x, grad_out.plane(n, c), grad_out.sH, grad_out.sW);
      }
    }
  }
}

void gather(const at::Tensor& grad_output, const at::Tensor& starts, const at::Tensor& order,
            const at::Tensor& weights, const at::Tensor& grad_input, Interpolation interpolation) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "stn_cuda::gather", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto go = image_of<const scalar_t>(grad_output);
    const auto gi = image_of<acc_t>(grad_input);
    const auto runs =
        cell_runs_of<acc_t>(starts, order, weights, grad_input, grad_output, interpolation);
    const auto plan = plan_launch(gi.N, gi.C, gi.H * gi.W);
    gather_kernel<scalar_t><<<plan.grid, plan.block, 0, current_stream()>>>(
        go, gi, runs, plan.channels_per_thread);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Where a point's gradient goes: stored (grad_grid), or summed per block into
// partials (grad_theta: ThetaGradSink of launch.cuh, with partials).
template <typename acc_t>
struct GridStore {
  acc_t* data;
  int64_t H, W;
  __device__ void add(int64_t n, int64_t h, int64_t w, Point2<acc_t> g) {
    acc_t* d = data + ((n * H + h) * W + w) * 2;
    d[0] = g.x;
    d[1] = g.y;
  }
  __device__ void finish(int64_t) {}
};

// One thread per point, every channel: the point's gradient in a fixed order.
template <typename scalar_t, typename Source, typename Sink>
__global__ void __launch_bounds__(kMaxThreads)
point_grad_kernel(Image<const scalar_t> grad_out, Image<const scalar_t> in, Source src, Sink sink,
                  Sampling sampling) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto plane = in.template plane_shape<int64_t>();
  auto no_input_grad = [](int64_t, acc_t) {};
  STN_FOR_EACH_N(grad_out.N) {
    STN_FOR_EACH_POINT(grad_out.H * grad_out.W) {
      const int64_t h = p / grad_out.W, w = p - h * grad_out.W;
      const auto pt = src.template point<acc_t>(n, h, w);
      const auto b = bilinear_point<int64_t>(pt.x, pt.y, in.H, in.W, sampling.padding,
                                             sampling.align_corners);
      const auto corner = corners(b, plane, sampling.interpolation);
      Point2<acc_t> g{acc_t(0), acc_t(0)};
      // Nearest sampling is piecewise constant: its gradient is 0.
      if (sampling.interpolation == Interpolation::Bilinear) {
        for (int64_t c = 0; c < in.C; ++c) {
          const acc_t go = static_cast<acc_t>(grad_out.plane(n, c)[grad_out.offset(h, w)]);
          interpolate_backward(in.plane(n, c), go, corner, b, plane, false, true, no_input_grad, g);
        }
      }
      sink.add(n, h, w, {g.x * b.dx, g.y * b.dy});
    }
    sink.finish(n);
  }
}

template <typename scalar_t, typename Source, typename Sink>
void point_grads(const at::Tensor& grad_output, const at::Tensor& input, const Source& src,
                 const Sink& sink, const LaunchPlan& plan, Sampling sampling) {
  point_grad_kernel<scalar_t><<<plan.grid, plan.block, 0, current_stream()>>>(
      image_of<const scalar_t>(grad_output), image_of<const scalar_t>(input), src, sink,
      sampling);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void source_grad(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& source,
                 const at::Tensor& grad_source, Sampling sampling) {
  const auto plan =
      plan_launch(grad_output.size(0), 1, grad_output.size(2) * grad_output.size(3));
  const auto out_size = grad_output.sizes().slice(2);
  with_point_source(source, input, out_size, sampling.align_corners, [&](auto s, const auto& src) {
    using scalar_t = decltype(s);
    using acc_t = at::opmath_type<scalar_t>;
    if constexpr (std::is_same_v<std::decay_t<decltype(src)>, ThetaGrid<acc_t>>) {
      const at::Tensor partials = block_partials(grad_source, plan);
      point_grads<scalar_t>(grad_output, input, src,
                            ThetaGradSink<acc_t>{nullptr, src, partials.data_ptr<acc_t>()}, plan,
                            sampling);
      sum_block_partials(partials, grad_source);
    } else {
      point_grads<scalar_t>(grad_output, input, src,
                            GridStore<acc_t>{grad_source.data_ptr<acc_t>(), source.size(1),
                                             source.size(2)},
                            plan, sampling);
    }
  });
}

}  // namespace

const GatherKernels& cuda_gather_kernels() {
  static const GatherKernels k{cells, gather, source_grad};
  return k;
}

}  // namespace stn

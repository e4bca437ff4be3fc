// CUDA kernels for volumes (5-D input): one thread per (output point, group of
// channels), with 32-bit indices where they fit, as sampler_cuda.cu for images,
// around the volume math of sampler_math.h. grad_input is scattered with atomic
// adds into an accumulation-type buffer; grad_theta is reduced per block, then
// added once per block and batch element.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include "../kernels.h"
#include "launch.cuh"

namespace stn {
namespace {

// Gradient sinks: where the gradient with respect to each point's source
// coordinates goes. Points are numbered p = (d * H_out + h) * W_out + w.
template <typename acc_t>
struct GridGradSink3 {  // grad_grid (N, D_out, H_out, W_out, 3), contiguous
  acc_t* data;
  int64_t points;
  bool atomic;  // several channel groups add into the same point
  __device__ void add(int64_t n, int64_t p, int64_t, int64_t, int64_t, Point3<acc_t> g) {
    store_point_grad(data + (n * points + p) * 3, {g.x, g.y, g.z}, atomic);
  }
  __device__ void finish(int64_t) {}
};

// grad_theta (N, 3, 4), contiguous, as ThetaGradSink (sampler_cuda.cu) for images.
template <typename acc_t>
struct ThetaGradSink3 {
  acc_t* data;
  ThetaGrid3<acc_t> src;
  acc_t* partials = nullptr;
  ThetaGradSum3<acc_t> sum = {};
  __device__ void add(int64_t, int64_t, int64_t d, int64_t h, int64_t w, Point3<acc_t> g) {
    sum.add(src.xt(w), src.yt(h), src.zt(d), g);
  }
  __device__ void finish(int64_t n) {
    reduce_block_sums(data, partials, n, sum.v);
    sum = {};
  }
};

// Output point p of a (D, H, W) grid, as (d, h, w).
template <typename index_t>
struct Index3 {
  index_t d, h, w;
};
template <typename index_t>
__device__ Index3<index_t> unflatten(index_t p, index_t H, index_t W) {
  const index_t dh = p / W, w = p - dh * W;
  const index_t d = dh / H;
  return {d, dh - d * H, w};
}

// index_t: of output points and volume offsets (with_point_index_type).
template <typename index_t, typename scalar_t, typename Source>
__global__ void __launch_bounds__(kMaxThreads)
volume_forward_kernel(Image3<const scalar_t> in, Image3<scalar_t> out, Source src,
                      int64_t channels_per_thread, Sampling sampling) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c0 = blockIdx.y * channels_per_thread;
  const int64_t c1 = min(c0 + channels_per_thread, in.C);
  const auto vol = in.template volume_shape<index_t>();
  const index_t H_out = static_cast<index_t>(out.H), W_out = static_cast<index_t>(out.W);
  const index_t points = static_cast<index_t>(out.D * out.H * out.W);
  STN_FOR_EACH_N(out.N) {
    STN_FOR_EACH_POINT(points) {
      const auto i = unflatten(p, H_out, W_out);
      const auto loc = locate(src.template point<acc_t>(n, i.d, i.h, i.w), vol, sampling);
      for (int64_t c = c0; c < c1; ++c) {
        out.volume(n, c)[out.offset(i.d, i.h, i.w)] =
            static_cast<scalar_t>(interpolate(in.volume(n, c), loc.corners, vol));
      }
    }
  }
}

template <typename index_t, typename scalar_t, typename Source, typename Sink>
__global__ void __launch_bounds__(kMaxThreads)
volume_backward_kernel(Image3<const scalar_t> grad_out, Image3<const scalar_t> in,
                       Image3<at::opmath_type<scalar_t>> grad_in, Source src, Sink sink,
                       bool need_grid_grad, int64_t channels_per_thread, Sampling sampling) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool need_input_grad = grad_in.data != nullptr;
  const int64_t c0 = blockIdx.y * channels_per_thread;
  const int64_t c1 = min(c0 + channels_per_thread, in.C);
  // grad_in is laid out like in (see ops.cpp), so in's offsets address it.
  const auto vol = in.template volume_shape<index_t>();
  const index_t H_out = static_cast<index_t>(grad_out.H), W_out = static_cast<index_t>(grad_out.W);
  const index_t points = static_cast<index_t>(grad_out.D * grad_out.H * grad_out.W);
  STN_FOR_EACH_N(grad_out.N) {
    STN_FOR_EACH_POINT(points) {
      const auto i = unflatten(p, H_out, W_out);
      const auto loc = locate(src.template point<acc_t>(n, i.d, i.h, i.w), vol, sampling);
      const auto& t = loc.t;
      Point3<acc_t> g{acc_t(0), acc_t(0), acc_t(0)};
      for (int64_t c = c0; c < c1; ++c) {
        acc_t* grad_in_volume = need_input_grad ? grad_in.volume(n, c) : nullptr;
        auto add = [&](index_t offset, acc_t v) { atomicAdd(grad_in_volume + offset, v); };
        const acc_t go =
            static_cast<acc_t>(grad_out.volume(n, c)[grad_out.offset(i.d, i.h, i.w)]);
        interpolate_backward(in.volume(n, c), go, loc.corners, t, vol, need_input_grad,
                             need_grid_grad, add, g);
      }
      if (need_grid_grad) {
        sink.add(n, p, i.d, i.h, i.w, {g.x * t.x.d, g.y * t.y.d, g.z * t.z.d});
      }
    }
    if (need_grid_grad) sink.finish(n);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
affine_grid3_kernel(ThetaGrid3<at::opmath_type<scalar_t>> src, scalar_t* grid, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t points = src.D_out * src.H_out * src.W_out;
  STN_FOR_EACH_N(N) {
    STN_FOR_EACH_POINT(points) {
      const auto i = unflatten(p, src.H_out, src.W_out);
      const auto pt = src.template point<acc_t>(n, i.d, i.h, i.w);
      scalar_t* out = grid + (n * points + p) * 3;
      out[0] = static_cast<scalar_t>(pt.x);
      out[1] = static_cast<scalar_t>(pt.y);
      out[2] = static_cast<scalar_t>(pt.z);
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
affine_grid3_backward_kernel(TensorGrid3<scalar_t> grad_grid,
                             ThetaGradSink3<at::opmath_type<scalar_t>> sink, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto& src = sink.src;
  STN_FOR_EACH_N(N) {
    STN_FOR_EACH_POINT(src.D_out * src.H_out * src.W_out) {
      const auto i = unflatten(p, src.H_out, src.W_out);
      sink.add(n, p, i.d, i.h, i.w, grad_grid.template point<acc_t>(n, i.d, i.h, i.w));
    }
    sink.finish(n);
  }
}

int64_t points_of(const at::Tensor& t) { return t.size(2) * t.size(3) * t.size(4); }

template <typename scalar_t, typename Source>
void volume_forward(const at::Tensor& input, const Source& src, const at::Tensor& output,
                    Sampling sampling) {
  const auto plan = plan_launch(output.size(0), output.size(1), points_of(output));
  const auto in = image3_of<const scalar_t>(input);
  with_point_index_type(in, points_of(output), [&](auto index) {
    launch_kernel(volume_forward_kernel<decltype(index), scalar_t, Source>, plan, in,
                  image3_of<scalar_t>(output), src, plan.channels_per_thread, sampling);
  });
}

template <typename scalar_t, typename Source, typename Sink>
void volume_backward(const at::Tensor& grad_output, const at::Tensor& input, const Source& src,
                     const at::Tensor& grad_input, bool need_grid_grad, Sampling sampling,
                     const LaunchPlan& plan, const Sink& sink) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto in = image3_of<const scalar_t>(input);
  with_point_index_type(in, points_of(grad_output), [&](auto index) {
    launch_kernel(volume_backward_kernel<decltype(index), scalar_t, Source, Sink>, plan,
                  image3_of<const scalar_t>(grad_output), in,
                  grad_input.defined() ? image3_of<acc_t>(grad_input) : Image3<acc_t>{}, src,
                  sink, need_grid_grad, plan.channels_per_thread, sampling);
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
                          bool deterministic) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::grid_sample_backward (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto plan = plan_backward(grad_output, deterministic);
    const bool split = splits_channels(plan);
    if (split && grad_grid.defined()) zero_async(grad_grid);  // the channel groups add into it
    const GridGradSink3<acc_t> sink{grad_grid.defined() ? grad_grid.data_ptr<acc_t>() : nullptr,
                                    points_of(grad_output), split};
    volume_backward<scalar_t>(grad_output, input, tensor_grid3_of<scalar_t>(grid), grad_input,
                              grad_grid.defined(), sampling, plan, sink);
  });
}

void affine_sample_forward(const at::Tensor& input, const at::Tensor& theta,
                           const at::Tensor& output, Sampling sampling) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto src = theta_grid3_of<acc_t>(theta, output.sizes().slice(2), sampling.align_corners);
    volume_forward<scalar_t>(input, src, output, sampling);
  });
}

void affine_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& theta, const at::Tensor& grad_input,
                            const at::Tensor& grad_theta, Sampling sampling,
                            bool deterministic) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample_backward (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto src = theta_grid3_of<acc_t>(theta, grad_output.sizes().slice(2),
                                           sampling.align_corners);
    const auto plan = plan_backward(grad_output, deterministic);
    const ThetaGradSink3<acc_t> sink{
        grad_theta.defined() ? grad_theta.data_ptr<acc_t>() : nullptr, src};
    with_theta_sink(sink, grad_theta, plan, deterministic, [&](const auto& s) {
      volume_backward<scalar_t>(grad_output, input, src, grad_input, grad_theta.defined(),
                                sampling, plan, s);
    });
  });
}

void affine_grid_forward(const at::Tensor& theta, const at::Tensor& grid, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grid.scalar_type(),
                                  "stn_cuda::affine_grid (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grid.size(0);
    const auto src = theta_grid3_of<acc_t>(theta, grid.sizes().slice(1, 3), align_corners);
    const auto plan = plan_launch(N, 1, grid.size(1) * grid.size(2) * grid.size(3));
    launch_kernel(affine_grid3_kernel<scalar_t>, plan, src, grid.data_ptr<scalar_t>(), N);
  });
}

// Deterministic, as for images: per-block partials added in a fixed order.
void affine_grid_backward(const at::Tensor& grad_grid, const at::Tensor& grad_theta,
                          bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_grid.scalar_type(),
                                  "stn_cuda::affine_grid_backward (5-D)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grad_grid.size(0);
    const auto plan = plan_launch(N, 1, grad_grid.size(1) * grad_grid.size(2) * grad_grid.size(3));
    const ThetaGradSink3<acc_t> sink{
        grad_theta.data_ptr<acc_t>(),
        theta_grid3_of<acc_t>(at::Tensor(), grad_grid.sizes().slice(1, 3), align_corners)};
    with_theta_sink(sink, grad_theta, plan, /*deterministic=*/true, [&](const auto& s) {
      launch_kernel(affine_grid3_backward_kernel<scalar_t>, plan,
                    tensor_grid3_of<scalar_t>(grad_grid), s, N);
    });
  });
}

}  // namespace

const Kernels& cuda_volume_kernels() {
  static const Kernels k{grid_sample_forward, grid_sample_backward, affine_sample_forward,
                         affine_sample_backward, affine_grid_forward, affine_grid_backward};
  return k;
}

}  // namespace stn

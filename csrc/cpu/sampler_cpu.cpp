// CPU kernels: loops over output points with at::parallel_for around the
// per-point math of sampler_math.h. Deterministic: the backward pass gives each
// batch element to one thread, so grad_input is summed in a fixed order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../kernels.h"

namespace stn {
namespace {

// Points per parallel task, so that a task does at least ~GRAIN_SIZE work.
constexpr int64_t kGrainSize = 32768;  // as ATen's at::internal::GRAIN_SIZE

int64_t grain_for(int64_t channels) {
  return std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, 4 * channels));
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
  void finish(int64_t) {}
};

template <typename acc_t>
struct ThetaGradSink {  // grad_theta (N, 2, 3), contiguous
  acc_t* data;
  ThetaGrid<acc_t> src;
  ThetaGradSum<acc_t> sum;
  void add(int64_t, int64_t h, int64_t w, Point2<acc_t> g) { sum.add(src.xt(w), src.yt(h), g); }
  void finish(int64_t n) {
    for (int k = 0; k < 6; ++k) data[6 * n + k] = sum.v[k];
    sum = {};
  }
};

template <typename scalar_t, typename Source>
void sample_forward(const at::Tensor& input, const Source& src, const at::Tensor& output,
                    Padding padding, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto in = image_of<const scalar_t>(input);
  const auto out = image_of<scalar_t>(output);
  // Tasks are whole output rows: no per-point index arithmetic.
  const int64_t grain = std::max<int64_t>(1, grain_for(in.C) / std::max<int64_t>(1, out.W));
  at::parallel_for(0, out.N * out.H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out.H, h = row % out.H;
      for (int64_t w = 0; w < out.W; ++w) {
        const auto pt = src.template point<acc_t>(n, h, w);
        const auto b = bilinear_point(pt.x, pt.y, in.H, in.W, padding, align_corners);
        bilinear_forward<acc_t>(in, out, n, out.offset(h, w), b, 0, in.C);
      }
    }
  });
}

template <typename scalar_t, typename Source, typename Sink>
void sample_backward(const at::Tensor& grad_output, const at::Tensor& input, const Source& src,
                     const at::Tensor& grad_input, Sink sink, bool need_grid_grad,
                     Padding padding, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto go = image_of<const scalar_t>(grad_output);
  const auto in = image_of<const scalar_t>(input);
  const bool need_input_grad = grad_input.defined();
  const auto gi = need_input_grad ? image_of<acc_t>(grad_input) : Image<acc_t>{};
  auto add = [&](int64_t n, int64_t c, int64_t y, int64_t x, acc_t v) {
    gi.plane(n, c)[gi.offset(y, x)] += v;
  };
  at::parallel_for(0, go.N, 1, [&](int64_t n0, int64_t n1) {
    Sink s = sink;
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t h = 0; h < go.H; ++h) {
        for (int64_t w = 0; w < go.W; ++w) {
          const auto pt = src.template point<acc_t>(n, h, w);
          const auto b = bilinear_point(pt.x, pt.y, in.H, in.W, padding, align_corners);
          const auto g = bilinear_backward<acc_t>(go, go.offset(h, w), in, n, b, 0, in.C,
                                                  need_input_grad, need_grid_grad, add);
          if (need_grid_grad) s.add(n, h, w, g);
        }
      }
      if (need_grid_grad) s.finish(n);
    }
  });
}

void grid_sample_forward(const at::Tensor& input, const at::Tensor& grid,
                         const at::Tensor& output, Padding padding, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::grid_sample", [&] {
    sample_forward<scalar_t>(input, tensor_grid_of<scalar_t>(grid), output, padding,
                             align_corners);
  });
}

void grid_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                          const at::Tensor& grid, const at::Tensor& grad_input,
                          const at::Tensor& grad_grid, Padding padding, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::grid_sample_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GridGradSink<acc_t> sink{
        grad_grid.defined() ? grad_grid.data_ptr<acc_t>() : nullptr, grid.size(1),
        grid.size(2)};
    sample_backward<scalar_t>(grad_output, input, tensor_grid_of<scalar_t>(grid), grad_input,
                              sink, grad_grid.defined(), padding, align_corners);
  });
}

void affine_sample_forward(const at::Tensor& input, const at::Tensor& theta,
                           const at::Tensor& output, Padding padding, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto src = theta_grid_of<acc_t>(theta, output.size(2), output.size(3), align_corners);
    sample_forward<scalar_t>(input, src, output, padding, align_corners);
  });
}

void affine_sample_backward(const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& theta, const at::Tensor& grad_input,
                            const at::Tensor& grad_theta, Padding padding, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::affine_sample_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto src =
        theta_grid_of<acc_t>(theta, grad_output.size(2), grad_output.size(3), align_corners);
    const ThetaGradSink<acc_t> sink{
        grad_theta.defined() ? grad_theta.data_ptr<acc_t>() : nullptr, src, {}};
    sample_backward<scalar_t>(grad_output, input, src, grad_input, sink, grad_theta.defined(),
                              padding, align_corners);
  });
}

void affine_grid_forward(const at::Tensor& theta, const at::Tensor& grid, bool align_corners) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grid.scalar_type(),
                                  "stn_cuda::affine_grid", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t N = grid.size(0), H = grid.size(1), W = grid.size(2);
    const auto src = theta_grid_of<acc_t>(theta, H, W, align_corners);
    scalar_t* out = grid.data_ptr<scalar_t>();
    at::parallel_for(0, N * H, grain_for(1) / std::max<int64_t>(1, W),
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
    const ThetaGradSink<acc_t> sink{grad_theta.data_ptr<acc_t>(),
                                    ThetaGrid<acc_t>{nullptr, H, W, align_corners}, {}};
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

const Kernels& cpu_kernels() {
  static const Kernels k{grid_sample_forward, grid_sample_backward, affine_sample_forward,
                         affine_sample_backward, affine_grid_forward, affine_grid_backward};
  return k;
}

}  // namespace stn

// CPU loops of the deterministic backward (gather.h) around gather_math.h: the
// CPU's usual backward is deterministic already; this one exists so that the
// tests run the GPU's algorithm, and for the explicit flag.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../gather.h"
#include "../kernels.h"

namespace stn {
namespace {

constexpr int64_t kGrainSize = 32768;

template <typename acc_t, typename Source>
void cells_of(const Source& src, int64_t N, int64_t H_out, int64_t W_out, const at::Tensor& input,
              int64_t unused, const at::Tensor& keys, const at::Tensor& weights,
              Sampling sampling) {
  const CellShape cells{input.size(2), input.size(3)};
  int64_t* key = keys.data_ptr<int64_t>();
  acc_t* weight = weights.data_ptr<acc_t>();
  at::parallel_for(0, N * H_out * W_out, kGrainSize / 16, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (H_out * W_out), q = p - n * H_out * W_out;
      const int64_t h = q / W_out, w = q - h * W_out;
      const auto e = cell_entry(src.template point<acc_t>(n, h, w), n, cells, unused, sampling);
      key[p] = e.key;
      for (int k = 0; k < 4; ++k) weight[4 * p + k] = e.weight[k];
    }
  });
}

void cells(const at::Tensor& source, const at::Tensor& input, at::IntArrayRef out_size,
           int64_t unused, const at::Tensor& keys, const at::Tensor& weights, Sampling sampling) {
  with_point_source(source, input, out_size, sampling.align_corners, [&](auto s, const auto& src) {
    cells_of<at::opmath_type<decltype(s)>>(src, source.size(0), out_size[0], out_size[1], input,
                                           unused, keys, weights, sampling);
  });
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
    // One task per row of a plane (n, c, y).
    at::parallel_for(0, gi.N * gi.C * gi.H, std::max<int64_t>(1, kGrainSize / (8 * gi.W)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / (gi.C * gi.H), c = row / gi.H % gi.C, y = row % gi.H;
        acc_t* out = gi.plane(n, c);
        for (int64_t x = 0; x < gi.W; ++x) {
          out[gi.offset(y, x)] = gather_pixel<acc_t>(runs, n, y, x, go.plane(n, c), go.sH, go.sW);
        }
      }
    });
  });
}

// The usual CPU backward gives each batch element's points to one thread, in
// order: deterministic already. Without grad_input it computes only these.
void source_grad(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& source,
                 const at::Tensor& grad_source, Sampling sampling) {
  const Kernels& k = cpu_kernels();
  const auto backward = source.dim() == 3 ? k.affine_sample_backward : k.grid_sample_backward;
  backward(grad_output, input, source, at::Tensor(), grad_source, sampling);
}

}  // namespace

const GatherKernels& cpu_gather_kernels() {
  static const GatherKernels k{cells, gather, source_grad};
  return k;
}

}  // namespace stn

// CPU loops of the deterministic backward (gather.h) around gather_math.h: the
// CPU's usual backward is deterministic already; this one exists so that the
// tests run the GPU's algorithm, and for the explicit flag.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>

#include <algorithm>

#include "../gather.h"
#include "../kernels.h"

namespace stn {
namespace {

constexpr int64_t kGrainSize = 32768;

void entries(const at::Tensor& source, const at::Tensor& input, at::IntArrayRef out_size,
             const CellGrid& cells, EntryShape shape, const at::Tensor& keys,
             const at::Tensor& weights, Sampling sampling) {
  with_point_source(source, input, out_size, sampling.align_corners, [&](auto s, const auto& src) {
    using acc_t = at::opmath_type<decltype(s)>;
    const int64_t H_out = out_size[out_size.size() - 2], W_out = out_size.back();
    const int64_t points = c10::multiply_integers(out_size);
    with_entry_store<acc_t>(keys, weights, shape, [&](const auto& store) {
      at::parallel_for(0, source.size(0) * points, kGrainSize / 16, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const int64_t n = p / points;
          put_entries(store, p, n, point_at<acc_t>(src, n, p - n * points, H_out, W_out), cells,
                      sampling);
        }
      });
    });
  });
}

void gather(const at::Tensor& grad_output, const at::Tensor& starts, const at::Tensor& order,
            const at::Tensor& weights, const CellGrid& cells, EntryShape shape,
            const at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "stn_cuda::gather", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // (N, C, pixels) and (N, C, points) as Image views of extent 1 x pixels (x points).
    const auto go = image_of<const scalar_t>(grad_output.unsqueeze(2));
    const auto gi = image_of<acc_t>(grad_input.unsqueeze(2));
    const auto runs = cell_runs_of<acc_t>(starts, order, weights, cells, shape, grad_output);
    // One task per row (z, y) of a group of kGatherChannels planes (n, c ..).
    constexpr int kG = kGatherChannels;
    const int64_t rows = cells.D * cells.H, groups = (gi.C + kG - 1) / kG;
    at::parallel_for(0, gi.N * groups * rows, std::max<int64_t>(1, kGrainSize / (8 * kG * cells.W)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / (groups * rows), c = row / rows % groups * kG, zy = row % rows;
        const int64_t z = zy / cells.H, y = zy % cells.H;
        const int channels = static_cast<int>(std::min<int64_t>(kG, gi.C - c));
        for (int64_t x = 0; x < cells.W; ++x) {
          acc_t sum[kG];
          gather_pixel_channels(runs, n, z, y, x, go.plane(n, c), go.sW, go.sC, channels, sum);
          for (int i = 0; i < channels; ++i) gi.plane(n, c + i)[(zy * cells.W + x) * gi.sW] = sum[i];
        }
      }
    });
  });
}

}  // namespace

const GatherKernels& cpu_gather_kernels() {
  static const GatherKernels k{entries, gather};
  return k;
}

}  // namespace stn

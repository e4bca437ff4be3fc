// CUDA kernels of the deterministic backward (gather.h) around gather_math.h:
// no atomic adds. Entries: one thread per point. grad_input: one thread per
// (pixel, channel group), gathering in a fixed order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/accumulate.h>

#include <type_traits>

#include "../gather.h"
#include "../kernels.h"
#include "launch.cuh"

namespace stn {
namespace {

// Store: an EntryStore<acc_t, int32_t or int64_t>.
template <typename acc_t, typename Source, typename Store>
__global__ void __launch_bounds__(kMaxThreads)
entries_kernel(Source src, int64_t N, int64_t points, int64_t H_out, int64_t W_out,
               CellGrid cells, Store store, Sampling sampling) {
  STN_FOR_EACH_N(N) {
    STN_FOR_EACH_POINT(points) {
      put_entries(store, n * points + p, n, point_at<acc_t>(src, n, p, H_out, W_out), cells,
                  sampling);
    }
  }
}

void entries(const at::Tensor& source, const at::Tensor& input, at::IntArrayRef out_size,
             const CellGrid& cells, EntryShape shape, const at::Tensor& keys,
             const at::Tensor& weights, Sampling sampling) {
  with_point_source(source, input, out_size, sampling.align_corners, [&](auto s, const auto& src) {
    using acc_t = at::opmath_type<decltype(s)>;
    const int64_t N = source.size(0), points = c10::multiply_integers(out_size);
    const auto plan = plan_launch(N, 1, points);
    using Source = std::decay_t<decltype(src)>;
    with_entry_store<acc_t>(keys, weights, shape, [&](const auto& store) {
      using Store = std::decay_t<decltype(store)>;
      launch_kernel(entries_kernel<acc_t, Source, Store>, plan, src, N, points,
                    out_size[out_size.size() - 2], out_size.back(), cells, store, sampling);
    });
  });
}

// grad_in, grad_out: (N, C, pixels) and (N, C, points) as Image views of
// extent 1 x pixels (x points).
template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
gather_kernel(Image<const scalar_t> grad_out, Image<at::opmath_type<scalar_t>> grad_in,
              CellRuns<at::opmath_type<scalar_t>> runs, int64_t channels_per_thread) {
  using acc_t = at::opmath_type<scalar_t>;
  const CellGrid& cells = runs.cells;
  const int64_t c0 = blockIdx.y * channels_per_thread;
  const int64_t c1 = min(c0 + channels_per_thread, grad_in.C);
  STN_FOR_EACH_N(grad_in.N) {
    STN_FOR_EACH_POINT(grad_in.W) {
      const int64_t zy = p / cells.W, x = p - zy * cells.W;
      const int64_t z = zy / cells.H, y = zy - z * cells.H;
      for (int64_t c = c0; c < c1; c += kGatherChannels) {
        const int channels = static_cast<int>(min(int64_t(kGatherChannels), c1 - c));
        acc_t sum[kGatherChannels];
        gather_pixel_channels(runs, n, z, y, x, grad_out.plane(n, c), grad_out.sW, grad_out.sC,
                              channels, sum);
STN_UNROLL
        for (int i = 0; i < kGatherChannels; ++i) {
          if (i < channels) grad_in.plane(n, c + i)[p * grad_in.sW] = sum[i];
        }
      }
    }
  }
}

void gather(const at::Tensor& grad_output, const at::Tensor& starts, const at::Tensor& order,
            const at::Tensor& weights, const CellGrid& cells, EntryShape shape,
            const at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "stn_cuda::gather", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto go = image_of<const scalar_t>(grad_output.unsqueeze(2));
    const auto gi = image_of<acc_t>(grad_input.unsqueeze(2));
    const auto runs = cell_runs_of<acc_t>(starts, order, weights, cells, shape, grad_output);
    const auto plan = plan_launch(gi.N, gi.C, gi.W);
    launch_kernel(gather_kernel<scalar_t>, plan, go, gi, runs, plan.channels_per_thread);
  });
}

}  // namespace

const GatherKernels& cuda_gather_kernels() {
  static const GatherKernels k{entries, gather};
  return k;
}

}  // namespace stn

// The deterministic backward's steps in order (see gather_math.h): entries, a
// stable sort, the cells' runs, the gather. The sort and the search are
// ATen's, deterministic on both devices.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "gather.h"

namespace stn {
namespace {

const GatherKernels& gather_kernels_for(const at::Tensor& t) {
#ifdef STN_CUDA_KERNELS
  if (t.is_cuda() || kEmulateCuda) return cuda_gather_kernels();
#endif
  return cpu_gather_kernels();
}

// The most keys one sort takes: CUDA's (cub's) at most INT_MAX; for tests,
// STN_CUDA_MAX_SORTED in the environment sets a smaller limit on any device.
int64_t max_sorted_at_once(const at::Tensor& keys) {
  static const int64_t for_tests = [] {
    const char* v = std::getenv("STN_CUDA_MAX_SORTED");
    return v != nullptr && v[0] != '\0' ? std::atoll(v) : int64_t(0);
  }();
  if (for_tests > 0) return for_tests;
  const bool cub = keys.is_cuda() || kEmulateCuda;
  return cub ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int64_t>::max();
}

// The keys' dtype for `cells`: int32 where every key fits (for tests,
// STN_CUDA_MAX_INT32_KEYS in the environment lowers that limit), else int64.
at::ScalarType key_type(const CellGrid& cells) {
  static const int64_t max_int32_keys = [] {
    const char* v = std::getenv("STN_CUDA_MAX_INT32_KEYS");
    constexpr int64_t kMax = int64_t(std::numeric_limits<int32_t>::max()) + 1;  // keys 0 .. 2^31 - 1
    return v != nullptr && v[0] != '\0' ? std::min<int64_t>(std::atoll(v), kMax) : kMax;
  }();
  return cells.keys <= max_int32_keys ? at::kInt : at::kLong;
}

// The keys (E,) of N batch elements, sorted stably, and their entries in that
// order (int64). A batch element's entries are a contiguous block whose keys
// are its own (CellGrid), so blocks of whole batch elements sort on their own,
// each into its slice of the results.
std::tuple<at::Tensor, at::Tensor> sort_entries(const at::Tensor& keys, int64_t N) {
  const int64_t per_n = keys.numel() / N, max_at_once = max_sorted_at_once(keys);
  TORCH_CHECK_VALUE(per_n <= max_at_once, "stn_cuda: the deterministic backward sorts at most ",
                    max_at_once, " entries (output points, times 16 for bicubic) per batch "
                    "element on this device, got ", per_n);
  const int64_t block = max_at_once / per_n;  // batch elements per sort
  if (block >= N) return at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor sorted = at::empty_like(keys), order = at::empty_like(keys, at::kLong);
  for (int64_t n = 0; n < N; n += block) {
    const int64_t first = n * per_n, length = std::min(block, N - n) * per_n;
    at::Tensor sorted_part = sorted.narrow(0, first, length);
    at::Tensor order_part = order.narrow(0, first, length);
    at::sort_out(sorted_part, order_part, keys.narrow(0, first, length),
                 /*stable=*/true, /*dim=*/0, /*descending=*/false);
    order_part.add_(first);
  }
  return {sorted, order};
}

}  // namespace

void gather_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                       const at::Tensor& source, const at::Tensor& grad_input, Sampling sampling) {
  const GatherKernels& kernels = gather_kernels_for(input);
  const int dims = static_cast<int>(input.dim()) - 2;
  const int64_t N = input.size(0), C = input.size(1);
  const CellGrid cells = cell_grid(N, dims, dims == 3 ? input.size(2) : 1, input.size(-2),
                                   input.size(-1));
  const EntryShape shape = entry_shape(sampling.interpolation, dims);
  const at::IntArrayRef out_size = grad_output.sizes().slice(2);
  const int64_t entries = grad_output.numel() / C * shape.taps();
  const auto key_options = input.options().dtype(key_type(cells));  // keys 0 .. cells.keys - 1
  const at::Tensor keys = at::empty({entries}, key_options);
  const at::Tensor weights = at::empty(
      {entries, shape.corners}, input.options().dtype(at::toOpMathType(input.scalar_type())));
  kernels.entries(source, input, out_size, cells, shape, keys, weights, sampling);
  const auto [sorted, order] = sort_entries(keys, N);
  // starts[i]: the first sorted entry of key i or after it.
  const at::Tensor starts = at::searchsorted(sorted, at::arange(cells.keys, key_options));
  // Points and pixels flattened: grad_input is dense (ops.cpp), so a view.
  kernels.gather(grad_output.reshape({N, C, -1}), starts, order, weights, cells, shape,
                 grad_input.view({N, C, -1}));
}

}  // namespace stn

// The deterministic backward's steps in order (see gather_math.h): entries, a
// stable sort, the cells' runs, the gather. The sort and the search are
// ATen's, deterministic on both devices.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "gather.h"

namespace stn {
namespace {

const GatherKernels& gather_kernels_for(const at::Tensor& t) {
#ifdef STN_WITH_CUDA
  if (t.is_cuda()) return cuda_gather_kernels();
#endif
  return cpu_gather_kernels();
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
  const auto index = input.options().dtype(at::kLong);
  const at::Tensor keys = at::empty({entries}, index);
  const at::Tensor weights = at::empty(
      {entries, shape.corners}, input.options().dtype(at::toOpMathType(input.scalar_type())));
  kernels.entries(source, input, out_size, cells, keys, weights, sampling);
  const auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  // starts[i]: the first sorted entry of cell i or after it.
  const at::Tensor starts =
      at::searchsorted(std::get<0>(sorted), at::arange(cells.unused + 1, index));
  // Points and pixels flattened: grad_input is dense (ops.cpp), so a view.
  kernels.gather(grad_output.reshape({N, C, -1}), starts, std::get<1>(sorted), weights, cells,
                 shape, grad_input.view({N, C, -1}));
}

}  // namespace stn

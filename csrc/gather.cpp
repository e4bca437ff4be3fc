// The deterministic backward's steps in order (see gather_math.h): cell keys,
// a stable sort, the cells' runs, the gather; then the grid's or theta's
// gradient. The sort and the search are ATen's, deterministic on both devices.
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

// Steps 1 to 3 for grad_input.
void gather_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                       const at::Tensor& source, const at::Tensor& grad_input, Sampling sampling) {
  const GatherKernels& kernels = gather_kernels_for(input);
  const int64_t points = grad_output.size(0) * grad_output.size(2) * grad_output.size(3);
  const CellShape cells{input.size(2), input.size(3)};
  const int64_t unused = input.size(0) * cells.cells();  // after every cell's key
  const auto index = input.options().dtype(at::kLong);
  const at::Tensor keys = at::empty({points}, index);
  const at::Tensor weights =
      at::empty({points, 4}, input.options().dtype(at::toOpMathType(input.scalar_type())));
  kernels.cells(source, input, grad_output.sizes().slice(2), unused, keys, weights, sampling);
  const auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  // starts[i]: the first sorted point of cell i or after it.
  const at::Tensor starts = at::searchsorted(std::get<0>(sorted), at::arange(unused + 1, index));
  kernels.gather(grad_output, starts, std::get<1>(sorted), weights, grad_input,
                 sampling.interpolation);
}

}  // namespace

void check_deterministic(const char* op, int64_t dims, int64_t interpolation_mode) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      dims == 2, op, ": the deterministic backward (stn_cuda.set_deterministic(True) or "
      "torch.use_deterministic_algorithms(True)) is not implemented for 5-D volumes yet; "
      "it is for 4-D images");
  TORCH_CHECK_NOT_IMPLEMENTED(
      static_cast<Interpolation>(interpolation_mode) != Interpolation::Bicubic, op,
      ": the deterministic backward (stn_cuda.set_deterministic(True) or "
      "torch.use_deterministic_algorithms(True)) is not implemented for mode='bicubic' yet; "
      "it is for 'bilinear' and 'nearest'");
}

void sample_backward_deterministic(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& source, const at::Tensor& grad_input,
                                   const at::Tensor& grad_source, Sampling sampling) {
  if (grad_input.defined()) gather_grad_input(grad_output, input, source, grad_input, sampling);
  if (grad_source.defined()) {
    gather_kernels_for(input).source_grad(grad_output, input, source, grad_source, sampling);
  }
}

}  // namespace stn

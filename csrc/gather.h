// The deterministic (atomic-free) backward's grad_input, for images and
// volumes in every mode: gathered pixel by pixel over the entries sorted by
// cell (gather_math.h). ops.cpp calls it for the backward ops' `deterministic`
// argument; the grid's or theta's gradient then comes from the usual backward
// kernels, reduced without atomics.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include "gather_math.h"
#include "kernels.h"

namespace stn {

// The per-device steps (cpu/gather_cpu.cpp, cuda/gather_cuda.cu).
struct GatherKernels {
  // Step 1: every point's entries, keys (E,) int32 or int64 (gather.cpp) and
  // weights (E, corners) in the accumulation type. source: the points' source,
  // the grid (N, [D_out,] H_out, W_out, dims) for grid_sample or theta
  // (N, dims, dims + 1) for affine_sample, contiguous in the accumulation type;
  // out_size: the output's spatial size.
  void (*entries)(const at::Tensor& source, const at::Tensor& input, at::IntArrayRef out_size,
                  const CellGrid& cells, EntryShape shape, const at::Tensor& keys,
                  const at::Tensor& weights, Sampling sampling);
  // Step 3: every pixel of grad_input (N, C, pixels), a view of the result,
  // from the sorted runs, grad_output (N, C, points).
  void (*gather)(const at::Tensor& grad_output, const at::Tensor& starts, const at::Tensor& order,
                 const at::Tensor& weights, const CellGrid& cells, EntryShape shape,
                 const at::Tensor& grad_input);
};

const GatherKernels& cpu_gather_kernels();
#ifdef STN_CUDA_KERNELS
const GatherKernels& cuda_gather_kernels();
#endif

// f(scalar_t{}, src) with src the points of `source` for sampler_math.h (a
// TensorGrid, ThetaGrid or their volume forms), scalar_t the input's dtype.
template <typename F>
void with_point_source(const at::Tensor& source, const at::Tensor& input,
                       at::IntArrayRef out_size, bool align_corners, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::deterministic_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool theta = source.dim() == 3;
    if (input.dim() == 5) {
      if (theta) {
        f(scalar_t{}, theta_grid3_of<acc_t>(source, out_size, align_corners));
      } else {
        f(scalar_t{}, tensor_grid3_of<scalar_t>(source));
      }
    } else if (theta) {
      f(scalar_t{}, theta_grid_of<acc_t>(source, out_size, align_corners));
    } else {
      f(scalar_t{}, tensor_grid_of<scalar_t>(source));
    }
  });
}

// f(store), with store the EntryStore over keys (int32 or int64: gather.cpp's
// key_type) and weights.
template <typename acc_t, typename F>
void with_entry_store(const at::Tensor& keys, const at::Tensor& weights, EntryShape shape, F&& f) {
  if (keys.scalar_type() == at::kInt) {
    f(EntryStore<acc_t, int32_t>{keys.data_ptr<int32_t>(), weights.data_ptr<acc_t>(), shape});
  } else {
    f(EntryStore<acc_t, int64_t>{keys.data_ptr<int64_t>(), weights.data_ptr<acc_t>(), shape});
  }
}

// Step 2's result as gather_pixel_channels reads it.
template <typename acc_t>
CellRuns<acc_t> cell_runs_of(const at::Tensor& starts, const at::Tensor& order,
                             const at::Tensor& weights, const CellGrid& cells, EntryShape shape,
                             const at::Tensor& grad_output) {
  return {starts.data_ptr<int64_t>(), order.data_ptr<int64_t>(), weights.data_ptr<acc_t>(),
          cells, shape, grad_output.size(2)};
}

// grad_input (laid out as input) of grid_sample's (source: grid) or
// affine_sample's (source: theta) backward, every element written here.
void gather_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                       const at::Tensor& source, const at::Tensor& grad_input, Sampling sampling);

}  // namespace stn

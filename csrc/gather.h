// The deterministic (atomic-free) backward of the 4-D samplers: grad_input
// gathered pixel by pixel over the points sorted by cell (gather_math.h), and
// the grid's or theta's gradient reduced without atomics. ops.cpp calls it for
// the backward ops' `deterministic` argument.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include "gather_math.h"
#include "kernels.h"

namespace stn {

// The points' source is the grid (N, H_out, W_out, 2) for grid_sample or
// theta (N, 2, 3), contiguous in the accumulation type, for affine_sample.

// The per-device steps (cpu/gather_cpu.cpp, cuda/gather_cuda.cu). Buffers come
// as in Kernels: gradients in the accumulation type, results allocated.
struct GatherKernels {
  // Step 1: every point's cell key (keys (P,), int64) and corner weights
  // (weights (P, 4), accumulation type).
  void (*cells)(const at::Tensor& source, const at::Tensor& input, at::IntArrayRef out_size,
                int64_t unused, const at::Tensor& keys, const at::Tensor& weights,
                Sampling sampling);
  // Step 3: every pixel of grad_input from the sorted runs.
  void (*gather)(const at::Tensor& grad_output, const at::Tensor& starts, const at::Tensor& order,
                 const at::Tensor& weights, const at::Tensor& grad_input,
                 Interpolation interpolation);
  // grad_grid / grad_theta alone: each point over all its channels in one
  // thread, theta's sums reduced in a fixed order.
  void (*source_grad)(const at::Tensor& grad_output, const at::Tensor& input,
                      const at::Tensor& source, const at::Tensor& grad_source, Sampling sampling);
};

const GatherKernels& cpu_gather_kernels();
#ifdef STN_WITH_CUDA
const GatherKernels& cuda_gather_kernels();
#endif

// f(scalar_t{}, src) with src the points of `source` for sampler_math.h (a
// TensorGrid or a ThetaGrid), scalar_t the input's dtype.
template <typename F>
void with_point_source(const at::Tensor& source, const at::Tensor& input,
                       at::IntArrayRef out_size, bool align_corners, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "stn_cuda::deterministic_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (source.dim() == 3) {
      f(scalar_t{}, theta_grid_of<acc_t>(source, out_size[0], out_size[1], align_corners));
    } else {
      f(scalar_t{}, tensor_grid_of<scalar_t>(source));
    }
  });
}

// Step 2's result as gather_pixel reads it: grad_input's plane size, grad_output's points.
template <typename acc_t>
CellRuns<acc_t> cell_runs_of(const at::Tensor& starts, const at::Tensor& order,
                             const at::Tensor& weights, const at::Tensor& grad_input,
                             const at::Tensor& grad_output, Interpolation interpolation) {
  return {starts.data_ptr<int64_t>(), order.data_ptr<int64_t>(), weights.data_ptr<acc_t>(),
          {grad_input.size(2), grad_input.size(3)}, grad_output.size(2), grad_output.size(3),
          interpolation == Interpolation::Nearest ? 1 : 4};
}

// The deterministic path's limits, checked by the backward ops: `op` names
// the op in the message.
void check_deterministic(const char* op, int64_t dims, int64_t interpolation_mode);

// The contract of Kernels::grid_sample_backward (source: grid, grad_source:
// grad_grid) and affine_sample_backward (theta, grad_theta): grad_input zeroed
// or undefined.
void sample_backward_deterministic(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& source, const at::Tensor& grad_input,
                                   const at::Tensor& grad_source, Sampling sampling);

}  // namespace stn

// The deterministic (atomic-free) backward of the 4-D samplers: grad_input
// gathered pixel by pixel over the points sorted by cell (gather_math.h), and
// the grid's or theta's gradient reduced without atomics. ops.cpp calls it for
// the backward ops' `deterministic` argument.
#pragma once

#include <ATen/core/Tensor.h>

#include "gather_math.h"

namespace stn {

// The per-device steps (cpu/gather_cpu.cpp, cuda/gather_cuda.cu). Buffers come
// as in Kernels: gradients in the accumulation type, results allocated.
struct GatherKernels {
  // Step 1: every point's cell key (keys (P,), int64) and corner weights
  // (weights (P, 4), accumulation type); a point of theta's grid is generated.
  void (*grid_cells)(const at::Tensor& grid, const at::Tensor& input, int64_t unused,
                     const at::Tensor& keys, const at::Tensor& weights, Sampling sampling);
  void (*theta_cells)(const at::Tensor& theta, const at::Tensor& input, at::IntArrayRef out_size,
                      int64_t unused, const at::Tensor& keys, const at::Tensor& weights,
                      Sampling sampling);
  // Step 3: every pixel of grad_input from the sorted runs.
  void (*gather)(const at::Tensor& grad_output, const at::Tensor& starts, const at::Tensor& order,
                 const at::Tensor& weights, const at::Tensor& grad_input,
                 Interpolation interpolation);
  // grad_grid / grad_theta alone: each point over all its channels in one
  // thread, theta's sums reduced in a fixed order.
  void (*grid_grad)(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& grid,
                    const at::Tensor& grad_grid, Sampling sampling);
  void (*theta_grad)(const at::Tensor& grad_output, const at::Tensor& input,
                     const at::Tensor& theta, const at::Tensor& grad_theta, Sampling sampling);
};

const GatherKernels& cpu_gather_kernels();
#ifdef STN_WITH_CUDA
const GatherKernels& cuda_gather_kernels();
#endif

// The deterministic path's limits, checked by the backward ops: `op` names
// the op in the message.
void check_deterministic(const char* op, int64_t dims, int64_t interpolation_mode);

// Same contracts as Kernels::grid_sample_backward / affine_sample_backward
// (grad_input zeroed or undefined; theta contiguous in the accumulation type).
void grid_sample_backward_deterministic(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& grid, const at::Tensor& grad_input,
                                        const at::Tensor& grad_grid, Sampling sampling);
void affine_sample_backward_deterministic(const at::Tensor& grad_output, const at::Tensor& input,
                                          const at::Tensor& theta, const at::Tensor& grad_input,
                                          const at::Tensor& grad_theta, Sampling sampling);

}  // namespace stn

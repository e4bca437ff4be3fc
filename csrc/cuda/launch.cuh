// What the CUDA kernels of sampler_cuda.cu (images), volume_cuda.cu (volumes)
// and gather_cuda.cu (the deterministic gather) share: the launch plan, their
// loops (loops.cuh), the per-block reductions (block_sums.cuh) and the gradient
// stores of the backward passes.
#pragma once

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>

#include "../kernels.h"
#include "block_sums.cuh"
#include "loops.cuh"
#ifdef STN_CUDA_EMULATE
#include "cuda_emulator.h"  // tests/host: launch_kernel's launches, on the CPU
#endif

#include <algorithm>
#include <cstdint>

namespace stn {

// Split channels across threads until about this many threads run.
constexpr int64_t kTargetThreads = int64_t(1) << 18;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct LaunchPlan {
  dim3 grid, block;
  int64_t channels_per_thread;
  int64_t vector;  // the channels a thread takes per step: 1, or a channel vector's (vectors.cuh)
};

// Threads cover the output points of one batch element along x, channel groups
// along y and batch elements along z. `vector`: a divisor of C, the channels a
// thread takes per step (vectors.cuh), which channels_per_thread is a multiple of.
inline LaunchPlan plan_launch(int64_t N, int64_t C, int64_t points, int64_t vector = 1) {
  const int threads =
      static_cast<int>(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, ceil_div(points, 32) * 32)));
  const int64_t steps = std::max<int64_t>(C / vector, 1);  // a thread's channels, in vectors
  int64_t groups = std::min<int64_t>({ceil_div(kTargetThreads, N * points), steps, 65535});
  groups = std::max<int64_t>(groups, 1);
  const int64_t per_thread = ceil_div(steps, groups);
  groups = ceil_div(steps, per_thread);
  const int64_t blocks = std::min<int64_t>(ceil_div(points, threads), int64_t(1) << 30);
  return {dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(groups),
               static_cast<unsigned>(std::min<int64_t>(N, 65535))),
          dim3(threads), per_thread * vector, vector};
}

// The plan of a backward pass over grad_output's points. `deterministic`
// keeps each point's channels in one thread, so that its gradient is summed in
// a fixed order, without atomics.
inline LaunchPlan plan_backward(const at::Tensor& grad_output, bool deterministic,
                                int64_t vector = 1) {
  const int64_t C = grad_output.size(1);
  LaunchPlan plan = plan_launch(grad_output.size(0), deterministic ? vector : C,
                                c10::multiply_integers(grad_output.sizes().slice(2)), vector);
  if (deterministic) plan.channels_per_thread = std::max<int64_t>(C, 1);
  TORCH_INTERNAL_ASSERT(plan.grid.y * plan.channels_per_thread >= C);
  TORCH_INTERNAL_ASSERT(plan.channels_per_thread % vector == 0);
  return plan;
}

// The most output points per batch element indexed in 32 bits: the loops'
// stride (threads times blocks, by plan_launch under points + kMaxThreads) added
// to a point index stays below 2 * kMaxPoints32 + kMaxThreads < 2^31.
constexpr int64_t kMaxPoints32 = (int64_t(1) << 30) - kMaxThreads;

// Call f(index_t{}) with 32-bit point indices and plane offsets where they fit,
// else 64-bit ones (64-bit division and multiplication take many instructions
// on a GPU).
// `in`: an Image or Image3.
template <typename In, typename F>
void with_point_index_type(const In& in, int64_t points, F&& f) {
  if (points <= kMaxPoints32 && offsets_fit_int32(in)) return f(int32_t{});
  return f(int64_t{});
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// kernel<<<plan's blocks and threads>>>(args...) on the current stream; under
// STN_CUDA_EMULATE (kernels.h), on the CPU: tests/host/cuda_emulator.h.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), const LaunchPlan& plan, const Args&... args) {
#ifdef STN_CUDA_EMULATE
  cuda_emulator::launch(plan.grid, plan.block, kernel, args...);
#else
  kernel<<<plan.grid, plan.block, 0, current_stream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// The partials buffer of a launch for `sums` (N, ...), K values per batch element.
inline at::Tensor block_partials(const at::Tensor& sums, const LaunchPlan& plan) {
  return at::empty({sums.size(0), int64_t(plan.grid.x), sums.numel() / sums.size(0)},
                   sums.options());
}

// sums = the partials added over the blocks, in a fixed order (at::sum).
inline void sum_block_partials(const at::Tensor& partials, const at::Tensor& sums) {
  sums.copy_(partials.sum(1).view(sums.sizes()));
}

// Whether the plan splits a point's channels across threads, whose gradients
// with respect to the point must then be added atomically, into a zeroed
// grad_grid.
inline bool splits_channels(const LaunchPlan& plan) { return plan.grid.y > 1; }

// t = 0, on the current stream.
inline void zero_async(const at::Tensor& t) {
  C10_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0, t.nbytes(), current_stream()));
}

// A point's gradient with respect to its K coordinates, stored, or added
// atomically when several channel groups add into the same point.
template <int K, typename T>
__device__ void store_point_grad(T* dst, const T (&g)[K], bool atomic) {
STN_UNROLL
  for (int k = 0; k < K; ++k) {
    if (atomic) {
      atomicAdd(dst + k, g[k]);
    } else {
      dst[k] = g[k];
    }
  }
}

// launch(sink) for grad_theta's sink (ThetaGradSink, ThetaGradSink3): its block
// sums added atomically into grad_theta (zeroed), or, `deterministic`, stored
// per block and then added in a fixed order.
template <typename Sink, typename Launch>
void with_theta_sink(Sink sink, const at::Tensor& grad_theta, const LaunchPlan& plan,
                     bool deterministic, Launch&& launch) {
  at::Tensor partials;
  if (deterministic && grad_theta.defined()) {
    TORCH_INTERNAL_ASSERT(plan.grid.y == 1);  // a row of partials per (n, block): one group
    partials = block_partials(grad_theta, plan);
    sink.partials = static_cast<decltype(sink.partials)>(partials.data_ptr());
  }
  launch(sink);
  if (partials.defined()) sum_block_partials(partials, grad_theta);
}

}  // namespace stn

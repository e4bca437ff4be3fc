// The device kernels behind each op, as a table per backend.
//
// ops.cpp validates the arguments and allocates every result before it calls
// one of these, so a kernel file only loops over points and launches. Gradient
// buffers come in the accumulation type (float for half and bfloat16), and
// grad_input arrives zeroed; an undefined gradient tensor means "not needed".
// A nearest backward is never asked for the grid's or theta's gradient, which
// is 0 (ops.cpp gives it).
// A backward's `deterministic` asks for the grid's or theta's gradient reduced
// in a fixed order, without atomics (the CPU's always is); grad_input is then
// undefined, gathered by gather.h instead.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <utility>

#include "sampler_math.h"

namespace stn {

// Speed settings of the image kernels (stn_cuda.set_tuning): how they do their
// work, which changes no result beyond rounding (the order of atomic adds
// varies from run to run in every setting). Read at each launch; the CPU reads
// cpu_gathers alone, CUDA the others.
//
// How the backward adds into grad_input (bilinear and nearest; bicubic and
// channel vectors scatter by Atomic alone):
//   Atomic    one atomic add per point, corner and channel, as torch's kernel
//   WarpRuns  the lanes of a warp whose points share a corner sum their values
//             first, and one of them adds the sum (cuda/scatter.cuh)
enum class Scatter : int { Atomic = 0, WarpRuns = 1 };

struct Tuning {
  Scatter scatter;
  // Bilinear and nearest kernels on a channels_last input read 16 bytes of a
  // pixel's channels per load and add into grad_input by vector atomics
  // (cuda/vectors.cuh), where the input's layout allows.
  bool channel_vectors;
  // The CPU's bilinear and nearest forward and bilinear backward read 16
  // points' neighbours per AVX-512 gather (float32, 32-bit offsets, a CPU with
  // AVX-512): the same bits as its scalar loops.
  bool cpu_gathers;
};
Tuning tuning();
// Whether this CPU and build have cpu_gathers' gathers (cpu/sampler_cpu.cpp).
bool cpu_has_gathers();

struct Kernels {
  void (*grid_sample_forward)(const at::Tensor& input, const at::Tensor& grid,
                              const at::Tensor& output, Sampling sampling);
  void (*grid_sample_backward)(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& grid, const at::Tensor& grad_input,
                               const at::Tensor& grad_grid, Sampling sampling,
                               bool deterministic);
  // theta: (N, 2, 3), contiguous, in the accumulation type.
  void (*affine_sample_forward)(const at::Tensor& input, const at::Tensor& theta,
                                const at::Tensor& output, Sampling sampling);
  void (*affine_sample_backward)(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& theta, const at::Tensor& grad_input,
                                 const at::Tensor& grad_theta, Sampling sampling,
                                 bool deterministic);
  void (*affine_grid_forward)(const at::Tensor& theta, const at::Tensor& grid,
                              bool align_corners);
  void (*affine_grid_backward)(const at::Tensor& grad_grid, const at::Tensor& grad_theta,
                               bool align_corners);
};

// STN_CUDA_EMULATE (defined by setup.py under STN_CUDA_EMULATE=1, for the
// tests): a CPU-only build whose CPU tensors go to the CUDA kernels, built for
// the CPU against tests/host/cuda_emulator.h, in place of cpu/'s.
#ifdef STN_CUDA_EMULATE
constexpr bool kEmulateCuda = true;
#else
constexpr bool kEmulateCuda = false;
#endif
#if defined(STN_WITH_CUDA) || defined(STN_CUDA_EMULATE)
#define STN_CUDA_KERNELS 1
#endif

const Kernels& cpu_kernels();
#ifdef STN_CUDA_KERNELS
const Kernels& cuda_kernels();
#endif

// The same ops on volumes: input (N, C, D, H, W), grid (N, D_out, H_out, W_out,
// 3), theta (N, 3, 4) (cpu/volume_cpu.cpp, cuda/volume_cuda.cu).
const Kernels& cpu_volume_kernels();
#ifdef STN_CUDA_KERNELS
const Kernels& cuda_volume_kernels();
#endif

// Host-side views of tensors for the kernels in sampler_math.h.
template <typename scalar_t>
Image<scalar_t> image_of(const at::Tensor& t) {
  return {static_cast<scalar_t*>(t.data_ptr()),
          t.size(0), t.size(1), t.size(2), t.size(3),
          t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Whether every neighbour's offset within a plane (or volume) of `in` fits in
// 32 bits, given each axis' (size, stride): the kernels then index planes with
// int32_t, which costs less than int64_t on a CPU and much less on a GPU. Pixel
// positions reach [-2, size + 1], and in float up to size >> 23 more (where
// clamp_pixel's bound rounds up). Sides under 2^30 and strides under 2^31 keep
// the sum from overflowing and every float pixel position convertible.
inline bool offsets_fit_int32(std::initializer_list<std::pair<int64_t, int64_t>> axes) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  int64_t reach = 0;
  for (const auto& [size, stride] : axes) {
    if (size >= (int64_t(1) << 30) || stride > kMax) return false;
    reach += (size + 2 + (size >> 23)) * stride;
  }
  return reach <= kMax;
}

template <typename scalar_t>
bool offsets_fit_int32(const Image<scalar_t>& in) {
  return offsets_fit_int32({{in.H, in.sH}, {in.W, in.sW}});
}

template <typename scalar_t>
TensorGrid<scalar_t> tensor_grid_of(const at::Tensor& grid) {
  return {static_cast<const scalar_t*>(grid.data_ptr()),
          grid.stride(0), grid.stride(1), grid.stride(2), grid.stride(3)};
}

// theta may be undefined where only the target coordinates are needed.
// out_size: (H_out, W_out).
template <typename acc_t>
ThetaGrid<acc_t> theta_grid_of(const at::Tensor& theta, at::IntArrayRef out_size,
                               bool align_corners) {
  return {theta.defined() ? static_cast<const acc_t*>(theta.data_ptr()) : nullptr, out_size[0],
          out_size[1], align_corners};
}

// Host-side views of 5-D tensors, for the volume kernels.
template <typename scalar_t>
Image3<scalar_t> image3_of(const at::Tensor& t) {
  return {static_cast<scalar_t*>(t.data_ptr()),
          t.size(0), t.size(1), t.size(2), t.size(3), t.size(4),
          t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

template <typename scalar_t>
bool offsets_fit_int32(const Image3<scalar_t>& in) {
  return offsets_fit_int32({{in.D, in.sD}, {in.H, in.sH}, {in.W, in.sW}});
}

// Call f(index_t{}) with 32-bit offsets within a plane or volume of `in` (an
// Image or Image3) where they all fit, else 64-bit ones.
template <typename In, typename F>
void with_index_type(const In& in, F&& f) {
  if (offsets_fit_int32(in)) return f(int32_t{});
  return f(int64_t{});
}

template <typename scalar_t>
TensorGrid3<scalar_t> tensor_grid3_of(const at::Tensor& grid) {
  return {static_cast<const scalar_t*>(grid.data_ptr()),
          grid.stride(0), grid.stride(1), grid.stride(2), grid.stride(3), grid.stride(4)};
}

// theta may be undefined where only the target coordinates are needed.
// out_size: (D_out, H_out, W_out).
template <typename acc_t>
ThetaGrid3<acc_t> theta_grid3_of(const at::Tensor& theta, at::IntArrayRef out_size,
                                 bool align_corners) {
  return {theta.defined() ? static_cast<const acc_t*>(theta.data_ptr()) : nullptr, out_size[0],
          out_size[1], out_size[2], align_corners};
}

}  // namespace stn

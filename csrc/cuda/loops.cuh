// The loops of the CUDA kernels over batch elements and output points. This
// header needs no other, so that tests/host/device_code_test.cpp can compile
// the code that uses it (scatter.cuh, block_sums.cuh) for the CPU, against the
// emulator of tests/host/cuda_emulator.h.
#pragma once

namespace stn {

// The most threads of a block (plan_launch's, and every kernel's launch bounds).
constexpr int kMaxThreads = 256;

// This thread's first point and the stride of the loop over points, in the
// points' index type.
template <typename T>
__device__ T first_point() {
  return T(blockIdx.x) * T(blockDim.x) + T(threadIdx.x);
}
template <typename T>
__device__ T point_stride() {
  return T(gridDim.x) * T(blockDim.x);
}

__device__ inline unsigned lane_id() { return threadIdx.x & 31u; }

}  // namespace stn

// Batch elements along z, points along x. The point index p has the type of P
// (int32_t where with_point_index_type allows).
#define STN_FOR_EACH_N(N) for (int64_t n = blockIdx.z; n < (N); n += gridDim.z)
#define STN_FOR_EACH_POINT(P)                                        \
  for (auto p = stn::first_point<decltype((P) + 0)>(); p < (P); \
       p += stn::point_stride<decltype((P) + 0)>())

// STN_FOR_EACH_POINT by whole warps, for bodies that make warp-wide calls:
// every lane of a warp runs the loop's iterations together, the lanes whose
// point p is below P run the body, and `lanes` (a mask of the warp's first
// lanes, declared by the macro) says which ones did. blockDim.x must be a
// multiple of 32 (plan_launch's are).
#define STN_FOR_EACH_WARP_POINT(P, lanes)                                              \
  for (auto p = stn::first_point<decltype((P) + 0)>();                                \
       p - static_cast<decltype((P) + 0)>(stn::lane_id()) < (P);                      \
       p += stn::point_stride<decltype((P) + 0)>())                                   \
    if (const unsigned lanes = __ballot_sync(0xffffffffu, p < (P)); p < (P))

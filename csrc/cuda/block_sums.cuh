// The per-block reductions of the backward passes (grad_theta, summed per
// block and then once per block and batch element). Like loops.cuh, this header
// needs nothing but sampler_math.h and loops.cuh, so that tests/host can run it
// on the CPU against an emulated block (tests/host/cuda_emulator.h).
#pragma once

#include <cstdint>

#include "../sampler_math.h"
#include "loops.cuh"

namespace stn {

// Sum of v over the block, valid in thread 0. Every thread of the block must call it.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T warp_sums[kMaxThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = static_cast<int>(lane_id()), warp = threadIdx.x >> 5;
  __syncthreads();  // the previous call's reads of warp_sums are done
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// The block's sums of v[0..K) added to dst[0..K) (grad_theta of one batch
// element), once per block. Every thread of the block must call it.
template <int K, typename T>
__device__ void add_block_sums(T* dst, const T (&v)[K]) {
STN_UNROLL
  for (int k = 0; k < K; ++k) {
    const T s = block_sum(v[k]);
    if (threadIdx.x == 0) atomicAdd(dst + k, s);
  }
}

// The block's sums of v[0..K) stored as row (n, blockIdx.x) of partials
// (N, gridDim.x, K), for sum_block_partials to add in a fixed order: unlike
// add_block_sums' atomics, the same bits run after run. Every thread of the
// block must call it, and every (n, block) pair of the launch writes its row.
template <int K, typename T>
__device__ void store_block_sums(T* partials, int64_t n, const T (&v)[K]) {
  T* dst = partials + (n * gridDim.x + blockIdx.x) * K;
STN_UNROLL
  for (int k = 0; k < K; ++k) {
    const T s = block_sum(v[k]);
    if (threadIdx.x == 0) dst[k] = s;
  }
}

// The block's sums of v[0..K) into batch element n's row of sums (N, K):
// added atomically (sums zeroed beforehand), or, where partials is set, stored
// there for sum_block_partials.
template <int K, typename T>
__device__ void reduce_block_sums(T* sums, T* partials, int64_t n, const T (&v)[K]) {
  if (partials != nullptr) {
    store_block_sums(partials, n, v);
  } else {
    add_block_sums(sums + K * n, v);
  }
}

}  // namespace stn

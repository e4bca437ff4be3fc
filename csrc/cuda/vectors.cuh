// Channel vectors (Tuning::channel_vectors in kernels.h): where the input is
// channels_last, the image kernels read a pixel's channels 16 bytes at a time
// (one load instruction where one per channel would fetch the same sector
// again and again) and the backward adds into grad_input, laid out alike, by
// float4 atomics on sm_90 and newer. The math per vector is
// interpolate_channels / interpolate_backward_channels (sampler_math.h).
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>
#include <type_traits>

#include "../kernels.h"
#include "launch.cuh"

namespace stn {

// The channels of one 16-byte vector of scalar_t.
template <typename scalar_t>
constexpr int kChannelVector = static_cast<int>(16 / sizeof(scalar_t));

template <typename T, int V>
struct alignas(sizeof(T) * V) Vector {
  T v[V];
};

// load(offset, values) for interpolate_channels: the V channels at `offset`
// from `data` (channel c of a pixel of a channels_last plane, c a multiple of
// V), converted to acc_t. One 16-byte load.
template <int V, typename scalar_t>
struct ChannelLoader {
  const scalar_t* data;
  template <typename index_t, typename acc_t>
  __device__ void operator()(index_t offset, acc_t (&values)[V]) const {
    const Vector<scalar_t, V> x = *reinterpret_cast<const Vector<scalar_t, V>*>(data + offset);
STN_UNROLL
    for (int i = 0; i < V; ++i) values[i] = static_cast<acc_t>(x.v[i]);
  }
};

// add(offset, values) for interpolate_backward_channels: atomic adds of V
// values into grad_input's plane at `offset`, four floats at a time where the
// GPU has float4 atomics (sm_90, and the CUDA emulator of the tests), else one
// at a time.
template <int V, typename acc_t>
struct ChannelAdder {
  acc_t* data;
  template <typename index_t>
  __device__ void operator()(index_t offset, const acc_t (&values)[V]) const {
    acc_t* dst = data + offset;
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(STN_CUDA_EMULATE)
    constexpr bool kFloat4 = std::is_same_v<acc_t, float> && V % 4 == 0;
#else
    constexpr bool kFloat4 = false;
#endif
    if constexpr (kFloat4) {
STN_UNROLL
      for (int i = 0; i < V; i += 4) {
        atomicAdd(reinterpret_cast<float4*>(dst + i),
                  make_float4(values[i], values[i + 1], values[i + 2], values[i + 3]));
      }
    } else {
STN_UNROLL
      for (int i = 0; i < V; ++i) atomicAdd(dst + i, values[i]);
    }
  }
};

namespace detail {
// Whether every pixel of t starts V channels that are adjacent and 16-byte
// aligned. A dimension of size 1 is read at index 0 alone: its stride is
// never used.
template <typename T>
bool whole_vectors(const Image<T>& t, int V) {
  const auto aligned = [](int64_t size, int64_t stride) {
    return size == 1 || stride * int64_t(sizeof(T)) % 16 == 0;
  };
  return t.sC == 1 && t.C > 0 && t.C % V == 0 &&
         reinterpret_cast<std::uintptr_t>(t.data) % 16 == 0 && aligned(t.N, t.sN) &&
         aligned(t.H, t.sH) && aligned(t.W, t.sW);
}

// Whether the offsets of `a` address `b` too (the kernels index grad_input
// with the input's offsets), strides of size-1 dimensions aside.
template <typename A, typename B>
bool same_offsets(const Image<A>& a, const Image<B>& b) {
  const auto same = [](int64_t size, int64_t sa, int64_t sb) { return size == 1 || sa == sb; };
  return a.N == b.N && a.C == b.C && a.H == b.H && a.W == b.W && same(a.N, a.sN, b.sN) &&
         same(a.C, a.sC, b.sC) && same(a.H, a.sH, b.sH) && same(a.W, a.sW, b.sW);
}
}  // namespace detail

// The channels an image kernel takes per step: kChannelVector<scalar_t> where
// the setting asks for vectors, the mode is bilinear or nearest, `in` (and
// grad_in where given: grad_input, in the accumulation type, addressed with
// the input's offsets) is channels_last with every pixel's channels in whole
// aligned vectors, and offsets fit 32 bits (the vector kernels index in
// int32_t alone); else 1.
template <typename scalar_t>
int channel_vector(const Image<const scalar_t>& in, const at::Tensor& grad_in, Sampling sampling,
                   int64_t points) {
  constexpr int V = kChannelVector<scalar_t>;
  using acc_t = at::opmath_type<scalar_t>;
  if (!tuning().channel_vectors || sampling.interpolation == Interpolation::Bicubic ||
      points > kMaxPoints32 || !offsets_fit_int32(in) || !detail::whole_vectors(in, V)) {
    return 1;
  }
  if (grad_in.defined()) {
    const auto g = image_of<const acc_t>(grad_in);
    if (!detail::same_offsets(in, g) || !detail::whole_vectors(g, V)) return 1;
  }
  return V;
}

}  // namespace stn

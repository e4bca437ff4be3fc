// What the CPU kernels of images (sampler_cpu.cpp) and volumes (volume_cpu.cpp)
// share: the sampling modes as compile-time constants, theta's grid with its
// target coordinates tabulated, and the build of their vectorised loops.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "../sampler_math.h"

// The loops that locate points (phase 1) are built for AVX-512 (GCC 12 on:
// x86-64-v4, measured 7 % faster on the 256x1x28x28 image forward than AVX2 on
// a Zen 4), for AVX2 and for the baseline x86-64, and the loader picks the one
// the CPU runs (GCC function multi-versioning). No fused multiply-adds in any
// of them (setup.py builds with -ffp-contract=off): the rounding follows
// ATen's, the same on every CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#if __GNUC__ >= 12
#define STN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define STN_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#else
#define STN_VECTOR_CLONES
#endif

namespace stn {

// The sampling modes as compile-time constants (each a std::integral_constant),
// so that the loops over points have no branches on them.

// f(padding).
template <typename F>
void with_padding(Sampling sampling, F&& f) {
  switch (sampling.padding) {
    case Padding::Zeros:
      return f(std::integral_constant<Padding, Padding::Zeros>{});
    case Padding::Border:
      return f(std::integral_constant<Padding, Padding::Border>{});
    case Padding::Reflection:
      return f(std::integral_constant<Padding, Padding::Reflection>{});
  }
}

// f(interpolation, padding, align_corners): for an image, bilinear, nearest or
// bicubic; for a volume (kVolume), bilinear or nearest (ops.cpp refuses
// bicubic volumes).
template <bool kVolume, typename F>
void with_modes(Sampling sampling, F&& f) {
  auto with = [&](auto interpolation) {
    with_padding(sampling, [&](auto padding) {
      if (sampling.align_corners) return f(interpolation, padding, std::true_type{});
      return f(interpolation, padding, std::false_type{});
    });
  };
  if (sampling.interpolation == Interpolation::Nearest) {
    return with(std::integral_constant<Interpolation, Interpolation::Nearest>{});
  }
  if constexpr (!kVolume) {
    if (sampling.interpolation == Interpolation::Bicubic) {
      return with(std::integral_constant<Interpolation, Interpolation::Bicubic>{});
    }
  }
  return with(std::integral_constant<Interpolation, Interpolation::Bilinear>{});
}

// theta's grid with the target coordinate of every output column, row (and
// slice) computed once per call (target_coordinate divides twice) and then
// looked up.
template <typename acc_t, typename F>
std::vector<acc_t> tabulate(int64_t size, F&& f) {
  std::vector<acc_t> table(size);
  for (int64_t i = 0; i < size; ++i) table[i] = f(i);
  return table;
}

template <typename acc_t>
struct TabulatedThetaGrid {
  const acc_t* theta;
  std::vector<acc_t> xs, ys;

  explicit TabulatedThetaGrid(const ThetaGrid<acc_t>& grid)
      : theta(grid.theta),
        xs(tabulate<acc_t>(grid.W_out, [&](int64_t w) { return grid.xt(w); })),
        ys(tabulate<acc_t>(grid.H_out, [&](int64_t h) { return grid.yt(h); })) {}
  acc_t xt(int64_t w) const { return xs[w]; }
  acc_t yt(int64_t h) const { return ys[h]; }
  template <typename T>
  Point2<T> point(int64_t n, int64_t h, int64_t w) const {
    return apply_affine<acc_t>(theta + 6 * n, xs[w], ys[h]);
  }
};

template <typename acc_t>
struct TabulatedThetaGrid3 {
  const acc_t* theta;
  std::vector<acc_t> xs, ys, zs;

  explicit TabulatedThetaGrid3(const ThetaGrid3<acc_t>& grid)
      : theta(grid.theta),
        xs(tabulate<acc_t>(grid.W_out, [&](int64_t w) { return grid.xt(w); })),
        ys(tabulate<acc_t>(grid.H_out, [&](int64_t h) { return grid.yt(h); })),
        zs(tabulate<acc_t>(grid.D_out, [&](int64_t d) { return grid.zt(d); })) {}
  acc_t xt(int64_t w) const { return xs[w]; }
  acc_t yt(int64_t h) const { return ys[h]; }
  acc_t zt(int64_t d) const { return zs[d]; }
  template <typename T>
  Point3<T> point(int64_t n, int64_t d, int64_t h, int64_t w) const {
    return apply_affine3<acc_t>(theta + 12 * n, xs[w], ys[h], zs[d]);
  }
};

}  // namespace stn

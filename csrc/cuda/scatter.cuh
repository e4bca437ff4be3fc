// The warp-aggregated scatter into grad_input (Scatter::WarpRuns in kernels.h).
//
// The backward adds each point's value times a weight into each of its corners
// in grad_input. Where a transform zooms in, hundreds of output points fall in
// one input cell, and their atomic adds to the same address queue behind each
// other. Neighbouring lanes of a warp hold neighbouring output points, so those
// points come in runs of lanes with the same corner offset: each run sums its
// values with shuffles, and its first lane makes the one atomic add of the run.
// Equal offsets that are not neighbours form runs of their own, each adding its
// sum: slower, still right. Finding the runs costs a few warp instructions per
// point; where no two neighbours share an offset, the sums take no shuffle steps,
// and the atomics are those of Scatter::Atomic.
//
// This header needs nothing but sampler_math.h and loops.cuh, so that
// tests/host/device_code_test.cpp can compile it for the CPU against the
// emulator of tests/host/cuda_emulator.h.
#pragma once

#include "../sampler_math.h"
#include "loops.cuh"

namespace stn {

// One point's scatter through its corners (bilinear: four; nearest: the
// first), set up once per point for the lanes `lanes` and used for every
// channel. Every lane of `lanes` must construct it and call add() as often,
// with no lane skipping a call.
template <typename acc_t, typename index_t>
struct WarpScatter {
  static constexpr int kMaxSteps = 5;  // runs of up to 32 lanes
  unsigned lanes;
  int n_corners;    // how many of the point's corners are scattered into
  int span[4];      // per corner: how many lanes after this one are in its run
  int heads = 0;    // bit k: this lane adds corner k's run (its first lane, inside the image)
  int steps = 0;    // the shuffle steps of the warp's longest run: ceil(log2(length))

  __device__ WarpScatter(unsigned lanes_, const Corners<acc_t, index_t>& c,
                         const Plane<index_t>& plane, Interpolation interpolation)
      : lanes(lanes_), n_corners(interpolation == Interpolation::Nearest ? 1 : 4) {
    const int lane = static_cast<int>(lane_id());
    const int last_lane = 31 - __clz(lanes);
    int longest = 0;
STN_UNROLL
    for (int k = 0; k < 4; ++k) {
      if (k >= n_corners) break;  // uniform over the warp
      // A corner outside the image adds nothing: a key no other lane has, as
      // offsets inside are >= 0 (the input's, which grad_input shares, are those
      // of a dense tensor: ops.cpp).
      const bool inside = c.inside >> k & 1;
      const index_t key = inside ? c.base + plane.neighbour_offset(k) : index_t(-1) - index_t(lane);
      const index_t previous = __shfl_up_sync(lanes, key, 1);  // lane 0: its own key
      const bool head = lane == 0 || previous != key;
      // The runs' first lanes after this one (none for lane 31, as 2u << 31 is
      // 0); this lane's run ends before the next.
      const unsigned later = __ballot_sync(lanes, head) & ~((2u << lane) - 1u);
      const int end = later != 0 ? __ffs(later) - 2 : last_lane;
      span[k] = end - lane;
      longest = max(longest, span[k]);
      heads |= int(head && inside) << k;
    }
    while (__any_sync(lanes, longest >> steps)) ++steps;
  }

  // Adds grad_out times each corner's weight into plane (grad_input's plane of
  // this channel): a segmented sum over each run (after step s, a lane holds
  // the sum of up to 2^(s+1) lanes of its run from itself on), added by the
  // run's first lane.
  __device__ void add(acc_t* grad_plane, acc_t grad_out, const Corners<acc_t, index_t>& c,
                      const Plane<index_t>& plane) const {
STN_UNROLL
    for (int k = 0; k < 4; ++k) {
      if (k >= n_corners) break;
      acc_t v = grad_out * c.weight[k];
STN_UNROLL
      for (int s = 0; s < kMaxSteps; ++s) {
        if (s >= steps) break;  // uniform over the warp
        const acc_t next = __shfl_down_sync(lanes, v, 1u << s);
        if ((1 << s) <= span[k]) v += next;
      }
      if (heads >> k & 1) atomicAdd(grad_plane + c.base + plane.neighbour_offset(k), v);
    }
  }
};

}  // namespace stn

// The per-point and per-pixel math of the deterministic (atomic-free) backward
// of the 4-D samplers, shared by the CPU loops (cpu/gather_cpu.cpp) and the CUDA
// kernels (cuda/gather_cuda.cu), so that a CPU test exercises the GPU's algorithm.
//
// The usual backward scatters each point's weighted grad_output into its (up to
// four) neighbours with atomic adds, in whatever order the threads run. Here
// grad_input is gathered instead, pixel by pixel, in a fixed order:
//  1. every point gets the key of its cell: the cell whose north-west corner is
//     the point's north-west neighbour (nearest: its one pixel), in the range
//     [-1, H-1] x [-1, W-1] of such corners, or `unused` if the point reads no
//     in-range pixel (non-finite coordinates included);
//  2. a stable sort orders the points by key, and each cell's run of points
//     is found in the sorted keys (deterministic: ties keep the point order);
//  3. a pixel is corner k of the four cells (y - (k >> 1), x - (k & 1)); it sums
//     weight k times grad_output over their runs, cells in order k = 0..3,
//     points in sorted order.
#pragma once

#include "sampler_math.h"

namespace stn {

// Cells of one batch element: (H + 1) x (W + 1), the north-west corner's row
// y0 in [-1, H - 1] and column x0 in [-1, W - 1].
struct CellShape {
  int64_t H, W;  // the input plane's extent

  STN_HD int64_t cells() const { return (H + 1) * (W + 1); }
  STN_HD int64_t cell(int64_t n, int64_t y0, int64_t x0) const {
    return (n * (H + 1) + (y0 + 1)) * (W + 1) + (x0 + 1);
  }
};

// A point's cell key and the weights of its four corners (0 for a corner
// outside the image), as the sampler's corners() gives them.
template <typename T>
struct CellEntry {
  int64_t key;
  T weight[4];
};

template <typename T>
STN_HD CellEntry<T> cell_entry(Point2<T> pt, int64_t n, const CellShape& cells, int64_t unused,
                               Sampling sampling) {
  const auto b = bilinear_point<int64_t>(pt.x, pt.y, cells.H, cells.W, sampling.padding,
                                         sampling.align_corners);
  // Offsets in the cell grid of one batch element: corners' base is then the
  // north-west corner's y0 * (W + 1) + x0.
  const Plane<int64_t> plane{cells.H, cells.W, cells.W + 1, 1};
  const auto c = corners(b, plane, sampling.interpolation);
  CellEntry<T> e;
  e.key = c.inside == 0 ? unused : cells.cell(n, 0, 0) + c.base;
STN_UNROLL
  for (int k = 0; k < 4; ++k) e.weight[k] = (c.inside >> k & 1) ? c.weight[k] : T(0);
  return e;
}

// The sorted points of every cell, as step 2 leaves them: the points of cell i
// are order[starts[i]] .. order[starts[i + 1] - 1], global point indices
// p = (n * H_out + h) * W_out + w, whose corner weights are weights[4 p + k].
// A nearest point's one pixel is corner 0 of its cell: its other corners, with
// weight 0, are not visited (0 times an infinite grad_output would be NaN).
template <typename acc_t>
struct CellRuns {
  const int64_t* starts;
  const int64_t* order;
  const acc_t* weights;
  CellShape cells;
  int64_t H_out, W_out;
  int corners;  // per cell: 4 (bilinear) or 1 (nearest)
};

// grad_input at pixel (y, x) of plane (n, c): the sum over the points whose
// corners include it of weight * grad_output, in a fixed order. go: the
// grad_output plane (n, c), with strides go_sH, go_sW.
template <typename acc_t, typename scalar_t>
STN_HD acc_t gather_pixel(const CellRuns<acc_t>& runs, int64_t n, int64_t y, int64_t x,
                          const scalar_t* go, int64_t go_sH, int64_t go_sW) {
  const int64_t first_point = n * runs.H_out * runs.W_out;
  acc_t sum = acc_t(0);
  for (int k = 0; k < runs.corners; ++k) {
    const int64_t y0 = y - (k >> 1), x0 = x - (k & 1);
    const int64_t cell = runs.cells.cell(n, y0, x0);
    for (int64_t j = runs.starts[cell]; j < runs.starts[cell + 1]; ++j) {
      const int64_t p = runs.order[j];
      const int64_t q = p - first_point;
      const int64_t h = q / runs.W_out, w = q - h * runs.W_out;
      // weight * grad_output, as the scattering backward multiplies them.
      sum += static_cast<acc_t>(go[h * go_sH + w * go_sW]) * runs.weights[4 * p + k];
    }
  }
  return sum;
}

}  // namespace stn

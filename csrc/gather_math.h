// The per-point and per-pixel math of the deterministic (atomic-free) backward
// of the samplers, images and volumes, every mode, shared by the CPU loops
// (cpu/gather_cpu.cpp) and the CUDA kernels (cuda/gather_cuda.cu), so that a
// CPU test exercises the GPU's algorithm.
//
// The usual backward scatters each point's weighted grad_output into its
// neighbours with atomic adds, in whatever order the threads run. Here
// grad_input is gathered instead, pixel by pixel, in a fixed order:
//  1. every point becomes one entry or, for bicubic, one entry per tap. An
//     entry has the key of a cell and the weights of the cell's corners:
//     - bilinear (trilinear): the cell whose first corner is the point's
//       north-west (top-north-west) neighbour, corners as the sampler numbers
//       its neighbours, 4 (8) of them;
//     - nearest: the cell of the point's one pixel, one corner;
//     - bicubic: the cell of the tap's pixel, one corner (a point's 16 taps
//       land on pixels that padding may move anywhere, so each is an entry).
//     An entry that reaches no pixel of the input (a non-finite point
//     included) gets its batch element's `unused` key, after its cells';
//  2. a stable sort orders the entries by key, and each cell's run of entries
//     is found in the sorted keys (deterministic: ties keep the entry order);
//  3. a pixel is corner k of the cells at its own cell minus corner k's
//     offset; it sums weight k times grad_output over their runs, corners in
//     order, entries in sorted order.
#pragma once

#include "sampler_math.h"

namespace stn {

// The cells of the input: each axis of a batch element's input, of size S, has
// S + 1 cells, from -1 (whose only corner inside is its upper one) to S - 1.
// Keys number the cells of each batch element, axes row-major, then one key
// for its entries that reach no pixel of the input (a non-finite point's
// included): every key of batch element n lies in [n sN, (n + 1) sN). An image
// is a volume of depth 1 with no cells before its depth 0 (sD = 0).
struct CellGrid {
  int64_t D, H, W;  // the input's extent (D = 1 for an image)
  int64_t sD, sH;   // strides of the cell axes (sW = 1)
  int64_t origin;   // the key of cell (0, 0, 0) of batch element 0
  int64_t sN;       // keys per batch element
  int64_t keys;     // keys in all: N sN

  // The cell of pixel (z, y, x) of batch element n.
  STN_HD int64_t cell(int64_t n, int64_t z, int64_t y, int64_t x) const {
    return n * sN + origin + z * sD + y * sH + x;
  }
  // The key of batch element n's entries that reach no pixel: its last.
  STN_HD int64_t unused(int64_t n) const { return n * sN + sN - 1; }
  // Offset of the cell whose corner k a pixel is, from the pixel's own cell:
  // corner k lies (k & 1, k >> 1 & 1, k >> 2) from the cell's first corner.
  STN_HD int64_t corner_offset(int k) const { return (k & 1) + (k >> 1 & 1) * sH + (k >> 2) * sD; }
  // A batch element's input, addressed in cells, for the sampler's neighbours.
  STN_HD Plane<int64_t> plane() const { return {H, W, sH, 1}; }
  STN_HD Volume<int64_t> volume() const { return {D, H, W, sD, sH, 1}; }
};

// dims: 2 (an image of H x W) or 3 (a volume of D x H x W); N batch elements.
inline CellGrid cell_grid(int64_t N, int dims, int64_t D, int64_t H, int64_t W) {
  CellGrid g;
  g.D = dims == 3 ? D : 1;
  g.H = H;
  g.W = W;
  g.sH = W + 1;
  g.sD = dims == 3 ? (H + 1) * g.sH : 0;
  g.origin = g.sD + g.sH + 1;
  g.sN = (dims == 3 ? (D + 1) * g.sD : (H + 1) * g.sH) + 1;
  g.keys = N * g.sN;
  return g;
}

// How a mode turns points into entries: 2^tap_bits entries per point, each
// with `corners` weights.
struct EntryShape {
  int tap_bits;
  int corners;

  STN_HD int taps() const { return 1 << tap_bits; }
};

inline EntryShape entry_shape(Interpolation interpolation, int dims) {
  switch (interpolation) {
    case Interpolation::Bicubic: return {4, 1};
    case Interpolation::Nearest: return {0, 1};
    default: return {0, dims == 3 ? 8 : 4};
  }
}

// Where step 1 writes a point's entries: entry e = point * taps + tap has key
// keys[e] and weights weights[e * corners + k]. key_t: int32_t where every key
// fits (half the bytes to sort, and half the radix sort's passes), else int64_t.
template <typename T, typename key_t>
struct EntryStore {
  key_t* keys;
  T* weights;
  EntryShape shape;

  // An entry from a sampler's neighbours (Corners or Corners3 in cell
  // offsets): a corner outside the input weighs 0.
  template <typename C>
  STN_HD void put(int64_t e, int64_t n, const CellGrid& cells, const C& c) const {
    keys[e] = static_cast<key_t>(c.inside == 0 ? cells.unused(n) : cells.cell(n, 0, 0, 0) + c.base);
    for (int k = 0; k < shape.corners; ++k) {
      weights[e * shape.corners + k] = (c.inside >> k & 1) ? c.weight[k] : T(0);
    }
  }
};

// Step 1 for point p (numbered across batch elements; n its batch element).
template <typename T, typename key_t>
STN_HD void put_entries(const EntryStore<T, key_t>& store, int64_t p, int64_t n, Point2<T> pt,
                        const CellGrid& cells, Sampling sampling) {
  const Plane<int64_t> plane = cells.plane();
  if (sampling.interpolation == Interpolation::Bicubic) {
    const auto b = bicubic_point<int64_t>(pt.x, pt.y, plane, sampling.padding,
                                          sampling.align_corners);
    // Tap 4 i + j: column i, row j, in the order bicubic_backward adds them;
    // each an entry with one corner.
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) {
        const int64_t e = (p << store.shape.tap_bits) + 4 * i + j;
        const bool inside = b.inside >> (4 * j + i) & 1;
        store.keys[e] = static_cast<key_t>(
            inside ? cells.cell(n, 0, 0, 0) + b.y_offset[j] + b.x_offset[i] : cells.unused(n));
        store.weights[e * store.shape.corners] = inside ? b.wx[i] * b.wy[j] : T(0);
      }
    }
    return;
  }
  const auto b = bilinear_point<int64_t>(pt.x, pt.y, cells.H, cells.W, sampling.padding,
                                         sampling.align_corners);
  store.put(p, n, cells, corners(b, plane, sampling.interpolation));
}

template <typename T, typename key_t>
STN_HD void put_entries(const EntryStore<T, key_t>& store, int64_t p, int64_t n, Point3<T> pt,
                        const CellGrid& cells, Sampling sampling) {
  store.put(p, n, cells, locate(pt, cells.volume(), sampling).corners);
}

// Point q of batch element n of a source (TensorGrid or ThetaGrid, or their
// volume forms), q = (d * H_out + h) * W_out + w.
template <typename acc_t, typename Source>
STN_HD auto point_at(const Source& src, int64_t n, int64_t q, int64_t H_out, int64_t W_out) {
  const int64_t r = q / W_out, w = q - r * W_out;
  if constexpr (Source::kDims == 3) {
    const int64_t d = r / H_out;
    return src.template point<acc_t>(n, d, r - d * H_out, w);
  } else {
    return src.template point<acc_t>(n, r, w);
  }
}

// The sorted entries of every cell, as step 2 leaves them: the entries of
// cell i are order[starts[i]] .. order[starts[i + 1] - 1].
template <typename acc_t>
struct CellRuns {
  const int64_t* starts;
  const int64_t* order;
  const acc_t* weights;
  CellGrid cells;
  EntryShape shape;
  int64_t points;  // output points per batch element
};

// The channels a gather reads its runs once for (gather_pixel_channels).
constexpr int kGatherChannels = 4;

// grad_input at pixel (z, y, x) of planes (n, c) .. (n, c + channels - 1),
// channels <= kGatherChannels: per channel, the sum over the entries whose
// corners include the pixel of weight * grad_output, in a fixed order (the
// same for every channel, and whatever `channels`: the runs are read once for
// them all). go: the grad_output plane (n, c), point q of channel c + i at
// go[i * go_channel_stride + q * go_stride]. A nearest entry has one corner, so
// that 0 times an infinite grad_output (NaN) never enters.
template <typename acc_t, typename scalar_t>
STN_HD void gather_pixel_channels(const CellRuns<acc_t>& runs, int64_t n, int64_t z, int64_t y,
                                  int64_t x, const scalar_t* go, int64_t go_stride,
                                  int64_t go_channel_stride, int channels,
                                  acc_t (&sum)[kGatherChannels]) {
  const int64_t own = runs.cells.cell(n, z, y, x);
  const int64_t first_point = n * runs.points;
  const int corners = runs.shape.corners;
  for (int i = 0; i < kGatherChannels; ++i) sum[i] = acc_t(0);
  for (int k = 0; k < corners; ++k) {
    const int64_t cell = own - runs.cells.corner_offset(k);
    for (int64_t j = runs.starts[cell]; j < runs.starts[cell + 1]; ++j) {
      const int64_t e = runs.order[j];
      const scalar_t* at = go + ((e >> runs.shape.tap_bits) - first_point) * go_stride;
      const acc_t w = runs.weights[e * corners + k];
      // grad_output * weight: the scattering backward's product for bilinear and
      // nearest; for bicubic it is (grad_output * w_x) * w_y, this one
      // grad_output * (w_x * w_y), which may differ in the last bit.
      for (int i = 0; i < kGatherChannels; ++i) {
        if (i < channels) sum[i] += static_cast<acc_t>(at[i * go_channel_stride]) * w;
      }
    }
  }
}

}  // namespace stn

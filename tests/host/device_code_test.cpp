// The CUDA kernels' warp-level and channel-vector code, run on the CPU
// (tests/test_device_code_on_host.py builds and runs this program):
//  - WarpScatter (csrc/cuda/scatter.cuh) on an emulated warp (cuda_emulator.h):
//    grad_input equals the plain sum of every lane's adds, bit for bit, with
//    one atomic add per run of lanes that share a corner, none outside the
//    image, and as many shuffle steps as the longest run needs;
//  - STN_FOR_EACH_WARP_POINT (csrc/cuda/loops.cuh): every point once, and
//    `lanes` the warp's first lanes, those whose point is in range;
//  - the block reductions of block_sums.cuh (grad_theta's), on emulated blocks
//    of every size plan_launch makes: the plain sums, once per block; and after
//    a warp loop whose partial warp shuffles over its own lanes;
//  - the emulator itself: each broken contract fails its launch, and the next
//    launch runs;
//  - interpolate_channels and interpolate_backward_channels (sampler_math.h),
//    which the channel-vector kernels use, against the one-channel functions.
// Prints one line per failure and a summary; exits 1 if anything failed.
#include "cuda_emulator.h"

#include "cuda/block_sums.cuh"
#include "cuda/scatter.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace stn;

int failures = 0;

#define EXPECT(cond, ...)                                                 \
  do {                                                                    \
    if (!(cond)) {                                                        \
      if (++failures <= 20) {                                             \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
        std::printf(__VA_ARGS__);                                         \
        std::printf("\n");                                                \
      }                                                                   \
    }                                                                     \
  } while (0)

using Rng = std::mt19937_64;

double uniform(Rng& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

int64_t pick(Rng& rng, std::initializer_list<int64_t> values) {
  return values.begin()[rng() % values.size()];
}

// A plane of H x W pixels with C channels, NCHW or channels_last.
struct Layout {
  int64_t H, W, C;
  bool channels_last;
  int64_t channel_stride() const { return channels_last ? 1 : H * W; }
  template <typename index_t>
  Plane<index_t> plane() const {
    const int64_t sW = channels_last ? C : 1;
    return {index_t(H), index_t(W), index_t(W * sW), index_t(sW)};
  }
};

Layout random_layout(Rng& rng, int64_t channels_multiple = 1) {
  return {pick(rng, {1, 2, 3, 5, 8, 17}), pick(rng, {1, 2, 3, 5, 8, 17, 40}),
          channels_multiple * pick(rng, {1, 2, 3}), rng() % 2 == 0};
}

// The normalised source points of a warp's 32 lanes: a row of an output
// (neighbouring lanes close together where the transform zooms in), rows that
// wrap within the warp, or scattered points; some of them non-finite or far.
std::vector<std::pair<double, double>> warp_points(Rng& rng) {
  std::vector<std::pair<double, double>> pts(32);
  const double x0 = uniform(rng, -1.3, 1.3), y0 = uniform(rng, -1.3, 1.3);
  const double dx = (rng() % 2 ? 1 : -1) * static_cast<double>(pick(rng, {0, 1, 10, 50, 300, 1000})) / 1000;
  const double dy = uniform(rng, -0.02, 0.02);
  const int64_t kind = rng() % 3, row = 1 + rng() % 31;
  for (int l = 0; l < 32; ++l) {
    if (kind == 0) {
      pts[l] = {x0 + l * dx, y0 + l * dy};
    } else if (kind == 1) {
      pts[l] = {x0 + (l % row) * dx, y0 + (l / row) * 0.1};
    } else {
      pts[l] = {uniform(rng, -1.3, 1.3), uniform(rng, -1.3, 1.3)};
    }
    if (rng() % 16 == 0) {
      const double odd = pick(rng, {0, 1, 2}) == 0 ? NAN : pick(rng, {0, 1}) ? INFINITY : 1e30;
      (rng() % 2 ? pts[l].first : pts[l].second) = rng() % 2 ? odd : -odd;
    }
  }
  return pts;
}

template <typename acc_t, typename index_t>
std::vector<Corners<acc_t, index_t>> corners_of(const std::vector<std::pair<double, double>>& pts,
                                                const Layout& layout, Sampling sampling) {
  std::vector<Corners<acc_t, index_t>> cs;
  for (const auto& [gx, gy] : pts) {
    const auto b = bilinear_point<index_t>(acc_t(gx), acc_t(gy), layout.H, layout.W,
                                           sampling.padding, sampling.align_corners);
    cs.push_back(corners(b, layout.plane<index_t>(), sampling.interpolation));
  }
  return cs;
}

Sampling random_sampling(Rng& rng, bool nearest_too) {
  const auto interpolation =
      nearest_too && rng() % 3 == 0 ? Interpolation::Nearest : Interpolation::Bilinear;
  return {interpolation, static_cast<Padding>(rng() % 3), rng() % 2 == 0};
}

// One warp's backward scatter of `active` lanes into C channels.
template <typename acc_t, typename index_t>
void test_warp_scatter(Rng& rng) {
  const Layout layout = random_layout(rng);
  const Sampling sampling = random_sampling(rng, true);
  const auto plane = layout.plane<index_t>();
  const int active = static_cast<int>(pick(rng, {1, 2, 5, 16, 31, 32, 32, 32}));
  const unsigned lanes = active == 32 ? 0xffffffffu : (1u << active) - 1u;
  auto cs = corners_of<acc_t, index_t>(warp_points(rng), layout, sampling);
  // Weights and values that are small multiples of 1/16, so that every sum is
  // exact in any order: the warp's result must equal the plain sum to the bit.
  for (auto& c : cs) {
    for (acc_t& w : c.weight) w = acc_t(rng() % 17) / 16;
  }
  std::vector<acc_t> grad_out(32 * layout.C);
  for (acc_t& g : grad_out) g = acc_t(int(rng() % 17) - 8);

  const int n_corners = sampling.interpolation == Interpolation::Nearest ? 1 : 4;
  const int64_t size = layout.H * layout.W * layout.C, guard = 16;
  std::vector<acc_t> expected(size, acc_t(0));
  int64_t expected_atomics = 0;
  int longest = 1;
  for (int k = 0; k < n_corners; ++k) {
    int64_t previous = -1, run = 0;
    for (int l = 0; l < active; ++l) {
      const bool inside = cs[l].inside >> k & 1;
      const int64_t key = inside ? int64_t(cs[l].base + plane.neighbour_offset(k)) : -2 - l;
      run = l > 0 && key == previous ? run + 1 : 1;
      longest = std::max<int>(longest, static_cast<int>(run));
      expected_atomics += layout.C * (inside && run == 1);
      previous = key;
      if (!inside) continue;
      for (int64_t c = 0; c < layout.C; ++c) {
        expected[c * layout.channel_stride() + key] += grad_out[c * 32 + l] * cs[l].weight[k];
      }
    }
  }
  int expected_steps = 0;
  while ((longest - 1) >> expected_steps) ++expected_steps;

  const acc_t sentinel = acc_t(12345);
  std::vector<acc_t> grad_in(size + 2 * guard, sentinel);
  std::fill(grad_in.begin() + guard, grad_in.end() - guard, acc_t(0));
  std::vector<int> steps(32, -1);
  cuda_emulator::atomic_log().addresses.clear();
  cuda_emulator::run_warp([&] {
    const int l = cuda_emulator::lane();
    if (l >= active) return;  // as the lanes past the last point
    const WarpScatter<acc_t, index_t> scatter(lanes, cs[l], plane, sampling.interpolation);
    steps[l] = scatter.steps;
    for (int64_t c = 0; c < layout.C; ++c) {
      scatter.add(grad_in.data() + guard + c * layout.channel_stride(), grad_out[c * 32 + l],
                  cs[l], plane);
    }
  });

  for (int64_t i = 0; i < size; ++i) {
    EXPECT(grad_in[guard + i] == expected[i], "grad_input[%lld] = %g, expected %g (%lld x %lld x %lld)",
           (long long)i, double(grad_in[guard + i]), double(expected[i]), (long long)layout.H,
           (long long)layout.W, (long long)layout.C);
  }
  for (int64_t i = 0; i < guard; ++i) {
    EXPECT(grad_in[i] == sentinel && grad_in[guard + size + i] == sentinel,
           "an add outside grad_input");
  }
  const auto& adds = cuda_emulator::atomic_log().addresses;
  EXPECT(int64_t(adds.size()) == expected_atomics, "%zu atomic adds, expected %lld (%d lanes)",
         adds.size(), (long long)expected_atomics, active);
  for (int l = 0; l < active; ++l) {
    EXPECT(steps[l] == expected_steps, "lane %d: %d shuffle steps, expected %d", l, steps[l],
           expected_steps);
  }
}

// Every point of [0, P) visited once by the warps of a launch, `lanes` right.
template <typename index_t>
void test_warp_loop(index_t P, unsigned threads, unsigned grid) {
  std::vector<int> visits(static_cast<size_t>(P), 0);
  std::mutex mutex;
  for (unsigned block = 0; block < grid; ++block) {
    for (unsigned warp = 0; warp < threads / 32; ++warp) {
      cuda_emulator::run_warp([&] {
        const index_t lane = static_cast<index_t>(cuda_emulator::lane());
        STN_FOR_EACH_WARP_POINT(P, lanes) {
          unsigned expected = 0;
          for (index_t l = 0; l < 32; ++l) expected |= unsigned(p - lane + l < P) << l;
          std::lock_guard<std::mutex> lock(mutex);
          EXPECT(lanes == expected, "point %lld: lanes %08x, expected %08x", (long long)p, lanes,
                 expected);
          ++visits[static_cast<size_t>(p)];
        }
      }, warp, block, threads, grid);
    }
  }
  for (index_t p = 0; p < P; ++p) {
    EXPECT(visits[p] == 1, "point %lld of %lld visited %d times (%u x %u threads)", (long long)p,
           (long long)P, visits[p], grid, threads);
  }
}

// The affine backward's shape: the warp loop, whose last partial warp's lanes
// shuffle among themselves (WarpScatter over `lanes`) while the warp's other
// lanes have gone on to the block's reduction over whole warps; legal under
// PTX's rules, which the emulator follows.
template <typename T>
void test_warp_loop_then_block_sum(int64_t P, unsigned threads) {
  T first = std::numeric_limits<T>::quiet_NaN();
  cuda_emulator::run_block([&] {
    T v = T(0);
    STN_FOR_EACH_WARP_POINT(P, lanes) {
      v += __shfl_up_sync(lanes, T(1), 1);  // lane 0: its own 1
    }
    const T s = block_sum(v);
    if (threadIdx.x == 0) first = s;
  }, threads);
  const T expected = T(P);  // one block: its threads take every point
  EXPECT(first == expected, "%lld points, %u threads: block_sum %g, expected %g", (long long)P,
         threads, double(first), double(expected));
}

// block_sum, and reduce_block_sums both ways (atomic adds into sums, stored
// partials), on one block of a launch: thread 0's sums equal the plain sums
// (exact: multiples of 1/4), one atomic add per value, nothing else written.
template <typename T>
void test_block_sums(Rng& rng) {
  constexpr int K = 6;  // grad_theta's values
  for (unsigned threads : {32u, 64u, 96u, 160u, 256u}) {
    const unsigned grid = 3, block = static_cast<unsigned>(rng() % grid);
    const int64_t N = 2, n = static_cast<int64_t>(rng() % N);
    std::vector<T> values(threads * K);
    for (T& v : values) v = T(int(rng() % 17) - 8) / 4;
    T expected[K] = {};
    for (unsigned t = 0; t < threads; ++t) {
      for (int k = 0; k < K; ++k) expected[k] += values[t * K + k];
    }
    const T sentinel = T(12345);
    std::vector<T> sums(N * K, T(0)), partials(N * grid * K, sentinel);
    T first = std::numeric_limits<T>::quiet_NaN();
    cuda_emulator::order_seed = rng();
    cuda_emulator::atomic_log().addresses.clear();
    cuda_emulator::run_block([&] {
      T v[K];
      for (int k = 0; k < K; ++k) v[k] = values[threadIdx.x * K + k];
      const T s = block_sum(v[0]);
      if (threadIdx.x == 0) first = s;
      reduce_block_sums(sums.data(), static_cast<T*>(nullptr), n, v);
      reduce_block_sums(sums.data(), partials.data(), n, v);
    }, threads, block, grid);
    EXPECT(first == expected[0], "%u threads: block_sum %g, expected %g", threads, double(first),
           double(expected[0]));
    for (int64_t i = 0; i < N * K; ++i) {
      const T want = i / K == n ? expected[i % K] : T(0);
      EXPECT(sums[i] == want, "%u threads: sums[%lld] = %g, expected %g", threads, (long long)i,
             double(sums[i]), double(want));
    }
    for (int64_t i = 0; i < N * grid * K; ++i) {
      const bool mine = i / K == n * grid + block;
      const T want = mine ? expected[i % K] : sentinel;
      EXPECT(partials[i] == want, "%u threads: partials[%lld] = %g, expected %g", threads,
             (long long)i, double(partials[i]), double(want));
    }
    EXPECT(cuda_emulator::atomic_log().addresses.size() == K, "%u threads: %zu atomic adds",
           threads, cuda_emulator::atomic_log().addresses.size());
  }
}

// The channel-vector math against the one-channel functions it stands for:
// values and grad_input bit for bit, the gradient with respect to the pixel
// (summed in another order) to rounding.
template <int V, typename acc_t, typename index_t>
void test_channel_math(Rng& rng) {
  Layout layout = random_layout(rng, V);
  layout.channels_last = true;
  const Sampling sampling = random_sampling(rng, true);
  const auto plane = layout.plane<index_t>();
  std::vector<acc_t> data(layout.H * layout.W * layout.C);
  for (acc_t& x : data) x = acc_t(uniform(rng, -1, 1));
  const auto pts = warp_points(rng);
  const bool nearest = sampling.interpolation == Interpolation::Nearest;
  for (const auto& [gx, gy] : pts) {
    const auto b = bilinear_point<index_t>(acc_t(gx), acc_t(gy), layout.H, layout.W,
                                           sampling.padding, sampling.align_corners);
    const auto c = corners(b, plane, sampling.interpolation);
    for (int64_t c0 = 0; c0 < layout.C; c0 += V) {
      const acc_t* at = data.data() + c0;
      auto load = [&](index_t offset, acc_t(&x)[V]) {
        for (int i = 0; i < V; ++i) x[i] = at[offset + i];
      };
      acc_t v[V];
      interpolate_channels(load, c, plane, v);
      acc_t grad_out[V];
      for (acc_t& g : grad_out) g = acc_t(uniform(rng, -1, 1));
      std::vector<acc_t> gi(data.size(), acc_t(0)), gi_scalar(data.size(), acc_t(0));
      Point2<acc_t> grad{0, 0}, grad_scalar{0, 0};
      interpolate_backward_channels(load, grad_out, c, b, plane, true, !nearest,
                                    [&](index_t offset, const acc_t(&g)[V]) {
                                      for (int i = 0; i < V; ++i) gi[c0 + offset + i] += g[i];
                                    },
                                    grad);
      for (int i = 0; i < V; ++i) {
        const acc_t scalar = interpolate(at + i, c, plane);
        EXPECT(std::memcmp(&v[i], &scalar, sizeof scalar) == 0, "channel %d: %.17g, one-channel %.17g",
               i, double(v[i]), double(scalar));
        interpolate_backward(at + i, grad_out[i], c, b, plane, true, !nearest,
                             [&](index_t offset, acc_t g) { gi_scalar[c0 + i + offset] += g; },
                             grad_scalar);
      }
      EXPECT(gi == gi_scalar, "grad_input differs from the one-channel backward's");
      const double tol = 8 * V * std::numeric_limits<acc_t>::epsilon();
      EXPECT(std::abs(double(grad.x - grad_scalar.x)) <= tol * (1 + std::abs(double(grad_scalar.x))) &&
             std::abs(double(grad.y - grad_scalar.y)) <= tol * (1 + std::abs(double(grad_scalar.y))),
             "pixel gradient (%.17g, %.17g), one-channel (%.17g, %.17g)", double(grad.x),
             double(grad.y), double(grad_scalar.x), double(grad_scalar.y));
    }
  }
}

void empty_kernel() {}

// Each broken contract fails its launch (Failure, saying what broke), and the
// next launch on the same thread runs as usual.
void test_failures() {
  using cuda_emulator::lane;
  constexpr unsigned kAll = 0xffffffffu;
  alignas(16) static float sums[8];
  const struct {
    const char* expected;  // what the failure says, or "either|or" where the order decides
    unsigned threads;
    std::function<void()> body;
  } cases[] = {
      {"returns while a call that names it waits|"
       "calls with a mask that names a lane that has returned",
       32,
       [] { if (lane() != 3) __shfl_down_sync(kAll, 1.0f, 1); }},
      {"calls with a mask that leaves it out", 32, [] { __ballot_sync(1u << (lane() + 1) % 32, 1); }},
      {"makes another call over a mask whose call waits for it", 32,
       [] {
         if (lane() == 0) __shfl_down_sync(3u, 1.0f, 1);
         if (lane() == 1) __ballot_sync(3u, 1);
       }},
      {"waits for threads that never make the call", 2,
       [] {
         if (lane() == 0) __shfl_down_sync(3u, 1.0f, 1);
         if (lane() == 1) __syncthreads();
       }},
      {"returns while others wait at __syncthreads|"
       "waits at __syncthreads for a thread that has returned",
       64, [] { if (threadIdx.x != 40) __syncthreads(); }},
      {"not 16-byte aligned", 32,
       [] { atomicAdd(reinterpret_cast<float4*>(sums + 1), make_float4(1, 1, 1, 1)); }},
      {"a thread threw", 32, [] { if (lane() == 5) throw std::runtime_error("out of range"); }},
  };
  for (const auto& c : cases) {
    std::string what = "no failure";
    try {
      cuda_emulator::run_block(c.body, c.threads);
    } catch (const cuda_emulator::Failure& e) {
      what = e.what();
    }
    // Either of two messages where the threads' order decides which lane sees the fault first.
    const std::string expected = c.expected, first = expected.substr(0, expected.find('|'));
    const std::string second = expected.substr(expected.find('|') + 1);
    EXPECT(what.find(first) != std::string::npos || what.find(second) != std::string::npos,
           "expected a failure that %s, got: %s", c.expected, what.c_str());
    float total = 0;
    cuda_emulator::run_warp([&] {
      float v = 1;
      for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kAll, v, offset);
      if (lane() == 0) total = v;
    });
    EXPECT(total == 32, "after a failure (%s): a warp's sum %g, expected 32", c.expected, double(total));
  }
  std::string what = "no failure";
  try {
    cuda_emulator::launch(dim3(1, 65536), dim3(32), &empty_kernel);
  } catch (const cuda_emulator::Failure& e) {
    what = e.what();
  }
  EXPECT(what.find("which a GPU refuses") != std::string::npos, "a launch of 65536 blocks along y: %s",
         what.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 300;
  const uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 2026;
  Rng rng(seed);
  cuda_emulator::atomic_log().record = true;
  for (int i = 0; i < cases; ++i) {
    test_warp_scatter<float, int32_t>(rng);
    test_warp_scatter<double, int64_t>(rng);
  }
  for (int64_t P : {0, 1, 31, 32, 33, 63, 64, 65, 200, 511, 512, 513, 1000}) {
    test_warp_loop<int32_t>(static_cast<int32_t>(P), 64, 3);
    test_warp_loop<int64_t>(P, 256, 2);
  }
  for (int64_t P : {1, 23, 32, 100, 255}) {
    test_warp_loop_then_block_sum<float>(P, 256);
    test_warp_loop_then_block_sum<double>(P, 96);
  }
  // Each with its own order of threads (order_seed): a missing __syncthreads
  // shows in some orders only.
  for (int i = 0; i < 32; ++i) {
    test_block_sums<float>(rng);
    test_block_sums<double>(rng);
  }
  test_failures();
  for (int i = 0; i < cases; ++i) {
    test_channel_math<4, float, int32_t>(rng);
    test_channel_math<8, float, int32_t>(rng);
    test_channel_math<2, double, int64_t>(rng);
  }
  std::printf("%d cases, seed %llu: %d failures\n", cases, (unsigned long long)seed, failures);
  return failures == 0 ? 0 : 1;
}

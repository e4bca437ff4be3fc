// One CUDA warp emulated on the CPU, so that the warp-level code of csrc/cuda
// (scatter.cuh, loops.cuh) compiles with a host compiler and runs in the tests
// without a GPU.
//
// Each lane is a std::thread. The warp intrinsics are collectives, as on the
// GPU since Volta: a call returns once every lane named in its mask has made
// the same call with the same mask, the lanes need not arrive together, and
// lanes with disjoint masks may call at the same time. The emulator checks
// that contract and fails the program, naming the lane and the call, where a
// lane calls outside its mask, calls something else or returns while a call
// that names it waits, or leaves the others waiting. A lane that reads a lane outside
// the mask (undefined on the GPU) gets poison: NaN, or an odd integer.
//
// What it does not model: memory ordering between lanes (the code under test
// shares data only through the intrinsics and atomics) and warps of a block
// running at once (run_warp emulates one warp at a time).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <list>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#define __device__

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim, gridDim;

using std::max;
using std::min;

namespace warp_emulator {

[[noreturn]] inline void fail(const char* what, int lane, const char* call, unsigned mask) {
  std::fprintf(stderr, "warp emulator: lane %d %s (%s, mask %08x)\n", lane, what, call, mask);
  std::fflush(stderr);
  std::_Exit(2);
}

inline int lane() { return static_cast<int>(threadIdx.x & 31u); }

// The calls waiting for their lanes, one per mask.
class Collectives {
 public:
  // Publishes this lane's value for `call` over `mask` and returns every
  // lane's, once all lanes of `mask` have published theirs.
  std::vector<uint64_t> exchange(const char* call, unsigned mask, uint64_t value) {
    const int me = lane();
    std::unique_lock<std::mutex> lock(mutex_);
    if (!(mask >> me & 1)) fail("calls with a mask that leaves it out", me, call, mask);
    if (mask & returned_) fail("calls with a mask that names a lane that has returned", me, call, mask);
    Pending* mine = nullptr;
    for (Pending& p : pending_) {
      if (p.complete || !(p.mask >> me & 1)) continue;
      if (p.mask != mask || std::strcmp(p.call, call) != 0) {
        fail("makes another call while one that names it waits", me, call, mask);
      }
      mine = &p;
    }
    if (mine == nullptr) mine = &pending_.emplace_back(Pending{call, mask});
    mine->values[me] = value;
    mine->arrived |= 1u << me;
    if (mine->arrived == mask) {
      mine->complete = true;
      woken_.notify_all();
    } else if (!woken_.wait_for(lock, std::chrono::seconds(10), [&] { return mine->complete; })) {
      fail("waits for lanes that never make the call", me, call, mask);
    }
    std::vector<uint64_t> values(mine->values, mine->values + 32);
    if (--mine->readers == 0) {
      pending_.remove_if([&](const Pending& p) { return &p == mine; });
    }
    return values;
  }

  // Lanes about to run a new body, or this one leaving its body.
  void reset() { returned_ = 0; }
  void leave() {
    const int me = lane();
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Pending& p : pending_) {
      if (!p.complete && p.mask >> me & 1) {
        fail("returns while a call that names it waits", me, p.call, p.mask);
      }
    }
    returned_ |= 1u << me;
  }

 private:
  struct Pending {
    const char* call;
    unsigned mask;
    unsigned arrived = 0;
    bool complete = false;
    int readers = __builtin_popcount(mask);
    uint64_t values[32] = {};
  };
  std::mutex mutex_;
  std::condition_variable woken_;
  std::list<Pending> pending_;
  unsigned returned_ = 0;
};

inline Collectives& collectives() {
  static Collectives c;
  return c;
}

template <typename T>
uint64_t bits_of(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}

template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

template <typename T>
T poison() {
  if constexpr (std::is_floating_point_v<T>) {
    return std::numeric_limits<T>::quiet_NaN();
  } else {
    return static_cast<T>(0x5bd1e995);
  }
}

// Lane `source`'s value of a shuffle over `mask`, or this lane's own where
// source lies outside the warp.
template <typename T>
T shuffle(const char* call, unsigned mask, T v, int source) {
  const std::vector<uint64_t> all = collectives().exchange(call, mask, bits_of(v));
  if (source < 0 || source > 31) return v;
  return mask >> source & 1 ? from_bits<T>(all[source]) : poison<T>();
}

// Runs body() on the 32 lanes of warp `warp` of block `block` of a launch of
// `grid` blocks of `threads` threads (a multiple of 32), one thread per lane,
// and returns when every lane has returned.
inline void run_warp(const std::function<void()>& body, unsigned warp = 0, unsigned block = 0,
                     unsigned threads = 32, unsigned grid = 1) {
  collectives().reset();
  std::vector<std::thread> lanes;
  for (unsigned l = 0; l < 32; ++l) {
    lanes.emplace_back([&, l] {
      threadIdx = {warp * 32 + l, 0, 0};
      blockIdx = {block, 0, 0};
      blockDim = {threads, 1, 1};
      gridDim = {grid, 1, 1};
      body();
      collectives().leave();
    });
  }
  for (std::thread& t : lanes) t.join();
}

// The atomic adds of the lanes, in the order they happened.
struct AtomicLog {
  std::mutex mutex;
  std::vector<const void*> addresses;
};

inline AtomicLog& atomic_log() {
  static AtomicLog log;
  return log;
}

template <typename T>
T atomic_add(T* address, T v) {
  AtomicLog& log = atomic_log();
  std::lock_guard<std::mutex> lock(log.mutex);
  log.addresses.push_back(address);
  const T old = *address;
  *address = old + v;
  return old;
}

}  // namespace warp_emulator

// The intrinsics, as CUDA declares them.
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
  return warp_emulator::shuffle("__shfl_up_sync", mask, v,
                                warp_emulator::lane() - static_cast<int>(delta));
}

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  return warp_emulator::shuffle("__shfl_down_sync", mask, v,
                                warp_emulator::lane() + static_cast<int>(delta));
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const auto all = warp_emulator::collectives().exchange("__ballot_sync", mask, predicate != 0);
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l) ballot |= unsigned(mask >> l & 1 && all[l] != 0) << l;
  return ballot;
}

inline int __any_sync(unsigned mask, int predicate) {
  const auto all = warp_emulator::collectives().exchange("__any_sync", mask, predicate != 0);
  for (int l = 0; l < 32; ++l) {
    if (mask >> l & 1 && all[l] != 0) return 1;
  }
  return 0;
}

inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }

inline float atomicAdd(float* address, float v) { return warp_emulator::atomic_add(address, v); }
inline double atomicAdd(double* address, double v) { return warp_emulator::atomic_add(address, v); }

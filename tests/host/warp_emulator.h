// CUDA warps and blocks emulated on the CPU, so that the warp- and block-level
// code of csrc/cuda (scatter.cuh, block_sums.cuh, loops.cuh) compiles with a
// host compiler and runs in the tests without a GPU.
//
// Each thread is a std::thread. __syncthreads is a barrier of the block's
// threads (a thread that returns while others wait there fails the program,
// as does one that never comes); __shared__ variables are static, which is
// what shared memory is while one block runs at a time.
// The warp intrinsics are collectives, as on the
// GPU since Volta: a call returns once every lane named in its mask has made
// the same call with the same mask, the lanes need not arrive together, and
// lanes with disjoint masks may call at the same time. The emulator checks
// that contract and fails the program, naming the lane and the call, where a
// lane calls outside its mask, calls something else or returns while a call
// that names it waits, or leaves the others waiting. A lane that reads a lane outside
// the mask (undefined on the GPU) gets poison: NaN, or an odd integer.
//
// What it does not model: memory ordering between threads beyond what the
// barrier and the intrinsics give, and blocks running at once (run_block runs
// one block; run_warp one warp of a block).
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
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim, gridDim;

using std::max;
using std::min;

namespace warp_emulator {

[[noreturn]] inline void fail(const char* what, int lane, const char* call, unsigned mask) {
  std::fprintf(stderr, "warp emulator: thread %u (lane %d) %s (%s, mask %08x)\n", threadIdx.x, lane,
               what, call, mask);
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

  // This lane leaving its body.
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

// __syncthreads: every running thread of the block arrives before any goes on.
class Barrier {
 public:
  explicit Barrier(unsigned threads) : threads_(threads) {}
  void arrive() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (returned_ > 0) {
      fail("waits at __syncthreads for a thread that has returned", lane(), "__syncthreads", 0);
    }
    const uint64_t generation = generation_;
    if (++arrived_ == threads_) {
      arrived_ = 0;
      ++generation_;
      woken_.notify_all();
    } else if (!woken_.wait_for(lock, std::chrono::seconds(10),
                                [&] { return generation_ != generation; })) {
      fail("waits at __syncthreads for threads that never come", lane(), "__syncthreads", 0);
    }
  }
  void leave() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (arrived_ > 0) fail("returns while others wait at __syncthreads", lane(), "__syncthreads", 0);
    ++returned_;
  }

 private:
  const unsigned threads_;
  unsigned arrived_ = 0, returned_ = 0;
  uint64_t generation_ = 0;
  std::mutex mutex_;
  std::condition_variable woken_;
};

// The calling thread's warp and block (run_block and run_warp set them).
inline thread_local Collectives* this_warp = nullptr;
inline thread_local Barrier* this_block = nullptr;

inline Collectives& collectives() { return *this_warp; }

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

// Runs body() on threads [first, first + count) of block `block` of a launch of
// `grid` blocks of `threads` threads (a multiple of 32), one std::thread each,
// and returns when every one has returned.
inline void run_threads(const std::function<void()>& body, unsigned first, unsigned count,
                        unsigned block, unsigned threads, unsigned grid) {
  std::vector<Collectives> warps(threads / 32);
  Barrier barrier(count);
  std::vector<std::thread> running;
  for (unsigned t = first; t < first + count; ++t) {
    running.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      blockIdx = {block, 0, 0};
      blockDim = {threads, 1, 1};
      gridDim = {grid, 1, 1};
      this_warp = &warps[t / 32];
      this_block = &barrier;
      body();
      collectives().leave();
      barrier.leave();
    });
  }
  for (std::thread& t : running) t.join();
}

// body() on the 32 lanes of warp `warp` of a block (its other warps do not run).
inline void run_warp(const std::function<void()>& body, unsigned warp = 0, unsigned block = 0,
                     unsigned threads = 32, unsigned grid = 1) {
  run_threads(body, warp * 32, 32, block, threads, grid);
}

// body() on every thread of block `block`.
inline void run_block(const std::function<void()>& body, unsigned threads, unsigned block = 0,
                      unsigned grid = 1) {
  run_threads(body, 0, threads, block, threads, grid);
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

inline void __syncthreads() { warp_emulator::this_block->arrive(); }

// CUDA kernels, blocks and warps emulated on the CPU, so that the device code
// of csrc/cuda compiles with a host compiler and runs in the tests without a
// GPU: its warp- and block-level pieces one at a time (device_code_test.cpp),
// and whole kernels, launched as the extension launches them (setup.py's
// STN_CUDA_EMULATE=1, scripts/sanitize.sh --emulate-cuda).
//
// Each CUDA thread is a fiber (ucontext) of the calling OS thread, which runs
// a block's threads one at a time, each until it returns or waits at a
// collective, then the waiting ones again, until all have returned. Each pass
// over the threads goes in an order shuffled by the block, the pass and
// order_seed, and leaves some warps out, as slow warps would be. Blocks run
// one after another. So a launch does the same thing run after run (its
// atomic adds too) and its threads never race, while a missing __syncthreads
// between two threads' accesses to shared memory still shows.
//
// __syncthreads is a barrier of the block's threads; __shared__ variables are
// static, per OS thread: what shared memory is while one block runs at a time.
// The warp intrinsics are collectives, as on the GPU since Volta: a call
// returns once every lane named in its mask has made the same call with the
// same mask; the lanes need not arrive together, and lanes with disjoint masks
// may call at the same time, and a lane may make calls over other masks while
// one that names it waits. The emulator checks that contract, and the launch
// fails (Failure, naming the lane and the call) where a lane calls outside
// its mask, makes another call over the mask of a call that waits for it,
// returns while a call that names it waits, or leaves the others waiting;
// likewise for __syncthreads. A lane
// that reads a lane outside the mask (undefined on the GPU) gets poison: NaN,
// or an odd integer.
//
// A launch that a GPU would refuse (too many threads or blocks) fails too.
//
// What it does not model: threads running at once (a data race between them
// does no harm here), memory ordering, and device memory: kernels run on host
// memory (CPU tensors), where AddressSanitizer sees the accesses to tensors and
// to the threads' stacks (each switch of fibers is announced to it), but not
// to __shared__ arrays (thread_local, which GCC's ASan leaves unchecked); and
// shared memory is not poisoned before a block, so a read before a write there
// goes unseen.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMULATOR_ASAN 1
#else
#define CUDA_EMULATOR_ASAN 0
#endif

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim, gridDim;

using std::max;
using std::min;

namespace cuda_emulator {

// A broken contract or a fault of a kernel: the launch stops (its other
// threads never run on), and launch(), run_warp() or run_block() throws this.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const char* what, int lane, const char* call, unsigned mask);

// The thread's index within its block, x fastest, and its lane.
inline unsigned linear_thread() {
  return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
}
inline int lane() { return static_cast<int>(linear_thread() & 31u); }

// A fiber's stack, with a page below it that faults on access: a stack that
// overflows stops the program, as on the GPU, rather than corrupting memory.
class Stack {
 public:
  static constexpr size_t kBytes = size_t(128) << 10;
  Stack() {
    void* p = mmap(nullptr, kBytes + guard(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED || mprotect(p, guard(), PROT_NONE) != 0) {
      fail("cannot map a stack", 0, "launch", 0);
    }
    mapping_ = static_cast<char*>(p);
  }
  ~Stack() {
#if CUDA_EMULATOR_ASAN
    // The redzones of frames that never returned (a fiber's first, a failed
    // thread's) would stay poisoned for whatever is mapped here next.
    ASAN_UNPOISON_MEMORY_REGION(bottom(), kBytes);
#endif
    munmap(mapping_, kBytes + guard());
  }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* bottom() const { return mapping_ + guard(); }

 private:
  static size_t guard() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
  char* mapping_;
};

// A CUDA thread: a fiber with a stack of its own (kept for the next block).
struct Fiber {
  ucontext_t context;
  Stack stack;
  unsigned thread = 0;  // linear index within the block
  bool returned = false;
  const char* waits_for = nullptr;  // the collective it waits at, if any
  unsigned waits_mask = 0;
  std::function<bool()> ready;  // while it waits: whether it may go on
  void* fake_stack = nullptr;  // AddressSanitizer's, while it is switched out
};

// Picks the order in which the threads of each block run (Scheduler::shuffled).
inline thread_local uint64_t order_seed = 0;

class Collectives;
class Barrier;

// The threads of one block (or the part of it that runs), run as fibers of the
// calling OS thread.
class Scheduler {
 public:
  // Threads [first, first + count) (linear indices) of block `block` of a
  // launch of `grid` blocks of `threads` threads, which share `warps` (one
  // per warp of the block) and `barrier`.
  Scheduler(const std::function<void()>& body, unsigned first, unsigned count, dim3 block,
            dim3 threads, dim3 grid, Collectives* warps, Barrier* barrier)
      : body_(body), block_(block), threads_(threads), grid_(grid), warps_(warps),
        barrier_(barrier) {
    std::vector<std::unique_ptr<Fiber>>& pool = fiber_pool();
    while (pool.size() < count) pool.push_back(std::make_unique<Fiber>());
    for (unsigned i = 0; i < count; ++i) {
      pool[i]->thread = first + i;
      fibers_.push_back(pool[i].get());
    }
  }

  // Runs every thread to its return; throws Failure where one fails.
  void run() {
    struct Current {  // this scheduler is current_ for the calls from its threads
      Scheduler* outer = current_;
      explicit Current(Scheduler* s) { current_ = s; }
      ~Current() { current_ = outer; }
    } current(this);
    for (Fiber* f : fibers_) start(*f);
    size_t left = fibers_.size();
    bool stall = true;  // whether some warps sit this pass out
    for (uint64_t pass = 0; left > 0; ++pass) {
      const uint64_t events = events_;
      left = 0;
      for (Fiber* f : shuffled(pass)) {
        if (f->returned) continue;
        const bool waits = f->ready && !f->ready();  // would switch straight back
        if (!waits && (!stall || !stalled(pass, f->thread / 32))) resume(*f);
        if (!failure_.empty()) throw Failure(failure_);
        left += !f->returned;
      }
      if (left > 0 && events_ == events) {
        if (!stall) deadlock();
        stall = false;  // the next pass runs every thread, to tell a deadlock
      } else {
        stall = true;
      }
    }
  }

  // From a thread that failed: back to run(), never to return.
  [[noreturn]] void abandon(const char* failure) {
    failure_ = failure;
    Fiber& f = *running_;
    f.returned = true;  // its fake stack goes
    switch_out(f);
    std::abort();  // unreachable: run() resumes it no more
  }

  // The scheduler whose thread calls, if any.
  static Scheduler* in_thread() {
    return current_ != nullptr && current_->running_ != nullptr ? current_ : nullptr;
  }

  // Something happened that may let a waiting thread go on: it arrived at a
  // collective or returned.
  void progress() { ++events_; }

  // From a thread: waits (running the others) until done() holds.
  template <typename Done>
  void wait_until(Done&& done, const char* call, unsigned mask) {
    Fiber& f = *running_;
    f.waits_for = call;
    f.waits_mask = mask;
    f.ready = [&done] { return done(); };
    while (!done()) switch_out(f);
    f.ready = nullptr;
    f.waits_for = nullptr;
  }

  static Scheduler& current() { return *current_; }

  // What the calling thread shares with others: its warp's calls, its block's
  // barrier.
  Collectives& warp();
  Barrier& barrier() { return *barrier_; }

 private:
  // The order of a pass, and which warps sit it out (as a slow warp would):
  // functions of the block, the pass and order_seed alone, so that a launch runs
  // alike every time, while a missing __syncthreads between two threads'
  // accesses to shared memory shows (device_code_test.cpp's block sums).
  uint64_t random(uint64_t pass, uint64_t i) const {  // splitmix64's mix
    uint64_t z = order_seed ^ (uint64_t(block_.x) << 32 | block_.y << 16 | block_.z) ^
                 (pass + 1) * 0x9e3779b97f4a7c15ull ^ (i + 1) * 0xd1b54a32d192ed03ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  const std::vector<Fiber*>& shuffled(uint64_t pass) {
    order_ = fibers_;
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[random(pass, i) % i]);
    return order_;
  }
  bool stalled(uint64_t pass, unsigned warp) const { return random(pass, ~uint64_t(warp)) >> 63; }

  static std::vector<std::unique_ptr<Fiber>>& fiber_pool() {
    static thread_local std::vector<std::unique_ptr<Fiber>> pool;
    return pool;
  }

  void set_indices(unsigned thread) {
    threadIdx = {thread % threads_.x, thread / threads_.x % threads_.y,
                 thread / (threads_.x * threads_.y)};
    blockIdx = block_;
    blockDim = threads_;
    gridDim = grid_;
  }

  void start(Fiber& f) {
#if CUDA_EMULATOR_ASAN
    // A thread that failed left its frames' poisoned redzones behind.
    ASAN_UNPOISON_MEMORY_REGION(f.stack.bottom(), Stack::kBytes);
#endif
    f.returned = false;
    f.waits_for = nullptr;
    f.ready = nullptr;
    f.fake_stack = nullptr;
    if (getcontext(&f.context) != 0) fail("cannot start (getcontext)", 0, "launch", 0);
    f.context.uc_stack.ss_sp = f.stack.bottom();
    f.context.uc_stack.ss_size = Stack::kBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, &Scheduler::fiber_main, 0);
    // No stack for ASan's swapcontext interceptor to find: it would clear the
    // shadow of all of it, live frames' redzones too, at every switch (the
    // annotations above and in resume() tell ASan of the switches).
    f.context.uc_stack = {};
  }

  // Runs f until it returns or waits.
  void resume(Fiber& f) {
    running_ = &f;
    set_indices(f.thread);
#if CUDA_EMULATOR_ASAN
    __sanitizer_start_switch_fiber(&main_fake_stack_, f.stack.bottom(), Stack::kBytes);
#endif
    swapcontext(&main_, &f.context);
#if CUDA_EMULATOR_ASAN
    __sanitizer_finish_switch_fiber(main_fake_stack_, nullptr, nullptr);
#endif
    running_ = nullptr;
  }

  // From f: back to run(), and later on from here (never, once f has returned).
  void switch_out(Fiber& f) {
#if CUDA_EMULATOR_ASAN
    __sanitizer_start_switch_fiber(f.returned ? nullptr : &f.fake_stack, main_bottom_, main_size_);
#endif
    swapcontext(&f.context, &main_);
#if CUDA_EMULATOR_ASAN
    __sanitizer_finish_switch_fiber(f.fake_stack, &main_bottom_, &main_size_);
#endif
  }

  static void fiber_main();

  [[noreturn]] void deadlock() {
    for (Fiber* f : fibers_) {
      if (!f->returned && f->waits_for != nullptr) {
        set_indices(f->thread);
        fail("waits for threads that never make the call", lane(), f->waits_for, f->waits_mask);
      }
    }
    fail("made no progress", 0, "launch", 0);
  }

  inline static thread_local Scheduler* current_ = nullptr;
  const std::function<void()>& body_;
  const dim3 block_, threads_, grid_;
  Collectives* const warps_;
  Barrier* const barrier_;
  std::vector<Fiber*> fibers_, order_;
  Fiber* running_ = nullptr;
  ucontext_t main_{};
  void* main_fake_stack_ = nullptr;
  const void* main_bottom_ = nullptr;
  size_t main_size_ = 0;
  uint64_t events_ = 0;
  std::string failure_;
};

// The calls waiting for their lanes, one per mask, of one warp.
class Collectives {
 public:
  // Publishes this lane's value for `call` over `mask` and returns every
  // lane's, once all lanes of `mask` have published theirs.
  std::array<uint64_t, 32> exchange(const char* call, unsigned mask, uint64_t value) {
    const int me = lane();
    if (!(mask >> me & 1)) fail("calls with a mask that leaves it out", me, call, mask);
    if (mask & returned_) fail("calls with a mask that names a lane that has returned", me, call, mask);
    // The call over this mask that waits for this lane, if any: PTX's rule. A
    // lane may make calls over other masks meanwhile (the lanes of a partial
    // warp's last points shuffle among themselves while the others wait at a
    // reduction over the whole warp).
    Pending* mine = nullptr;
    for (Pending& p : pending_) {
      if (p.complete || p.mask != mask) continue;
      if (std::strcmp(p.call, call) != 0) {
        fail("makes another call over a mask whose call waits for it", me, call, mask);
      }
      mine = &p;
    }
    if (mine == nullptr) mine = &pending_.emplace_back(Pending{call, mask});
    mine->values[me] = value;
    mine->arrived |= 1u << me;
    Scheduler::current().progress();
    if (mine->arrived == mask) {
      mine->complete = true;
    } else {
      Scheduler::current().wait_until([&] { return mine->complete; }, call, mask);
    }
    const std::array<uint64_t, 32> values = mine->values;
    if (--mine->readers == 0) {
      pending_.remove_if([&](const Pending& p) { return &p == mine; });
    }
    return values;
  }

  // This lane leaving its body.
  void leave() {
    const int me = lane();
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
    std::array<uint64_t, 32> values = {};
  };
  std::list<Pending> pending_;
  unsigned returned_ = 0;
};

// __syncthreads: every running thread of the block arrives before any goes on.
class Barrier {
 public:
  explicit Barrier(unsigned threads) : threads_(threads) {}
  void arrive() {
    if (returned_ > 0) {
      fail("waits at __syncthreads for a thread that has returned", lane(), "__syncthreads", 0);
    }
    const uint64_t generation = generation_;
    Scheduler::current().progress();
    if (++arrived_ == threads_) {
      arrived_ = 0;
      ++generation_;
    } else {
      Scheduler::current().wait_until([&] { return generation_ != generation; }, "__syncthreads", 0);
    }
  }
  void leave() {
    if (arrived_ > 0) fail("returns while others wait at __syncthreads", lane(), "__syncthreads", 0);
    ++returned_;
  }

 private:
  const unsigned threads_;
  unsigned arrived_ = 0, returned_ = 0;
  uint64_t generation_ = 0;
};

inline Collectives& Scheduler::warp() { return warps_[linear_thread() / 32]; }

inline Collectives& collectives() { return Scheduler::current().warp(); }
inline Barrier& barrier() { return Scheduler::current().barrier(); }

inline void Scheduler::fiber_main() {
  Scheduler& s = *current_;
  Fiber& f = *s.running_;
#if CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.main_bottom_, &s.main_size_);
#endif
  char error[256] = "";  // of an exception from the body, which must not leave the fiber
  try {
    s.body_();
  } catch (const std::exception& e) {
    std::snprintf(error, sizeof error, "cuda emulator: a thread threw: %s", e.what());
  }
  if (error[0] != '\0') s.abandon(error);
  cuda_emulator::collectives().leave();
  cuda_emulator::barrier().leave();
  f.returned = true;
  s.progress();
  s.switch_out(f);
  std::abort();  // unreachable: run() resumes it no more
}

inline void fail(const char* what, int lane, const char* call, unsigned mask) {
  char message[256];
  std::snprintf(message, sizeof message,
                "cuda emulator: thread %u (lane %d) of block (%u, %u, %u) %s (%s, mask %08x)",
                linear_thread(), lane, blockIdx.x, blockIdx.y, blockIdx.z, what, call, mask);
  if (Scheduler* s = Scheduler::in_thread()) s->abandon(message);
  throw Failure(message);
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
  const auto all = collectives().exchange(call, mask, bits_of(v));
  if (source < 0 || source > 31) return v;
  return mask >> source & 1 ? from_bits<T>(all[source]) : poison<T>();
}

// Runs body() on threads [first, first + count) (linear indices) of block
// `block` of a launch of `grid` blocks of `threads` threads, and returns when
// every one has returned.
inline void run_threads(const std::function<void()>& body, unsigned first, unsigned count,
                        dim3 block, dim3 threads, dim3 grid) {
  const unsigned total = threads.x * threads.y * threads.z;
  std::vector<Collectives> warps((total + 31) / 32);
  Barrier barrier(count);
  Scheduler(body, first, count, block, threads, grid, warps.data(), &barrier).run();
}

// body() on the 32 lanes of warp `warp` of a block (its other warps do not run).
inline void run_warp(const std::function<void()>& body, unsigned warp = 0, unsigned block = 0,
                     unsigned threads = 32, unsigned grid = 1) {
  run_threads(body, warp * 32, 32, dim3(block, 0, 0), dim3(threads), dim3(grid));
}

// body() on every thread of block `block`.
inline void run_block(const std::function<void()>& body, unsigned threads, unsigned block = 0,
                      unsigned grid = 1) {
  run_threads(body, 0, threads, dim3(block, 0, 0), dim3(threads), dim3(grid));
}

// kernel(args...) on every thread of every block of `grid`, blocks in order
// (x fastest): what kernel<<<grid, threads>>>(args...) does.
template <typename... Params, typename... Args>
void launch(dim3 grid, dim3 threads, void (*kernel)(Params...), const Args&... args) {
  // What a GPU refuses to launch (cudaErrorInvalidConfiguration).
  const uint64_t per_block = uint64_t(threads.x) * threads.y * threads.z;
  if (per_block == 0 || per_block > 1024 || threads.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    char message[160];
    std::snprintf(message, sizeof message,
                  "cuda emulator: a launch of (%u, %u, %u) blocks of (%u, %u, %u) threads, which a "
                  "GPU refuses", grid.x, grid.y, grid.z, threads.x, threads.y, threads.z);
    throw Failure(message);
  }
  const std::function<void()> body = [&] { kernel(args...); };
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        run_threads(body, 0, threads.x * threads.y * threads.z, dim3(x, y, z), threads, grid);
      }
    }
  }
}

// The atomic adds of the lanes, in the order they happened, while `record`
// is set (device_code_test.cpp counts them).
struct AtomicLog {
  bool record = false;
  std::mutex mutex;
  std::vector<const void*> addresses;
};

inline AtomicLog& atomic_log() {
  static AtomicLog log;
  return log;
}

// The threads of a launch run one at a time: a plain add is atomic among them.
template <typename T>
T atomic_add(T* address, T v) {
  AtomicLog& log = atomic_log();
  if (log.record) {
    std::lock_guard<std::mutex> lock(log.mutex);
    log.addresses.push_back(address);
  }
  const T old = *address;
  *address = old + v;
  return old;
}

}  // namespace cuda_emulator

// The intrinsics, as CUDA declares them.
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
  return cuda_emulator::shuffle("__shfl_up_sync", mask, v,
                                cuda_emulator::lane() - static_cast<int>(delta));
}

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  return cuda_emulator::shuffle("__shfl_down_sync", mask, v,
                                cuda_emulator::lane() + static_cast<int>(delta));
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const auto all = cuda_emulator::collectives().exchange("__ballot_sync", mask, predicate != 0);
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l) ballot |= unsigned(mask >> l & 1 && all[l] != 0) << l;
  return ballot;
}

inline int __any_sync(unsigned mask, int predicate) {
  const auto all = cuda_emulator::collectives().exchange("__any_sync", mask, predicate != 0);
  for (int l = 0; l < 32; ++l) {
    if (mask >> l & 1 && all[l] != 0) return 1;
  }
  return 0;
}

inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }

inline float atomicAdd(float* address, float v) { return cuda_emulator::atomic_add(address, v); }
inline double atomicAdd(double* address, double v) { return cuda_emulator::atomic_add(address, v); }

// sm_90's vector atomic, which faults on an address that is not 16-byte aligned.
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float4 atomicAdd(float4* address, float4 v) {
  if (reinterpret_cast<std::uintptr_t>(address) % 16 != 0) {
    cuda_emulator::fail("adds a float4 at an address that is not 16-byte aligned",
                        cuda_emulator::lane(), "atomicAdd(float4*)", 0);
  }
  float* f = &address->x;
  const float4 old = *address;
  cuda_emulator::atomic_add(f, v.x);
  cuda_emulator::atomic_add(f + 1, v.y);
  cuda_emulator::atomic_add(f + 2, v.z);
  cuda_emulator::atomic_add(f + 3, v.w);
  return old;
}

inline void __syncthreads() { cuda_emulator::barrier().arrive(); }

// What the extension's host code calls of the CUDA runtime (its launches go
// through cuda_emulator::launch: csrc/cuda/launch.cuh).
enum cudaError_t { cudaSuccess = 0 };
using cudaStream_t = struct CUstream_st*;

inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t = nullptr) {
  if (bytes > 0) std::memset(ptr, value, bytes);
  return cudaSuccess;
}

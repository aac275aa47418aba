// tests/cuda_emulated/simt.hpp — a SIMT emulator: runs the CUDA backend's own kernels on the CPU, one fiber per
// GPU thread, so their algorithms are checked against the host backend on a machine without a GPU.
//
// Compiled by the host compiler, never by nvcc. `shim/cuda_runtime.h` includes this header, so the kernel headers
// (include/parallax/backend/cuda/detail/*_kernels.cuh, device code only) compile unchanged: `__global__` and
// `__device__` vanish, `__shared__` becomes `static` (one block runs at a time, so a static is the block's shared
// memory), and threadIdx / blockIdx / blockDim / gridDim are variables the scheduler sets before it resumes a thread.
//
// What is emulated: a grid of blocks, run one block at a time in a shuffled order (kernels may not rely on block
// order); within a block every thread is a fiber that runs until it reaches __syncthreads or a warp-synchronous call
// (__shfl*_sync, __syncwarp), where it waits for the others exactly as the hardware makes it wait. A barrier that can
// never complete (threads of one block at different barriers, a lane of a shuffle's mask that has exited, a source
// lane outside the mask) is an error naming the kernel, the block and the threads, not a hang. Dynamic shared memory
// is filled with 0xff bytes (NaN as floats) before each block, so reading what no thread wrote shows up.
// The PTX of the tensor-core kernels runs through shim/parallax/backend/cuda/detail/ptx.cuh, which carries out each
// instruction (cp.async with its groups, ldmatrix, mma.sync) on top of `warp_exchange` and `async_copy`.
// Not emulated: the memory model (threads never run at the same time), streams, the runtime API.
//
//   simt::launch("layernorm_forward", kernel<float>, dim3(blocks), dim3(256), shared_bytes, args...);
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#ifndef PARALLAX_SIMT_EMULATION
#define PARALLAX_SIMT_EMULATION 1
#endif

// CUDA's declaration specifiers, as the host compiler should read them here.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)

//! CUDA's built-in vector types: the launch geometry's, and the 16-byte unit of vectorised copies.
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

//! The built-in variables: set by the scheduler for the thread it resumes.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
inline constexpr int warpSize = 32;

namespace parallax::simt {

//! Thrown when a kernel breaks the execution model (a barrier that cannot complete, a bad launch).
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

enum class State { ready, at_block_barrier, at_warp_barrier, done };

//! A queued cp.async: `bytes` from `src` to `dst`, or zeros when `src` is null.
struct AsyncCopy {
  void* dst;
  const void* src;
  std::size_t bytes;
};

inline void complete(const std::vector<AsyncCopy>& group) {
  for (const AsyncCopy& c : group) {
    if (c.src != nullptr)
      std::memcpy(c.dst, c.src, c.bytes);
    else
      std::memset(c.dst, 0, c.bytes);
  }
}

struct Thread {
  ucontext_t context{};
  uint3 index{};
  int warp = 0;
  int lane = 0;
  State state = State::ready;
  unsigned mask = 0;  // the warp barrier's member mask, while at_warp_barrier
  const char* call = "";  // the warp-synchronous call it waits in
  std::vector<AsyncCopy> open_copies;                // cp.async copies queued since the last commit
  std::vector<std::vector<AsyncCopy>> copy_groups;  // committed groups, oldest first
};

//! One block in flight: its threads, the scheduler's context, the shuffle slots and the dynamic shared memory.
struct Block {
  const char* kernel = "";
  std::vector<Thread> threads;
  std::vector<std::unique_ptr<char[]>> stacks;
  ucontext_t scheduler{};
  int current = -1;
  std::vector<std::array<unsigned char, 64>> slots;  // one per thread: what it offers in a warp exchange
  std::vector<unsigned char> shared;
  std::function<void()> body;
  std::exception_ptr error;
};

inline thread_local Block* active = nullptr;
inline constexpr std::size_t stack_bytes = 64 * 1024;

[[nodiscard]] inline Block& block() {
  if (active == nullptr) throw Fault("simt: a device function was called outside simt::launch");
  return *active;
}
[[nodiscard]] inline Thread& self() { return block().threads[static_cast<std::size_t>(block().current)]; }

inline void yield() {
  Block& b = block();
  swapcontext(&b.threads[static_cast<std::size_t>(b.current)].context, &b.scheduler);
}

inline void thread_main() {
  Block& b = *active;
  Thread& t = b.threads[static_cast<std::size_t>(b.current)];
  try {
    b.body();
    for (const auto& group : t.copy_groups) complete(group);  // copies never waited for still land
    complete(t.open_copies);
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
  t.state = State::done;
}  // returns to uc_link: the scheduler

[[nodiscard]] inline std::string describe(const Thread& t) {
  return fmt::format("thread ({}, {}, {}) (warp {}, lane {})", t.index.x, t.index.y, t.index.z, t.warp, t.lane);
}

//! Releases the lanes of warp barriers whose whole mask has arrived; throws when a mask can never complete.
inline bool release_warps(Block& b) {
  bool released = false;
  for (std::size_t i = 0; i < b.threads.size(); ++i) {
    Thread& t = b.threads[i];
    if (t.state != State::at_warp_barrier) continue;
    const std::size_t first = i - static_cast<std::size_t>(t.lane);
    bool complete = true;
    for (int lane = 0; lane < 32; ++lane) {
      if ((t.mask >> lane & 1u) == 0) continue;
      const std::size_t j = first + static_cast<std::size_t>(lane);
      if (j >= b.threads.size() || b.threads[j].state == State::done)
        throw Fault(fmt::format("simt: kernel '{}' block ({}, {}, {}): {} waits in {} with mask {:#010x}, but lane {} "
                                "of its warp {}",
                                b.kernel, blockIdx.x, blockIdx.y, blockIdx.z, describe(t), t.call, t.mask, lane,
                                j >= b.threads.size() ? "does not exist" : "has exited"));
      const Thread& u = b.threads[j];
      if (u.state != State::at_warp_barrier || u.mask != t.mask) complete = false;
    }
    if (!complete) continue;
    for (int lane = 0; lane < 32; ++lane)
      if (t.mask >> lane & 1u) b.threads[first + static_cast<std::size_t>(lane)].state = State::ready;
    released = true;
  }
  return released;
}

//! Releases __syncthreads once every thread that has not exited waits in it.
inline bool release_block(Block& b) {
  std::size_t waiting = 0, live = 0;
  for (const Thread& t : b.threads) {
    if (t.state == State::done) continue;
    ++live;
    if (t.state == State::at_block_barrier) ++waiting;
  }
  if (waiting == 0 || waiting != live) return false;
  for (Thread& t : b.threads)
    if (t.state == State::at_block_barrier) t.state = State::ready;
  return true;
}

[[noreturn]] inline void deadlock(const Block& b) {
  // Groups the waiting threads by where they wait: "16 threads in __syncthreads, the first thread (0, 0, 0) ...".
  struct Group {
    std::string where;
    const Thread* first;
    int count;
  };
  std::vector<Group> groups;
  for (const Thread& t : b.threads) {
    if (t.state == State::done) continue;
    std::string where = t.state == State::at_block_barrier ? std::string("__syncthreads")
                                                           : fmt::format("{} (mask {:#010x})", t.call, t.mask);
    auto g = std::find_if(groups.begin(), groups.end(), [&](const Group& x) { return x.where == where; });
    if (g == groups.end())
      groups.push_back({std::move(where), &t, 1});
    else
      ++g->count;
  }
  std::string who;
  for (const Group& g : groups)
    who += fmt::format("; {} threads in {}, the first {}", g.count, g.where, describe(*g.first));
  throw Fault(fmt::format("simt: kernel '{}' block ({}, {}, {}) can never go on: its threads wait at different "
                          "barriers{}",
                          b.kernel, blockIdx.x, blockIdx.y, blockIdx.z, who));
}

//! Runs one block to completion: every ready thread until it blocks, then the barriers that can open, again.
inline void run_block(Block& b, dim3 block_dim) {
  const std::size_t n = b.threads.size();
  for (std::size_t i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.state = State::ready;
    t.index = {static_cast<unsigned>(i % block_dim.x), static_cast<unsigned>(i / block_dim.x % block_dim.y),
               static_cast<unsigned>(i / (std::size_t{block_dim.x} * block_dim.y))};
    t.warp = static_cast<int>(i / 32);
    t.lane = static_cast<int>(i % 32);
    t.open_copies.clear();
    t.copy_groups.clear();
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = b.stacks[i].get();
    t.context.uc_stack.ss_size = stack_bytes;
    t.context.uc_link = &b.scheduler;
    makecontext(&t.context, thread_main, 0);
  }
  std::fill(b.shared.begin(), b.shared.end(), static_cast<unsigned char>(0xff));
  for (bool forward = true;; forward = !forward) {
    // Alternate the order in which the threads run between barriers, so a missing barrier shows either way.
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = forward ? k : n - 1 - k;
      if (b.threads[i].state != State::ready) continue;
      b.current = static_cast<int>(i);
      threadIdx = b.threads[i].index;
      swapcontext(&b.scheduler, &b.threads[i].context);
      if (b.error) std::rethrow_exception(b.error);
    }
    if (std::all_of(b.threads.begin(), b.threads.end(), [](const Thread& t) { return t.state == State::done; }))
      return;
    const bool warps = release_warps(b);
    if (!warps && !release_block(b)) deadlock(b);
  }
}

//! Waits at a warp barrier of the lanes in `mask` (which must include the caller).
inline void warp_barrier(unsigned mask, const char* call) {
  Thread& t = self();
  if ((mask >> t.lane & 1u) == 0)
    throw Fault(fmt::format("simt: kernel '{}': {} calls {} with mask {:#010x}, which does not include its own lane",
                            block().kernel, describe(t), call, mask));
  t.state = State::at_warp_barrier;
  t.mask = mask;
  t.call = call;
  yield();
}

//! Every lane of `mask` offers `v` and receives what each lane of its warp offered (entries of lanes outside the
//! mask are value-initialised). The second barrier keeps a lane from offering its next value before every lane has
//! read this one.
template <class T>
std::array<T, 32> warp_exchange(unsigned mask, const T& v, const char* call) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 64, "simt: a lane offers at most 64 bytes");
  Block& b = block();
  const std::size_t me = static_cast<std::size_t>(b.current);
  const std::size_t first = me - static_cast<std::size_t>(b.threads[me].lane);
  std::memcpy(b.slots[me].data(), &v, sizeof v);
  warp_barrier(mask, call);
  std::array<T, 32> all{};
  for (std::size_t lane = 0; lane < 32; ++lane)
    if (mask >> lane & 1u) std::memcpy(&all[lane], b.slots[first + lane].data(), sizeof(T));
  warp_barrier(mask, call);
  return all;
}

//! The shuffle primitive: every lane of `mask` offers `v` and receives the value lane `src` of its warp offered.
template <class T>
T shuffle(unsigned mask, T v, int src, const char* call) {
  const std::array<T, 32> all = warp_exchange(mask, v, call);
  if ((mask >> src & 1u) == 0)
    throw Fault(fmt::format("simt: kernel '{}': {} reads lane {} in {}, outside the mask {:#010x} (undefined)",
                            block().kernel, describe(self()), src, call, mask));
  return all[static_cast<std::size_t>(src)];
}

}  // namespace detail

//! cp.async: queues a copy of `bytes` from `src` to shared `dst` (zeros when `src` is null) in this thread's open
//! group; it lands when a wait retires its group, not before (so a read before the wait sees the old bytes).
inline void async_copy(void* dst, const void* src, std::size_t bytes) {
  detail::self().open_copies.push_back({dst, src, bytes});
}
//! cp.async.commit_group: closes this thread's open group.
inline void async_commit() {
  detail::Thread& t = detail::self();
  t.copy_groups.push_back(std::move(t.open_copies));
  t.open_copies.clear();
}
//! cp.async.wait_group: completes this thread's committed groups, oldest first, until at most `pending` are left.
inline void async_wait(std::size_t pending) {
  detail::Thread& t = detail::self();
  while (t.copy_groups.size() > pending) {
    detail::complete(t.copy_groups.front());
    t.copy_groups.erase(t.copy_groups.begin());
  }
}

//! This thread's lane in its warp.
[[nodiscard]] inline int lane_id() { return detail::self().lane; }

//! Every lane of the full warp offers `v` and receives all 32 lanes' offers (the emulation of a warp-collective
//! instruction such as ldmatrix or mma.sync, which reads the other lanes' registers).
template <class T>
std::array<T, 32> warp_exchange(const T& v, const char* instruction) {
  return detail::warp_exchange(0xffffffffu, v, instruction);
}

//! Runs `kernel(args...)` over `grid` blocks of `block` threads with `shared_bytes` of dynamic shared memory, as
//! `kernel<<<grid, block, shared_bytes>>>(args...)` would, and returns when every thread has finished. Throws
//! `Fault` for a bad launch geometry or a barrier that cannot complete.
template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t shared_bytes, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "simt::launch: give the kernel exactly its arguments");
  const std::size_t threads = std::size_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535)
    throw Fault(fmt::format("simt: kernel '{}': invalid launch, grid ({}, {}, {}), block ({}, {}, {})", name, grid.x,
                            grid.y, grid.z, block.x, block.y, block.z));
  if (shared_bytes > 227 * 1024)
    throw Fault(fmt::format("simt: kernel '{}': {} bytes of dynamic shared memory exceed the 227 KiB of sm_90",
                            name, shared_bytes));
  if (detail::active != nullptr) throw Fault("simt::launch: launches do not nest");

  detail::Block b;
  b.kernel = name;
  b.threads.resize(threads);
  b.stacks.resize(threads);
  for (auto& s : b.stacks) s = std::make_unique<char[]>(detail::stack_bytes);
  b.slots.resize(threads);
  b.shared.resize(shared_bytes);
  const std::tuple<P...> params{static_cast<P>(args)...};
  b.body = [&] { std::apply(kernel, params); };

  // Blocks in a fixed pseudo-random order: a kernel whose blocks depend on each other's order is wrong on a GPU.
  const std::size_t blocks = std::size_t{grid.x} * grid.y * grid.z;
  std::vector<std::size_t> order(blocks);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::uint64_t state = 0x9e3779b97f4a7c15ull;
  for (std::size_t i = blocks; i > 1; --i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    std::swap(order[i - 1], order[(state >> 33) % i]);
  }

  gridDim = grid;
  blockDim = block;
  detail::active = &b;
  try {
    for (const std::size_t id : order) {
      blockIdx = {static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                  static_cast<unsigned>(id / (std::size_t{grid.x} * grid.y))};
      detail::run_block(b, block);
    }
  } catch (...) {
    detail::active = nullptr;
    throw;
  }
  detail::active = nullptr;
}

}  // namespace parallax::simt

//! The block's dynamic shared memory, for parallax::cuda::detail::dynamic_shared<T>() under PARALLAX_SIMT_EMULATION.
inline void* parallax_simt_dynamic_shared() { return parallax::simt::detail::block().shared.data(); }

// ---- device functions ----------------------------------------------------------------------------------------------

inline void __syncthreads() {
  parallax::simt::detail::self().state = parallax::simt::detail::State::at_block_barrier;
  parallax::simt::detail::yield();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { parallax::simt::detail::warp_barrier(mask, "__syncwarp"); }

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
  const int lane = parallax::simt::detail::self().lane;
  return parallax::simt::detail::shuffle(mask, v, (lane & ~(width - 1)) + src % width, "__shfl_sync");
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  const int lane = parallax::simt::detail::self().lane;
  const int src = lane ^ lane_mask;
  return parallax::simt::detail::shuffle(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane,
                                         "__shfl_xor_sync");
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = parallax::simt::detail::self().lane;
  const int src = lane + static_cast<int>(delta);
  return parallax::simt::detail::shuffle(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane,
                                         "__shfl_down_sync");
}

// Atomics: threads never run at the same time here, so a plain read-modify-write is atomic.
template <class T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  const T old = *p;
  *p = std::min(old, v);
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  const T old = *p;
  *p = std::max(old, v);
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <class T>
T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}

// Intrinsics: the correctly rounded ones are exact here; the fast approximations are replaced by the exact functions.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.f / std::sqrt(a); }
inline void __threadfence() {}

// parallax/backend/cuda/memory.hpp — cuda::Memory (GPU global memory) and cuda::PinnedMemory (pinned host memory).
#pragma once

#include <cstddef>
#include <utility>

#include <cuda_runtime_api.h>

#include "../host/memory.hpp"
#include "check.hpp"
#include "device.hpp"
#include "stream.hpp"

namespace parallax::cuda {

namespace detail {

//! The device that owns the memory at `p`, or -1 for host memory (pageable or pinned).
[[nodiscard]] inline int device_of(const void* p) {
  if (p == nullptr) return -1;
  cudaPointerAttributes attributes{};
  check(cudaPointerGetAttributes(&attributes, p), "cudaPointerGetAttributes");
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged ? attributes.device : -1;
}

//! Waits until all work queued on the current device, and on the devices owning `a` and `b`, is done,
//! so that a stream-less copy sees the results of kernels queued on any stream (a rank's compute or
//! communication stream, or another rank's when ranks share a GPU).
inline void drain(const void* a, const void* b) {
  const int current = current_device();
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  int done = current;
  for (const void* p : {a, b}) {
    const int device = device_of(p);
    if (device < 0 || device == current || device == done) continue;
    DeviceGuard on(device);
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    done = device;
  }
}

}  // namespace detail

//! While alive, the host copies the constructing thread makes (`Memory::copy`, `upload`, `download`, `zero`) are
//! queued on `stream` (a rank's compute stream) and wait for it alone, instead of for every stream of the device.
//! A `Rank` of the CUDA backend holds one (`cuda::Context::host_order()`) on its thread: reading a loss or a
//! checkpoint does not wait for NCCL calls in flight, which may wait on a peer that waits on this rank. Results of
//! communication must then be waited for (`Work::wait`) before the host reads them, as the API requires anyway.
//! Copies touching memory of another device than the order's wait for the whole of both devices, as without one.
//! Nested ones stack, the innermost ordering (so keep one rank per thread); destroy each on the thread that made it.
class HostOrder {
 public:
  HostOrder(cudaStream_t stream, int device) : stream_(stream), device_(device), outer_(std::exchange(top(), this)) {}
  HostOrder(const HostOrder&) = delete;
  HostOrder& operator=(const HostOrder&) = delete;
  ~HostOrder() {  // unlinks itself wherever it is in the thread's stack
    for (HostOrder** link = &top(); *link != nullptr; link = &(*link)->outer_)
      if (*link == this) {
        *link = outer_;
        return;
      }
  }

  //! The innermost on the calling thread, or nullptr.
  [[nodiscard]] static const HostOrder* current() noexcept { return top(); }
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }
  [[nodiscard]] int device() const noexcept { return device_; }

 private:
  static HostOrder*& top() noexcept {
    thread_local HostOrder* innermost = nullptr;
    return innermost;
  }

  cudaStream_t stream_;
  int device_;
  HostOrder* outer_;
};

namespace detail {

//! The calling thread's `HostOrder` if the device memory among `a` and `b` (host pointers aside) is its device's.
[[nodiscard]] inline const HostOrder* host_order_for(const void* a, const void* b) {
  const HostOrder* order = HostOrder::current();
  if (order == nullptr) return nullptr;
  for (const void* p : {a, b})
    if (const int device = device_of(p); device >= 0 && device != order->device()) return nullptr;
  return order;
}

//! A copy that is complete on return: ordered after the calling thread's `HostOrder` stream, or without one after
//! all queued device work.
inline void copy_now(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind, const char* what) {
  if (bytes == 0) return;
  if (const HostOrder* order = host_order_for(dst, src)) {
    DeviceGuard on(order->device());
    check(cudaMemcpyAsync(dst, src, bytes, kind, order->stream()), what);
    check(cudaStreamSynchronize(order->stream()), what);
    return;
  }
  drain(dst, src);
  check(cudaMemcpyAsync(dst, src, bytes, kind, cudaStreamPerThread), what);
  check(cudaStreamSynchronize(cudaStreamPerThread), what);
}

}  // namespace detail

//! The stream order of cached device memory (models `StreamOrder`): a block freed on a stream is reused
//! by another once a CUDA event recorded on the first at free time has completed.
struct StreamOrder {
  using stream_type = cudaStream_t;
  using event_type = Event;
  //! An event on the current device, without timing (cheaper to record).
  [[nodiscard]] Event make_event() const { return Event(Timing::off); }
  void record(Event& event, cudaStream_t stream) const { event.record(stream); }
  [[nodiscard]] bool done(const Event& event) const { return event.query(); }
};

//! Global memory of the current GPU. Models `MemorySpace`.
//!
//! Every function but `zero_on` is synchronous: it first waits for the work already queued on the device (on any
//! stream; on a rank's thread, on its compute stream only: `HostOrder`), then completes before it returns. They are
//! meant for setup, checkpoints and tests; kernels and collectives work on a `cuda::Context`'s streams instead.
//! `allocate` returns nullptr when the GPU is out of memory (so `Allocator` reports the shortfall) and throws on any
//! other failure. It is the raw memory of a rank's `CachingAllocator` (`cuda::Context::memory_cache()`), which
//! orders reuse across streams with `stream_order`.
//! @code
//! MemoryStats stats;
//! Allocator<cuda::Memory> alloc(stats, rank);       // plain: cudaMalloc/cudaFree per tensor
//! Tensor<bf16, cuda::Memory> w(alloc, Shape{1024, 4096}, MemoryCategory::parameters);
//! @endcode
struct Memory {
  static constexpr const char* name = "cuda";
  static constexpr bool host_accessible = false;
  static constexpr std::size_t alignment = 256;  // what cudaMalloc guarantees
  using stream_order = StreamOrder;

  [[nodiscard]] static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, bytes);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return nullptr;
    }
    check(status, "cudaMalloc");
    return p;
  }
  static void deallocate(void* p, std::size_t) {
    if (p == nullptr) return;
    const cudaError_t status = cudaFree(p);
    if (status == cudaErrorCudartUnloading) return;  // process exit: the driver frees everything
    check(status, "cudaFree");
  }
  //! Device to device (either device, with unified addressing).
  static void copy(void* dst, const void* src, std::size_t bytes) {
    detail::copy_now(dst, src, bytes, cudaMemcpyDefault, "cuda::Memory::copy (cudaMemcpyAsync)");
  }
  //! Host (pageable or pinned) to device.
  static void upload(void* dst, const void* src, std::size_t bytes) {
    detail::copy_now(dst, src, bytes, cudaMemcpyHostToDevice, "cuda::Memory::upload (cudaMemcpyAsync)");
  }
  //! Device to host.
  static void download(void* dst, const void* src, std::size_t bytes) {
    detail::copy_now(dst, src, bytes, cudaMemcpyDeviceToHost, "cuda::Memory::download (cudaMemcpyAsync)");
  }
  //! Queues zeroing `bytes` at `p` on `stream` and returns (stream-ordered: work queued on `stream` later sees
  //! zeros; `copy`, `upload` and `download` wait for every stream first, or for the `HostOrder` stream).
  static void zero_on(void* p, std::size_t bytes, cudaStream_t stream) {
    if (bytes == 0) return;
    check(cudaMemsetAsync(p, 0, bytes, stream), "cuda::Memory::zero_on (cudaMemsetAsync)");
  }
  static void zero(void* p, std::size_t bytes) {
    if (bytes == 0) return;
    if (const cuda::HostOrder* order = detail::host_order_for(p, nullptr)) {
      DeviceGuard on(order->device());
      zero_on(p, bytes, order->stream());
      check(cudaStreamSynchronize(order->stream()), "cuda::Memory::zero (cudaStreamSynchronize)");
      return;
    }
    detail::drain(p, nullptr);
    check(cudaMemsetAsync(p, 0, bytes, cudaStreamPerThread), "cuda::Memory::zero (cudaMemsetAsync)");
    check(cudaStreamSynchronize(cudaStreamPerThread), "cuda::Memory::zero (cudaStreamSynchronize)");
  }
};

//! Page-locked host memory (`cudaMallocHost`): host-accessible, and the source or target of truly
//! asynchronous copies, e.g. optimizer state offloaded to the CPU. Models `MemorySpace`.
//!
//! Its copies are host::Memory's plain host copies: wait for any asynchronous transfer into or out of it first.
struct PinnedMemory : host::Memory {
  static constexpr const char* name = "cuda_pinned";
  static constexpr bool host_accessible = true;
  static constexpr std::size_t alignment = 4096;

  [[nodiscard]] static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t status = cudaMallocHost(&p, bytes);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return nullptr;
    }
    check(status, "cudaMallocHost");
    return p;
  }
  static void deallocate(void* p, std::size_t) {
    if (p == nullptr) return;
    const cudaError_t status = cudaFreeHost(p);
    if (status == cudaErrorCudartUnloading) return;
    check(status, "cudaFreeHost");
  }
};

}  // namespace parallax::cuda

// parallax/backend/cuda/context.hpp — cuda::Context, a rank's execution context on a GPU: streams, cuBLAS(Lt) and
// its plans.
#pragma once

#include <cstddef>
#include <memory>
#include <type_traits>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include "../../core/caching_allocator.hpp"
#include "../../error.hpp"
#include "check.hpp"
#include "detail/lt_plan.hpp"
#include "device.hpp"
#include "memory.hpp"
#include "stream.hpp"

namespace parallax::cuda {

//! Options of a `cuda::Context`.
struct ContextOptions {
  //! Let fp32 GEMMs round their inputs to TF32 (faster, about 1e-3 relative error). Off: fp32 GEMMs
  //! match the host backend within 1e-5.
  bool allow_tf32 = false;
  //! Bytes of device workspace handed to cuBLAS and cuBLASLt (32 MiB is what Hopper GEMMs ask for).
  std::size_t workspace_bytes = std::size_t{32} << 20;
};

namespace detail {

struct CudaFree {
  void operator()(void* p) const noexcept {
    if (p != nullptr && cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
  }
};
struct CudaFreeHost {
  void operator()(void* p) const noexcept {
    if (p != nullptr && cudaFreeHost(p) != cudaSuccess) (void)cudaGetLastError();
  }
};
struct CublasDestroy {
  void operator()(cublasHandle_t h) const noexcept { (void)cublasDestroy(h); }
};
struct CublasLtDestroy {
  void operator()(cublasLtHandle_t h) const noexcept { (void)cublasLtDestroy(h); }
};

//! Bytes of device scratch a context keeps for the partial sums of its reductions, and of pinned host
//! memory their result is read back through.
inline constexpr std::size_t reduce_scratch_bytes = 16 * 1024;
inline constexpr std::size_t reduce_result_bytes = 64;

}  // namespace detail

//! What a rank's kernels run on with the CUDA backend: its GPU, a compute stream (kernels, GEMMs), a
//! communication stream (NCCL), cuBLAS and cuBLASLt handles bound to the compute stream with a shared
//! workspace, the cuBLASLt matmul plans made for it, scratch for reductions, and the rank's device memory
//! cache (a `CachingAllocator` over `cuda::Memory` whose default stream is the compute stream: a `Rank`'s
//! tensors and the kernels' temporaries come from it). Move-only; use it from one thread at a time.
//!
//! Rank r uses device `r % device_count()` and makes it current on the constructing thread (so build
//! the context on the rank's own thread, as `launch` does). Kernels are asynchronous on the compute
//! stream; `synchronize()` waits for both streams.
//! @code
//! cuda::Context ctx(rank);                          // throws if there is no GPU
//! cuda::Backend::gemm(ctx, Trans::N, Trans::T, 1.f, a, b, 0.f, c);
//! ctx.synchronize();
//! @endcode
class Context {
 public:
  explicit Context(int rank = 0, ContextOptions options = {}) : rank_(rank), options_(options) {
    if (rank < 0) throw Error(fmt::format("cuda::Context: rank {} is negative", rank));
    const int count = device_count();
    if (count == 0)
      throw Error(fmt::format("cuda::Context: no CUDA device is available ({}); run on a machine with a GPU or use "
                              "host::Backend",
                              detail::no_device_reason()),
                  rank);
    device_ = rank % count;
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_), "cudaDeviceGetAttribute");
    compute_ = Stream();
    comm_ = Stream();
    cache_ = std::make_unique<CachingAllocator<Memory>>(compute_.get(), rank, fmt::format("cuda device {}", device_));

    void* p = nullptr;
    if (options_.workspace_bytes > 0) {
      check(cudaMalloc(&p, options_.workspace_bytes), "cudaMalloc (cuBLAS workspace)");
      workspace_.reset(p);
    }
    check(cudaMalloc(&p, detail::reduce_scratch_bytes), "cudaMalloc (reduction scratch)");
    scratch_.reset(p);
    check(cudaMallocHost(&p, detail::reduce_result_bytes), "cudaMallocHost (reduction result)");
    result_.reset(p);

    cublasHandle_t h = nullptr;
    check(cublasCreate(&h), "cublasCreate");
    cublas_.reset(h);
    check(cublasSetStream(h, compute_.get()), "cublasSetStream");
    // fp32 accumulation all the way: no fp16 split-K reductions.
    check(cublasSetMathMode(h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                         CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
          "cublasSetMathMode");
    if (workspace_) check(cublasSetWorkspace(h, workspace_.get(), options_.workspace_bytes), "cublasSetWorkspace");
    cublasLtHandle_t lt = nullptr;
    check(cublasLtCreate(&lt), "cublasLtCreate");
    cublaslt_.reset(lt);
    lt_plans_ = std::make_unique<detail::LtPlans>();
  }

  Context(Context&&) noexcept = default;
  Context& operator=(Context&&) = delete;  // would free the old streams and handles unsynchronised, off device
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() {
    if (!compute_.get()) return;  // moved from
    try {
      DeviceGuard on(device_);
      (void)cudaStreamSynchronize(compute_.get());
      (void)cudaStreamSynchronize(comm_.get());
      (void)cudaGetLastError();
      cache_.reset();
      lt_plans_.reset();
      cublaslt_.reset();
      cublas_.reset();
      result_.reset();
      scratch_.reset();
      workspace_.reset();
      comm_ = Stream::null();
      compute_ = Stream::null();
    } catch (...) {  // no usable device left: the members free what they can
    }
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  //! The CUDA device ordinal this rank runs on.
  [[nodiscard]] int device() const noexcept { return device_; }
  //! Multiprocessors on the device (for sizing grids).
  [[nodiscard]] int sm_count() const noexcept { return sm_count_; }
  [[nodiscard]] const ContextOptions& options() const noexcept { return options_; }
  [[nodiscard]] bool allow_tf32() const noexcept { return options_.allow_tf32; }

  //! Kernels and GEMMs run here.
  [[nodiscard]] const Stream& compute_stream() const noexcept { return compute_; }
  //! Collectives run here.
  [[nodiscard]] const Stream& comm_stream() const noexcept { return comm_; }
  //! The compute stream's handle.
  [[nodiscard]] cudaStream_t stream() const noexcept { return compute_.get(); }

  //! cuBLAS handle bound to the compute stream.
  [[nodiscard]] cublasHandle_t cublas() const noexcept { return cublas_.get(); }
  //! cuBLASLt handle (pass `stream()` and `workspace()` to its calls).
  [[nodiscard]] cublasLtHandle_t cublaslt() const noexcept { return cublaslt_.get(); }
  //! The cuBLASLt matmul plans made for this context, by problem (`detail::lt_matmul` fills it on first use of a
  //! shape): they live and die with the context, and no other context shares them. A cache, so a const context
  //! hands it out mutable; used from the context's thread only, like the context.
  [[nodiscard]] detail::LtPlans& lt_plans() const noexcept { return *lt_plans_; }
  //! Device workspace for cuBLAS(Lt) calls on the compute stream.
  [[nodiscard]] void* workspace() const noexcept { return workspace_.get(); }
  [[nodiscard]] std::size_t workspace_bytes() const noexcept { return workspace_ ? options_.workspace_bytes : 0; }

  //! Device scratch for reductions on the compute stream (`detail::reduce_scratch_bytes`).
  [[nodiscard]] void* reduce_scratch() const noexcept { return scratch_.get(); }
  //! Pinned host slot a reduction's result is copied into (`detail::reduce_result_bytes`).
  [[nodiscard]] void* reduce_result() const noexcept { return result_.get(); }

  //! The rank's device memory cache (blocks on the compute stream by default); `Rank` allocates its
  //! tensors through it and makes it report to the rank's `MemoryStats`. `release_cached()` empties it.
  [[nodiscard]] CachingAllocator<Memory>& memory_cache() const noexcept { return *cache_; }

  //! Orders the calling thread's host copies after the compute stream while the result lives (see `HostOrder`;
  //! a `Rank` holds one).
  [[nodiscard]] HostOrder host_order() const { return HostOrder(compute_.get(), device_); }
  //! Makes this context's device current on the calling thread.
  void make_current() const { check(cudaSetDevice(device_), "cudaSetDevice"); }
  //! Waits for the work queued on the compute and the communication stream.
  void synchronize() const {
    compute_.synchronize();
    comm_.synchronize();
  }

 private:
  int rank_ = 0;
  int device_ = 0;
  int sm_count_ = 0;
  ContextOptions options_{};
  Stream compute_{Stream::null()};
  Stream comm_{Stream::null()};
  std::unique_ptr<CachingAllocator<Memory>> cache_;  // a stable address for the allocators pointing at it
  std::unique_ptr<void, detail::CudaFree> workspace_;
  std::unique_ptr<void, detail::CudaFree> scratch_;
  std::unique_ptr<void, detail::CudaFreeHost> result_;
  std::unique_ptr<std::remove_pointer_t<cublasHandle_t>, detail::CublasDestroy> cublas_;
  std::unique_ptr<std::remove_pointer_t<cublasLtHandle_t>, detail::CublasLtDestroy> cublaslt_;
  std::unique_ptr<detail::LtPlans> lt_plans_;  // held by pointer: a moved-from context holds none
};

}  // namespace parallax::cuda

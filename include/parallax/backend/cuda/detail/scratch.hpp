// parallax/backend/cuda/detail/scratch.hpp — stream-ordered temporary device memory for one kernel call.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#include "../../../core/memory_stats.hpp"
#include "../context.hpp"

namespace parallax::cuda::detail {

//! `count` elements of `T` of device memory from the context's memory cache, usable by the work queued on
//! the context's compute stream from now on and returned to the cache, in stream order, when it goes out of
//! scope (the kernels queued before may still be running then: the compute stream may reuse the block at
//! once, other streams once they are done). For the temporaries of a kernel call (partial sums, sort
//! buffers); counted as `MemoryCategory::workspace` in the stats the cache reports to (the rank's, under
//! `launch`). Move-less.
//! @code
//! detail::Scratch<float> partial(ctx, chunks * d, "cuda::LayerNorm::layernorm_backward");
//! kernel<<<grid, block, 0, ctx.stream()>>>(partial.get());
//! @endcode
template <class T>
class Scratch {
 public:
  Scratch(const Context& ctx, std::size_t count, const char* what)
      : cache_(&ctx.memory_cache()), bytes_(count * sizeof(T)) {
    if (bytes_ == 0) return;
    data_ = static_cast<T*>(cache_->allocate(bytes_, ctx.stream(), what));
    stats_ = cache_->reporting_to();
    if (stats_ != nullptr) stats_->on_allocate(MemoryCategory::workspace, bytes_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (data_ == nullptr) return;
    try {
      cache_->deallocate(data_);
      if (stats_ != nullptr) stats_->on_free(MemoryCategory::workspace, bytes_);
    } catch (...) {  // a failed event record leaves the block allocated; nothing else to undo
      (void)cudaGetLastError();
    }
  }

  [[nodiscard]] T* get() const noexcept { return data_; }

 private:
  CachingAllocator<Memory>* cache_;
  MemoryStats* stats_ = nullptr;
  std::size_t bytes_;
  T* data_ = nullptr;
};

}  // namespace parallax::cuda::detail

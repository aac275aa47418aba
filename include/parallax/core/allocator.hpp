// parallax/core/allocator.hpp — a rank's allocator: bytes from a memory space or its cache, counted by category.
#pragma once

#include <cstddef>

#include <fmt/format.h>

#include "../error.hpp"
#include "caching_allocator.hpp"
#include "memory_space.hpp"
#include "memory_stats.hpp"

namespace parallax {

//! Allocates from memory space `Space`, straight or through a `CachingAllocator` over it, and reports
//! every byte to one rank's `MemoryStats`: live bytes per category exactly as requested, and the bytes
//! held from the space (`reserved`; a cache reports its segments itself).
//!
//! A `Rank` on the CUDA backend allocates through its context's cache; elsewhere allocators are plain.
//!
//! @tparam Space a `MemorySpace` (`host::Memory`, `cuda::Memory`).
//! @code
//! MemoryStats stats;
//! Allocator<host::Memory> alloc(stats, /*rank=*/0);
//! void* p = alloc.allocate(1024, MemoryCategory::activations);
//! alloc.deallocate(p, 1024, MemoryCategory::activations);
//! @endcode
template <MemorySpace Space>
class Allocator {
 public:
  using memory_space = Space;
  using cache_type = CachingAllocator<Space>;

  //! Every allocation straight from `Space`.
  Allocator(MemoryStats& stats, int rank) noexcept : stats_(&stats), rank_(rank) {}
  //! Every allocation through `cache`, which should report its reserved bytes to the same `stats`
  //! (`cache.report_to(&stats)`). The cache must outlive the allocator and its tensors.
  Allocator(MemoryStats& stats, int rank, cache_type& cache) noexcept : stats_(&stats), cache_(&cache), rank_(rank) {}

  [[nodiscard]] void* allocate(std::size_t bytes, MemoryCategory category) {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    if (cache_ != nullptr) {
      p = cache_->allocate(bytes, name(category));  // throws with the cache's figures
    } else {
      p = Space::allocate(bytes);
      if (p == nullptr)
        throw Error(fmt::format("Allocator: {} could not allocate {} bytes of {} ({} bytes live)", Space::name, bytes,
                                name(category), stats_->live_total()),
                    rank_);
      stats_->on_reserve(bytes);
    }
    stats_->on_allocate(category, bytes);
    return p;
  }
  void deallocate(void* p, std::size_t bytes, MemoryCategory category) {
    if (p == nullptr) return;
    if (cache_ != nullptr) {
      cache_->deallocate(p);
    } else {
      Space::deallocate(p, bytes);
      stats_->on_unreserve(bytes);
    }
    stats_->on_free(category, bytes);
  }

  //! Sets `bytes` at `p` (memory from this allocator) to zero: through a cache, in stream order on the cache's
  //! stream where the space can (`Space::zero_on`: a CUDA rank queues a memset on its compute stream instead of
  //! waiting for the whole device, so allocating a tensor never stalls the GPU), else at once (`Space::zero`).
  void zero(void* p, std::size_t bytes) const {
    if constexpr (requires(const typename cache_type::stream_type& s) { Space::zero_on(p, bytes, s); }) {
      if (cache_ != nullptr) return Space::zero_on(p, bytes, cache_->default_stream());
    }
    Space::zero(p, bytes);
  }

  [[nodiscard]] MemoryStats& stats() const noexcept { return *stats_; }
  //! The cache allocations go through, or nullptr.
  [[nodiscard]] cache_type* cache() const noexcept { return cache_; }
  [[nodiscard]] int rank() const noexcept { return rank_; }

 private:
  MemoryStats* stats_;
  cache_type* cache_ = nullptr;
  int rank_;
};

}  // namespace parallax

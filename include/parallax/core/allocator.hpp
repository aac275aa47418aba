// parallax/core/allocator.hpp — a rank's allocator: raw bytes from a memory space, counted by category.
#pragma once

#include <cstddef>

#include <fmt/format.h>

#include "../error.hpp"
#include "memory_space.hpp"
#include "memory_stats.hpp"

namespace parallax {

//! Allocates from memory space `Space` and reports every byte to one rank's `MemoryStats`.
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

  Allocator(MemoryStats& stats, int rank) noexcept : stats_(&stats), rank_(rank) {}

  [[nodiscard]] void* allocate(std::size_t bytes, MemoryCategory category) {
    if (bytes == 0) return nullptr;
    void* p = Space::allocate(bytes);
    if (p == nullptr)
      throw Error(fmt::format("Allocator: {} could not allocate {} bytes of {} ({} bytes live)", Space::name, bytes,
                              name(category), stats_->live_total()),
                  rank_);
    stats_->on_allocate(category, bytes);
    return p;
  }
  void deallocate(void* p, std::size_t bytes, MemoryCategory category) {
    if (p == nullptr) return;
    Space::deallocate(p, bytes);
    stats_->on_free(category, bytes);
  }

  [[nodiscard]] MemoryStats& stats() const noexcept { return *stats_; }
  [[nodiscard]] int rank() const noexcept { return rank_; }

 private:
  MemoryStats* stats_;
  int rank_;
};

}  // namespace parallax

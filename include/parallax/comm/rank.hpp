// parallax/comm/rank.hpp — Rank<B>: what one SPMD rank owns: its id, context, allocator and world group.
#pragma once

#include <utility>
#include <variant>

#include "../backend/concept.hpp"
#include "../core/allocator.hpp"
#include "../core/memory_stats.hpp"
#include "communicator.hpp"

namespace parallax {

namespace detail {
//! What a rank holds so that its thread's host copies wait for its own work only: the context's `host_order()`
//! where it has one (`cuda::Context`), else nothing.
template <class Context>
[[nodiscard]] auto host_order_of(const Context& context) {
  if constexpr (requires { context.host_order(); })
    return context.host_order();
  else
    return std::monostate{};
}
}  // namespace detail

//! One rank of an SPMD program on backend `B`: its id in the world, its execution context (stream,
//! handles), its allocator with per-category byte accounting, and the world communicator.
//! Created by `launch` (threads) or by a multi-process bootstrap; passed to the user's function. Build and use it
//! on one thread: with a CUDA context, that thread's host copies then wait for the rank's compute stream only
//! (`cuda::HostOrder`), not for its communication in flight.
//!
//! Where the context has a device memory cache (`cuda::Context::memory_cache()`), the allocator goes
//! through it and the cache reports its reserved bytes to the rank's `MemoryStats`.
//! @tparam B `host::Backend` or `cuda::Backend`.
template <Backend B>
class Rank {
 public:
  using backend = B;
  using Memory = typename B::Memory;

  Rank(int id, int size, Communicator world, typename B::Context context)
      : id_(id),
        size_(size),
        context_(std::move(context)),
        allocator_(make_allocator(context_, stats_, id)),
        host_order_(detail::host_order_of(context_)),
        world_(std::move(world)) {}
  Rank(const Rank&) = delete;
  Rank& operator=(const Rank&) = delete;

  [[nodiscard]] int id() const noexcept { return id_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] typename B::Context& context() noexcept { return context_; }
  [[nodiscard]] Allocator<Memory>& allocator() noexcept { return allocator_; }
  [[nodiscard]] MemoryStats& memory() noexcept { return stats_; }
  [[nodiscard]] Communicator& world() noexcept { return world_; }

 private:
  static Allocator<Memory> make_allocator(typename B::Context& context, MemoryStats& stats, int id) {
    if constexpr (requires { context.memory_cache(); }) {
      context.memory_cache().report_to(&stats);
      return Allocator<Memory>(stats, id, context.memory_cache());
    } else {
      return Allocator<Memory>(stats, id);
    }
  }

  int id_;
  int size_;
  MemoryStats stats_;  // declared before the context: it outlives the context's cache, which reports to it
  typename B::Context context_;
  Allocator<Memory> allocator_;
  decltype(detail::host_order_of(std::declval<typename B::Context&>())) host_order_;  // on the constructing thread
  Communicator world_;
};

}  // namespace parallax

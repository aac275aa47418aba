// parallax/core/caching_allocator.hpp — CachingAllocator: a size-binned, stream-ordered block cache over raw memory.
#pragma once

#include <concepts>
#include <cstddef>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../error.hpp"
#include "memory_stats.hpp"

namespace parallax {

//! Where a cache's segments come from: `allocate(n)` returns nullptr when the space is exhausted and
//! `deallocate(p, n)` gives a segment back, after any work still queued on it (cudaFree waits for the
//! device). Every `MemorySpace` models it; a test may use a stateful one (a byte limit, call counts).
template <class R>
concept RawMemory = std::movable<R> && requires(R& r, void* p, std::size_t n) {
  { R::name } -> std::convertible_to<const char*>;
  { r.allocate(n) } -> std::same_as<void*>;
  r.deallocate(p, n);
};

//! How freed memory is ordered against work still queued on streams. A block freed while the work
//! queued on stream `s` may still use it is reusable at once by `s` (its later work runs after), and by
//! another stream only once an event recorded on `s` at free time is `done`.
//!
//! `stream_type` names a stream (compared with ==), `make_event()` creates an event, `record(e, s)` marks
//! the current end of `s`'s queue in `e`, `done(e)` says whether the work before that mark finished.
template <class O>
concept StreamOrder = std::movable<O> && std::movable<typename O::event_type> &&
                      std::copyable<typename O::stream_type> && std::equality_comparable<typename O::stream_type> &&
                      requires(O& o, typename O::event_type& e, typename O::stream_type s) {
                        { o.make_event() } -> std::same_as<typename O::event_type>;
                        o.record(e, s);
                        { o.done(e) } -> std::convertible_to<bool>;
                      };

//! The host's order: memory is used by the calling threads in program order, as if on one implicit
//! stream, so a freed block is reusable at once. Models `StreamOrder` (every call is a no-op).
struct HostOrder {
  //! The one implicit stream.
  struct stream_type {
    bool operator==(const stream_type&) const = default;
  };
  struct event_type {};
  [[nodiscard]] event_type make_event() const noexcept { return {}; }
  void record(event_type&, stream_type) const noexcept {}
  [[nodiscard]] bool done(const event_type&) const noexcept { return true; }
};

namespace detail {
template <class Space>
struct stream_order_of {
  using type = HostOrder;
};
template <class Space>
  requires requires { typename Space::stream_order; }
struct stream_order_of<Space> {
  using type = typename Space::stream_order;
};
}  // namespace detail

//! The stream order of a cache over `Space`: `Space::stream_order` where the space names one
//! (`cuda::Memory`: `cuda::StreamOrder`), `HostOrder` otherwise.
template <class Space>
using stream_order_t = typename detail::stream_order_of<Space>::type;

//! What a `CachingAllocator` holds, in bytes.
struct CacheUsage {
  std::size_t reserved = 0;   //!< in segments obtained from the raw memory
  std::size_t allocated = 0;  //!< in blocks handed out (their rounded sizes)
  std::size_t requested = 0;  //!< asked for by the live allocations (at most `allocated`)
  std::size_t cached = 0;     //!< in free blocks kept for reuse: `reserved - allocated`
  std::size_t segments = 0;   //!< raw allocations held
};

//! A caching allocator over raw memory, after PyTorch's CUDA caching allocator: requests are rounded
//! to `granularity` bytes; those up to `small_limit` are packed into `small_segment`-byte segments, larger
//! ones into shared `large_segment`-byte segments below `shared_large_limit` and into their own segment
//! (rounded to `segment_granularity`) above. A freed block stays cached: the smallest free block that
//! fits serves the next request and is split when the rest is worth keeping (at least `granularity`
//! in a small segment, more than `small_limit` in a large one); a freed block merges with its free
//! neighbours. When the raw memory refuses a segment, the cache gives back its wholly free segments and
//! retries once before it throws, naming the request, the bytes in use and cached, and the device.
//!
//! Blocks are stream-ordered (see `StreamOrder`): a block remembers the stream it was allocated on; freeing
//! it records an event there, and another stream reuses it only once that event is done. Thread-safe (one
//! mutex); the raw memory's reserved bytes are reported to the `MemoryStats` given to `report_to`.
//!
//! @tparam Raw a `RawMemory` (a `MemorySpace` such as `cuda::Memory`, or a test's fake).
//! @tparam Order a `StreamOrder` (`HostOrder`, `cuda::StreamOrder`).
//! @code
//! CachingAllocator<host::Memory> cache;
//! void* p = cache.allocate(1000, "activations");   // a 1024-byte block of a new 2 MiB segment
//! cache.deallocate(p);                              // cached: the next fitting request reuses it
//! cache.release_cached();                           // gives the segment back
//! @endcode
template <RawMemory Raw, StreamOrder Order = stream_order_t<Raw>>
class CachingAllocator {
 public:
  using stream_type = typename Order::stream_type;
  using event_type = typename Order::event_type;

  static constexpr std::size_t granularity = 512;                           //!< block sizes are multiples
  static constexpr std::size_t small_limit = std::size_t{1} << 20;          //!< largest small request
  static constexpr std::size_t small_segment = std::size_t{2} << 20;        //!< segment of the small pool
  static constexpr std::size_t large_segment = std::size_t{20} << 20;       //!< shared segment of the large pool
  static constexpr std::size_t shared_large_limit = std::size_t{10} << 20;  //!< requests from here get their own
  static constexpr std::size_t segment_granularity = std::size_t{2} << 20;  //!< own segments are multiples

  //! @param default_stream the stream of `allocate(bytes, what)` (a rank's compute stream).
  //! @param rank named in errors (-1: none).  @param device names the memory in errors ("cuda device 0").
  explicit CachingAllocator(stream_type default_stream = {}, int rank = -1, std::string device = Raw::name,
                            Raw raw = {}, Order order = {})
      : default_stream_(std::move(default_stream)),
        rank_(rank),
        device_(std::move(device)),
        raw_(std::move(raw)),
        order_(std::move(order)) {}
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;
  //! Gives every segment back to the raw memory (blocks still allocated become invalid) without
  //! reporting to the stats, which may be gone already.
  ~CachingAllocator() {
    for (Block* head : segments_) {
      void* p = head->ptr;
      std::size_t bytes = 0;
      for (Block* b = head; b != nullptr;) {
        bytes += b->size;
        delete std::exchange(b, b->next);
      }
      try {
        raw_.deallocate(p, bytes);
      } catch (...) {  // the device is gone: nothing left to give back
      }
    }
  }

  //! `bytes` on the default stream; nullptr for 0 bytes. `what` names the use in errors ("activations").
  [[nodiscard]] void* allocate(std::size_t bytes, std::string_view what = "memory") {
    return allocate(bytes, default_stream_, what);
  }
  //! `bytes` for work queued on `stream`; nullptr for 0 bytes. Throws `Error` when the raw memory is out.
  [[nodiscard]] void* allocate(std::size_t bytes, stream_type stream, std::string_view what) {
    if (bytes == 0) return nullptr;
    std::lock_guard lock(mutex_);
    if (bytes > max_request) throw out_of_memory(bytes, bytes, what, 0);
    const std::size_t size = round_up(bytes, granularity);
    const bool small = size <= small_limit;
    Block* b = take_free(small, size, stream);
    if (b == nullptr) b = new_segment(small, size, stream, bytes, what);
    if (should_split(*b, size)) split(*b, size);
    recycle(b->event);
    b->allocated = true;
    b->requested = bytes;
    b->stream = stream;
    allocated_ += b->size;
    requested_ += bytes;
    live_.emplace(b->ptr, b);
    return b->ptr;
  }

  //! Returns a block to the cache; its stream may reuse it at once, other streams once the work queued
  //! on it so far is done. Throws `Error` for a pointer this cache did not hand out.
  void deallocate(void* p) {
    if (p == nullptr) return;
    std::lock_guard lock(mutex_);
    const auto it = live_.find(p);
    if (it == live_.end())
      throw Error(fmt::format("CachingAllocator: {} is not a live allocation of {}", fmt::ptr(p), device_), rank_);
    Block* b = it->second;
    event_type event = take_event();
    order_.record(event, b->stream);  // before any change: if it throws, the block stays allocated
    live_.erase(it);
    allocated_ -= b->size;
    requested_ -= b->requested;
    b->allocated = false;
    b->requested = 0;
    b->event = std::move(event);
    pool(b->small).insert(merge(b));
  }

  //! Gives every wholly free segment back to the raw memory; returns the bytes given back.
  std::size_t release_cached() {
    std::lock_guard lock(mutex_);
    return release_locked();
  }

  //! Reports reserved bytes to `stats` from now on (and moves the bytes reserved so far there from the
  //! previous stats); nullptr: to none. The stats must outlive the cache or be unset first.
  void report_to(MemoryStats* stats) {
    std::lock_guard lock(mutex_);
    if (stats_ != nullptr) stats_->on_unreserve(reserved_);
    stats_ = stats;
    if (stats_ != nullptr) stats_->on_reserve(reserved_);
  }
  //! The stats reserved bytes are reported to (nullptr: none).
  [[nodiscard]] MemoryStats* reporting_to() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }

  [[nodiscard]] CacheUsage usage() const {
    std::lock_guard lock(mutex_);
    return {reserved_, allocated_, requested_, reserved_ - allocated_, segments_.size()};
  }
  [[nodiscard]] const stream_type& default_stream() const noexcept { return default_stream_; }
  [[nodiscard]] const std::string& device() const noexcept { return device_; }

 private:
  // Larger requests cannot be rounded to a segment without overflow.
  static constexpr std::size_t max_request = std::numeric_limits<std::size_t>::max() - segment_granularity;

  // A run of bytes in a segment: allocated, or free and in its pool. Neighbours are in address order.
  struct Block {
    std::byte* ptr = nullptr;
    std::size_t size = 0;
    std::size_t requested = 0;        // allocated: the bytes asked for
    bool small = false;               // in a small segment (the small pool)
    bool allocated = false;
    stream_type stream{};             // allocated on; free: freed on
    std::optional<event_type> event;  // free: recorded on `stream` at free time; empty once done
    Block* prev = nullptr;
    Block* next = nullptr;
  };
  // Free blocks by size, then address: the first fit from lower_bound is the best fit.
  struct BySize {
    using is_transparent = void;
    using Key = std::pair<std::size_t, const std::byte*>;
    static Key key(const Block* b) noexcept { return {b->size, b->ptr}; }
    bool operator()(const Block* a, const Block* b) const noexcept { return key(a) < key(b); }
    bool operator()(const Block* a, const Key& k) const noexcept { return key(a) < k; }
    bool operator()(const Key& k, const Block* b) const noexcept { return k < key(b); }
  };
  using Pool = std::set<Block*, BySize>;

  static std::size_t round_up(std::size_t n, std::size_t m) noexcept { return (n + m - 1) / m * m; }
  static std::size_t segment_size(bool small, std::size_t size) noexcept {
    if (small) return small_segment;
    return size < shared_large_limit ? large_segment : round_up(size, segment_granularity);
  }
  static bool should_split(const Block& b, std::size_t size) noexcept {
    const std::size_t rest = b.size - size;
    return b.small ? rest >= granularity : rest > small_limit;
  }

  static Block* make_block(std::byte* ptr, std::size_t size, bool small, const stream_type& stream) {
    auto* b = new Block;
    b->ptr = ptr;
    b->size = size;
    b->small = small;
    b->stream = stream;
    return b;
  }
  Pool& pool(bool small) noexcept { return small ? small_free_ : large_free_; }

  event_type take_event() {
    if (spare_events_.empty()) return order_.make_event();
    event_type e = std::move(spare_events_.back());
    spare_events_.pop_back();
    return e;
  }
  void recycle(std::optional<event_type>& e) {
    if (!e) return;
    spare_events_.push_back(std::move(*e));
    e.reset();
  }
  // Whether free block `b` may serve work on `stream` (clears its event once done).
  bool ready_for(Block& b, const stream_type& stream) {
    if (!b.event || b.stream == stream) return true;
    if (!order_.done(*b.event)) return false;
    recycle(b.event);
    return true;
  }

  Block* take_free(bool small, std::size_t size, const stream_type& stream) {
    Pool& free = pool(small);
    for (auto it = free.lower_bound(typename BySize::Key{size, nullptr}); it != free.end(); ++it) {
      if (!ready_for(**it, stream)) continue;
      Block* b = *it;
      free.erase(it);
      return b;
    }
    return nullptr;
  }

  Block* new_segment(bool small, std::size_t size, const stream_type& stream, std::size_t bytes, std::string_view what) {
    const std::size_t bytes_of_segment = segment_size(small, size);
    void* p = raw_.allocate(bytes_of_segment);
    if (p == nullptr) {
      const std::size_t released = release_locked();
      p = raw_.allocate(bytes_of_segment);
      if (p == nullptr) throw out_of_memory(bytes, bytes_of_segment, what, released);
    }
    Block* b = make_block(static_cast<std::byte*>(p), bytes_of_segment, small, stream);
    segments_.push_back(b);
    reserved_ += bytes_of_segment;
    if (stats_ != nullptr) stats_->on_reserve(bytes_of_segment);
    return b;
  }

  // Cuts `b` to `size` bytes; the rest becomes a free block with `b`'s stream and pending event.
  void split(Block& b, std::size_t size) {
    Block* rest = make_block(b.ptr + size, b.size - size, b.small, b.stream);
    rest->event = std::exchange(b.event, std::nullopt);
    rest->prev = &b;
    rest->next = b.next;
    if (b.next != nullptr) b.next->prev = rest;
    b.next = rest;
    b.size = size;
    pool(b.small).insert(rest);
  }

  // Whether free neighbour `n` may join a block just freed on `stream`: its pending work is on the same
  // stream (ordered before the new event) or done.
  bool joinable(Block* n, const stream_type& stream) { return n != nullptr && !n->allocated && ready_for(*n, stream); }
  // Moves `upper` (the next block) into `lower`.
  static void absorb(Block& lower, Block* upper) {
    lower.size += upper->size;
    lower.next = upper->next;
    if (upper->next != nullptr) upper->next->prev = &lower;
    delete upper;
  }
  // Merges just-freed `b` with its free neighbours; the result keeps `b`'s stream and event.
  Block* merge(Block* b) {
    if (Block* prev = b->prev; joinable(prev, b->stream)) {
      pool(prev->small).erase(prev);
      recycle(prev->event);
      prev->stream = b->stream;
      prev->event = std::exchange(b->event, std::nullopt);
      absorb(*prev, b);
      b = prev;
    }
    if (Block* next = b->next; joinable(next, b->stream)) {
      pool(next->small).erase(next);
      recycle(next->event);
      absorb(*b, next);
    }
    return b;
  }

  std::size_t release_locked() {
    std::size_t released = 0;
    for (Pool* free : {&small_free_, &large_free_}) {
      for (auto it = free->begin(); it != free->end();) {
        Block* b = *it;
        if (b->prev != nullptr || b->next != nullptr) {
          ++it;
          continue;
        }
        it = free->erase(it);
        std::erase(segments_, b);
        reserved_ -= b->size;
        released += b->size;
        if (stats_ != nullptr) stats_->on_unreserve(b->size);
        recycle(b->event);
        void* p = b->ptr;
        const std::size_t bytes = b->size;
        delete b;
        raw_.deallocate(p, bytes);
      }
    }
    spare_events_.clear();
    return released;
  }

  Error out_of_memory(std::size_t bytes, std::size_t segment, std::string_view what, std::size_t released) const {
    return Error(fmt::format("CachingAllocator: out of memory on {}: {} bytes requested for {} (a {}-byte segment); {} "
                             "bytes in use, {} cached, {} reserved after giving back {} cached bytes and retrying",
                             device_, bytes, what, segment, allocated_, reserved_ - allocated_, reserved_, released),
                 rank_);
  }

  mutable std::mutex mutex_;
  stream_type default_stream_;
  int rank_;
  std::string device_;
  [[no_unique_address]] Raw raw_;
  [[no_unique_address]] Order order_;
  MemoryStats* stats_ = nullptr;
  Pool small_free_, large_free_;
  std::unordered_map<void*, Block*> live_;
  std::vector<Block*> segments_;  // each segment's first block (it never merges into another)
  std::vector<event_type> spare_events_;
  std::size_t reserved_ = 0, allocated_ = 0, requested_ = 0;
};

}  // namespace parallax

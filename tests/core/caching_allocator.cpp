// Tests for parallax/core/caching_allocator.hpp and its wiring into Allocator and MemoryStats: reuse, split and
// merge, exact reserved and live bytes, peaks, release, the out-of-memory retry and its message, the cross-stream
// reuse rule (with a fake event type) and many threads. A fake raw memory counts its calls and has a byte limit.
#include <parallax/backend/host/backend.hpp>
#include <parallax/backend/host/memory.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/core/allocator.hpp>
#include <parallax/core/caching_allocator.hpp>
#include <parallax/core/memory_stats.hpp>
#include <parallax/core/tensor.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

using parallax::Allocator;
using parallax::CachingAllocator;
using parallax::Error;
using parallax::HostOrder;
using parallax::MemoryCategory;
using parallax::MemoryStats;
using Catch::Matchers::Contains;

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * 1024;

// What the fake raw memory did; shared by the copies of `FakeRaw` that point at it.
struct RawLedger {
  std::mutex mutex;
  std::size_t limit = std::numeric_limits<std::size_t>::max();
  std::size_t held = 0;
  int calls = 0, refused = 0, frees = 0;
};

// Raw memory with a byte limit: host memory (untouched pages cost nothing) that counts every call.
struct FakeRaw {
  static constexpr const char* name = "fake";
  static constexpr std::align_val_t alignment{512};
  RawLedger* ledger = nullptr;

  void* allocate(std::size_t n) {
    std::lock_guard lock(ledger->mutex);
    ++ledger->calls;
    if (n > ledger->limit - ledger->held) {
      ++ledger->refused;
      return nullptr;
    }
    ledger->held += n;
    return ::operator new(n, alignment);
  }
  void deallocate(void* p, std::size_t n) {
    std::lock_guard lock(ledger->mutex);
    ledger->held -= n;
    ++ledger->frees;
    ::operator delete(p, alignment);
  }
};
static_assert(parallax::RawMemory<FakeRaw> && parallax::RawMemory<parallax::host::Memory>);

// Streams 0..3 as queues of marks: recording an event marks the current end of a stream's queue, `finish(s)`
// completes everything queued on s so far.
struct Timeline {
  std::array<int, 4> queued{}, completed{};
  int made = 0, records = 0, queries = 0;
  void finish(int s) { completed[static_cast<std::size_t>(s)] = queued[static_cast<std::size_t>(s)]; }
};

struct FakeOrder {
  using stream_type = int;
  struct event_type {
    int stream = -1, mark = 0;
  };
  Timeline* timeline = nullptr;

  event_type make_event() const {
    ++timeline->made;
    return {};
  }
  void record(event_type& e, int s) const {
    ++timeline->records;
    e = {s, ++timeline->queued[static_cast<std::size_t>(s)]};
  }
  bool done(const event_type& e) const {
    ++timeline->queries;
    return timeline->completed[static_cast<std::size_t>(e.stream)] >= e.mark;
  }
};
static_assert(parallax::StreamOrder<FakeOrder> && parallax::StreamOrder<HostOrder>);

using Cache = CachingAllocator<FakeRaw, HostOrder>;
using StreamCache = CachingAllocator<FakeRaw, FakeOrder>;

std::byte* bytes_of(void* p) { return static_cast<std::byte*>(p); }

}  // namespace

TEST_CASE("CachingAllocator: rounds requests, packs small ones into one segment and reuses freed blocks",
          "[core][caching_allocator]") {
  RawLedger ledger;
  Cache cache({}, 0, "fake", FakeRaw{&ledger});
  CHECK(cache.allocate(0) == nullptr);
  CHECK(ledger.calls == 0);

  void* a = cache.allocate(1);
  REQUIRE(a != nullptr);
  CHECK(ledger.calls == 1);
  CHECK(ledger.held == Cache::small_segment);
  auto u = cache.usage();
  CHECK(u.reserved == Cache::small_segment);
  CHECK(u.allocated == Cache::granularity);
  CHECK(u.requested == 1);
  CHECK(u.cached == Cache::small_segment - Cache::granularity);
  CHECK(u.segments == 1);

  void* b = cache.allocate(1000);  // 1024 bytes, right after a
  CHECK(bytes_of(b) == bytes_of(a) + 512);
  void* c = cache.allocate(513);
  CHECK(bytes_of(c) == bytes_of(b) + 1024);
  CHECK(ledger.calls == 1);
  CHECK(cache.usage().allocated == 512 + 1024 + 1024);
  CHECK(cache.usage().requested == 1 + 1000 + 513);

  cache.deallocate(b);
  CHECK(cache.usage().allocated == 512 + 1024);
  CHECK(cache.allocate(700) == b);  // the freed 1024-byte block is the best fit
  cache.deallocate(b);
  void* d = cache.allocate(512);  // split off the freed block; its other half stays cached
  CHECK(d == b);
  CHECK(cache.allocate(512) == bytes_of(b) + 512);
  CHECK(ledger.calls == 1);
  CHECK(cache.usage().reserved == Cache::small_segment);

  CHECK(cache.release_cached() == 0);  // the one segment is in use
  CHECK_THROWS_WITH(cache.deallocate(bytes_of(a) + 8), Contains("is not a live allocation of fake") && Contains("(rank 0)"));
}

TEST_CASE("CachingAllocator: large requests get shared or own segments; blocks split and merge",
          "[core][caching_allocator]") {
  RawLedger ledger;
  Cache cache({}, -1, "fake", FakeRaw{&ledger});

  SECTION("requests in (1, 10) MiB share a 20 MiB segment, split while the rest is above 1 MiB") {
    void* a = cache.allocate(3 * MiB);
    void* b = cache.allocate(4 * MiB + 1);
    CHECK(ledger.calls == 1);
    CHECK(cache.usage().reserved == Cache::large_segment);
    CHECK(bytes_of(b) == bytes_of(a) + 3 * MiB);
    CHECK(cache.usage().allocated == 3 * MiB + 4 * MiB + 512);
    // 20 - 3 - 4.0005 MiB are left: a request leaving 1 MiB or less takes the whole rest (no split).
    void* c = cache.allocate(12 * MiB);
    CHECK(ledger.calls == 1);
    CHECK(cache.usage().allocated == Cache::large_segment);
    CHECK(cache.usage().cached == 0);

    cache.deallocate(b);
    CHECK(cache.release_cached() == 0);
    cache.deallocate(a);  // merges with b's block
    CHECK(cache.allocate(7 * MiB) == a);
    cache.deallocate(a);
    cache.deallocate(c);  // a | b | c merged: the whole segment
    CHECK(cache.usage().segments == 1);
    CHECK(cache.release_cached() == Cache::large_segment);
    CHECK(ledger.frees == 1);
    CHECK(ledger.held == 0);
    CHECK(cache.usage().reserved == 0);
  }
  SECTION("requests from 10 MiB on get their own segment, rounded to 2 MiB") {
    void* a = cache.allocate(11 * MiB + 1);
    CHECK(cache.usage().reserved == 12 * MiB);
    CHECK(cache.usage().allocated == 12 * MiB);  // the rest of 1 MiB is not split off
    void* b = cache.allocate(1 * MiB + 1);       // a new shared segment
    CHECK(cache.usage().reserved == 12 * MiB + Cache::large_segment);
    cache.deallocate(a);
    CHECK(cache.allocate(10 * MiB) == a);  // the cached 12 MiB block
    cache.deallocate(a);
    cache.deallocate(b);
    CHECK(cache.usage().segments == 2);
    CHECK(cache.release_cached() == 12 * MiB + Cache::large_segment);
    CHECK(ledger.frees == 2);
  }
  SECTION("small blocks merge in any order; the small and large pools do not mix") {
    void* a = cache.allocate(1 * MiB);  // exactly half a small segment each
    void* b = cache.allocate(1 * MiB);
    void* c = cache.allocate(256 * KiB);  // a second small segment
    CHECK(bytes_of(b) == bytes_of(a) + 1 * MiB);
    CHECK(cache.usage().reserved == 2 * Cache::small_segment);
    cache.deallocate(b);
    cache.deallocate(a);  // merges with the next block
    void* big = cache.allocate(1 * MiB + 1);  // large: a 2 MiB free small block does not serve it
    CHECK(cache.usage().reserved == 2 * Cache::small_segment + Cache::large_segment);
    CHECK(cache.release_cached() == Cache::small_segment);
    cache.deallocate(c);
    cache.deallocate(big);
    CHECK(cache.release_cached() == Cache::small_segment + Cache::large_segment);
    CHECK(ledger.held == 0);
    CHECK(ledger.calls == 3);
  }
}

TEST_CASE("CachingAllocator: an Allocator through it counts exact live bytes and the reserved segments",
          "[core][caching_allocator]") {
  using Host = parallax::host::Memory;
  MemoryStats stats;
  CachingAllocator<Host> cache;
  cache.report_to(&stats);
  CHECK(cache.reporting_to() == &stats);
  Allocator<Host> alloc(stats, 1, cache);
  CHECK(alloc.cache() == &cache);
  constexpr auto P = MemoryCategory::parameters, A = MemoryCategory::activations;
  {
    parallax::Tensor<float, Host> w(alloc, parallax::Shape{250}, P);  // 1000 bytes
    parallax::Tensor<float, Host> x(alloc, parallax::Shape{3, 100}, A);
    CHECK(stats.live(P) == 1000);
    CHECK(stats.live(A) == 1200);
    CHECK(stats.live_total() == 2200);
    CHECK(stats.reserved() == CachingAllocator<Host>::small_segment);
    CHECK(cache.usage().requested == 2200);
    CHECK(cache.usage().allocated == 1024 + 1536);
    w(7) = 3.f;
    CHECK(x(2, 99) == 0.f);
    {
      parallax::Tensor<float, Host> y(alloc, parallax::Shape{3 * 1024 * 1024}, A);  // 12 MiB: its own segment
      CHECK(stats.reserved() == CachingAllocator<Host>::small_segment + 12 * MiB);
      CHECK(stats.live(A) == 1200 + 12 * MiB);
    }
    CHECK(stats.live(A) == 1200);
    CHECK(stats.peak(A) == 1200 + 12 * MiB);
    CHECK(stats.reserved() == CachingAllocator<Host>::small_segment + 12 * MiB);  // cached, still reserved
    CHECK(stats.peak_reserved() == stats.reserved());
    CHECK(cache.release_cached() == 12 * MiB);
    CHECK(stats.reserved() == CachingAllocator<Host>::small_segment);
    CHECK(stats.peak_reserved() == CachingAllocator<Host>::small_segment + 12 * MiB);
    stats.reset_peaks();
    CHECK(stats.peak_reserved() == CachingAllocator<Host>::small_segment);
  }
  CHECK(stats.live_total() == 0);
  CHECK(stats.peak_total() == 2200);  // since the reset
  CHECK(cache.usage().allocated == 0);
  CHECK(stats.reserved() == CachingAllocator<Host>::small_segment);

  // Moving the reporting elsewhere moves the reserved bytes along.
  MemoryStats other;
  cache.report_to(&other);
  CHECK(stats.reserved() == 0);
  CHECK(other.reserved() == CachingAllocator<Host>::small_segment);
  cache.report_to(nullptr);
  CHECK(other.reserved() == 0);
  CHECK(cache.release_cached() == CachingAllocator<Host>::small_segment);
}

TEST_CASE("CachingAllocator: a raw failure gives the cache back and retries once, then names the numbers",
          "[core][caching_allocator]") {
  RawLedger ledger;
  ledger.limit = 21 * MiB;
  Cache cache({}, 3, "fake device 1", FakeRaw{&ledger});
  MemoryStats stats;
  cache.report_to(&stats);

  void* small = cache.allocate(100 * KiB);
  cache.deallocate(small);  // a cached 2 MiB segment
  CHECK(stats.reserved() == Cache::small_segment);

  void* a = cache.allocate(3 * MiB);  // 20 MiB: refused with 2 MiB held, granted once they are given back
  REQUIRE(a != nullptr);
  CHECK(ledger.calls == 3);
  CHECK(ledger.refused == 1);
  CHECK(ledger.frees == 1);
  CHECK(ledger.held == Cache::large_segment);
  CHECK(stats.reserved() == Cache::large_segment);
  CHECK(stats.peak_reserved() == Cache::large_segment);  // the 2 MiB went back before the 20 MiB came

  // 18 MiB needs its own segment; nothing is wholly free, so it fails twice and throws.
  try {
    (void)cache.allocate(18 * MiB, "activations");
    FAIL("expected a parallax::Error");
  } catch (const Error& e) {
    CHECK(e.rank() == 3);
    CHECK_THAT(std::string(e.what()),
               Contains("CachingAllocator: out of memory on fake device 1: 18874368 bytes requested for activations "
                        "(a 18874368-byte segment); 3145728 bytes in use, 17825792 cached, 20971520 reserved after "
                        "giving back 0 cached bytes and retrying (rank 3)"));
  }
  CHECK(ledger.calls == 5);
  CHECK(ledger.refused == 3);
  CHECK(cache.usage().allocated == 3 * MiB);
  CHECK(stats.reserved() == Cache::large_segment);

  // Through an Allocator the message names the category, and nothing is counted.
  MemoryStats host_stats;
  CachingAllocator<parallax::host::Memory> host_cache({}, 3);
  Allocator<parallax::host::Memory> through(host_stats, 3, host_cache);
  CHECK_THROWS_WITH(through.allocate(std::numeric_limits<std::size_t>::max(), MemoryCategory::optimizer),
                    Contains("CachingAllocator: out of memory on host") && Contains("for optimizer") &&
                        Contains("(rank 3)"));
  CHECK(host_stats.live_total() == 0);

  // A request too large to round is refused without a raw call.
  CHECK_THROWS_WITH(cache.allocate(std::numeric_limits<std::size_t>::max(), "gradients"),
                    Contains("out of memory on fake device 1") && Contains("for gradients"));
  CHECK(ledger.calls == 5);
  cache.deallocate(a);
  CHECK(cache.release_cached() == Cache::large_segment);
  CHECK(stats.reserved() == 0);
}

TEST_CASE("CachingAllocator: a block freed on one stream is reused by another only after its event",
          "[core][caching_allocator]") {
  RawLedger ledger;
  Timeline timeline;
  StreamCache cache(/*default_stream=*/0, 0, "fake", FakeRaw{&ledger}, FakeOrder{&timeline});
  CHECK(cache.default_stream() == 0);

  void* a = cache.allocate(1024);  // stream 0
  void* b = cache.allocate(1024, 0, "b");
  cache.deallocate(a);  // b keeps a's block apart from the free rest of the segment
  CHECK(timeline.records == 1);
  CHECK(timeline.made == 1);

  SECTION("the same stream reuses it at once, without querying the event") {
    CHECK(cache.allocate(1024, 0, "again") == a);
    CHECK(timeline.queries == 0);
    cache.deallocate(a);
    CHECK(timeline.made == 1);  // the event is recycled
  }
  SECTION("another stream waits for the event; until then it gets other memory") {
    void* c = cache.allocate(1024, 1, "c");
    CHECK(c != a);
    CHECK(bytes_of(c) == bytes_of(b) + 1024);  // from the never-used rest of the segment
    CHECK(timeline.queries >= 1);
    timeline.queued[0] += 5;  // later work on stream 0: not covered by the free-time event
    timeline.completed[0] = 1;  // the work queued before the free is done
    CHECK(cache.allocate(1024, 1, "d") == a);
    cache.deallocate(c);
  }
  SECTION("a free neighbour with pending work on another stream is not merged") {
    void* x = cache.allocate(1024, 1, "x");
    CHECK(bytes_of(x) == bytes_of(b) + 1024);
    void* y = cache.allocate(1024, 1, "y");
    cache.deallocate(b);  // stream 0 too: merges with a
    cache.deallocate(x);  // stream 1, next to a|b pending on stream 0: stays apart
    cache.deallocate(y);  // merges with x and the free rest
    timeline.finish(1);
    // Merged into a|b, x would carry stream 1's event only and hand a|b to stream 2 before stream 0 is done.
    CHECK(cache.allocate(1024, 2, "z") == x);
    CHECK(cache.allocate(2048, 0, "own") == a);  // stream 0 reuses a|b at once
    CHECK(ledger.calls == 1);
  }
  SECTION("once the event is done the block merges with a neighbour freed on another stream") {
    timeline.finish(0);
    void* c = cache.allocate(1024, 1, "c");  // a's block, done
    CHECK(c == a);
    cache.deallocate(b);  // stream 0, next to c (allocated): alone
    timeline.finish(0);
    cache.deallocate(c);  // stream 1: merges with b's done block
    CHECK(cache.allocate(2048, 1, "merged") == a);
  }
}

TEST_CASE("CachingAllocator: many threads share one cache; each thread's blocks stay its own",
          "[core][caching_allocator]") {
  constexpr int threads = 8, iterations = 3000;
  RawLedger ledger;
  MemoryStats stats;
  Cache cache({}, 0, "fake", FakeRaw{&ledger});
  cache.report_to(&stats);
  std::vector<int> corrupted(threads, 0);
  {
    std::vector<std::jthread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        std::mt19937 rng(static_cast<unsigned>(t));
        struct Held {
          void* p;
          std::size_t n;
        };
        std::vector<Held> held;
        const auto tag = static_cast<unsigned char>(t + 1);
        auto intact = [&](const Held& h) {
          const auto* q = static_cast<const unsigned char*>(h.p);
          for (std::size_t i = 0; i < std::min<std::size_t>(h.n, 64); ++i)
            if (q[i] != tag || q[h.n - 1 - i] != tag) return false;
          return true;
        };
        for (int i = 0; i < iterations; ++i) {
          if (held.size() < 16 && (held.empty() || rng() % 2 == 0)) {
            const std::size_t n = rng() % 8 == 0 ? 1 * MiB + rng() % (12 * MiB) : 1 + rng() % (64 * KiB);
            void* p = cache.allocate(n);
            std::memset(p, tag, std::min<std::size_t>(n, 64));
            std::memset(static_cast<unsigned char*>(p) + n - std::min<std::size_t>(n, 64), tag, std::min<std::size_t>(n, 64));
            held.push_back({p, n});
          } else {
            const std::size_t k = rng() % held.size();
            if (!intact(held[k])) ++corrupted[static_cast<std::size_t>(t)];
            cache.deallocate(held[k].p);
            held[k] = held.back();
            held.pop_back();
          }
        }
        for (const Held& h : held) {
          if (!intact(h)) ++corrupted[static_cast<std::size_t>(t)];
          cache.deallocate(h.p);
        }
      });
  }
  CHECK(corrupted == std::vector<int>(threads, 0));
  const auto u = cache.usage();
  CHECK(u.allocated == 0);
  CHECK(u.requested == 0);
  CHECK(u.reserved == ledger.held);
  CHECK(stats.reserved() == ledger.held);
  CHECK(cache.release_cached() == u.reserved);  // everything merged back into whole segments
  CHECK(ledger.held == 0);
  CHECK(stats.reserved() == 0);
}

TEST_CASE("MemoryStats: reserved bytes, plain allocators and the summary", "[core][caching_allocator]") {
  MemoryStats s;
  Allocator<parallax::host::Memory> alloc(s, 0);
  CHECK(alloc.cache() == nullptr);
  void* p = alloc.allocate(3000, MemoryCategory::gradients);
  CHECK(s.reserved() == 3000);  // a plain allocator holds exactly what it hands out
  CHECK(s.live_total() == 3000);
  CHECK(fmt::format("{}", s) ==
        "live 0.00 MiB (peak 0.00 MiB), reserved 0.00 MiB (peak 0.00 MiB); gradients 0.00 MiB (peak 0.00 MiB)");
  alloc.deallocate(p, 3000, MemoryCategory::gradients);
  CHECK(s.reserved() == 0);
  CHECK(s.peak_reserved() == 3000);

  s.on_reserve(3 * MiB);
  s.on_allocate(MemoryCategory::parameters, 1 * MiB);
  s.on_allocate(MemoryCategory::activations, MiB / 2);
  CHECK(s.summary() ==
        "live 1.50 MiB (peak 1.50 MiB), reserved 3.00 MiB (peak 3.00 MiB); parameters 1.00 MiB (peak 1.00 MiB), "
        "gradients 0.00 MiB (peak 0.00 MiB), activations 0.50 MiB (peak 0.50 MiB)");
  CHECK_THROWS_WITH(s.on_unreserve(4 * MiB), Contains("giving back 4194304 reserved bytes but only 3145728 are reserved"));
  CHECK(s.reserved() == 3 * MiB);

  // A host rank allocates plainly: the host context has no cache.
  std::size_t reserved = 0, live = 0;
  bool cached = true;
  parallax::launch<parallax::host::Backend>(1, [&](parallax::Rank<parallax::host::Backend>& rank) {
    parallax::Tensor<float, parallax::host::Memory> t(rank.allocator(), parallax::Shape{10}, MemoryCategory::workspace);
    cached = rank.allocator().cache() != nullptr;
    reserved = rank.memory().reserved();
    live = rank.memory().live_total();
  });
  CHECK_FALSE(cached);
  CHECK(reserved == 40);
  CHECK(live == 40);
}

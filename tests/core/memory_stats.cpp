// Tests for parallax/core/memory_stats.hpp and allocator.hpp: exact live/peak bytes, underflow, concurrency.
#include <parallax/backend/host/memory.hpp>
#include <parallax/core/allocator.hpp>
#include <parallax/core/memory_stats.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

using parallax::Allocator;
using parallax::Error;
using parallax::MemoryCategory;
using parallax::MemoryStats;
using Catch::Matchers::Contains;

namespace {

constexpr std::array<MemoryCategory, parallax::memory_category_count> all_categories{
    MemoryCategory::parameters, MemoryCategory::gradients,     MemoryCategory::optimizer,
    MemoryCategory::activations, MemoryCategory::communication, MemoryCategory::workspace,
    MemoryCategory::gathered_parameters};

// Expected figures of every category plus the total.
struct Expect {
  std::array<std::size_t, parallax::memory_category_count> live{}, peak{};
  std::size_t live_total = 0, peak_total = 0;
};

void check_stats(const MemoryStats& s, const Expect& e) {
  for (auto c : all_categories) {
    const auto i = static_cast<std::size_t>(c);
    INFO("category " << parallax::name(c));
    CHECK(s.live(c) == e.live[i]);
    CHECK(s.peak(c) == e.peak[i]);
  }
  CHECK(s.live_total() == e.live_total);
  CHECK(s.peak_total() == e.peak_total);
}

}  // namespace

TEST_CASE("MemoryStats: category names", "[core][memory_stats]") {
  CHECK(parallax::name(MemoryCategory::parameters) == "parameters");
  CHECK(parallax::name(MemoryCategory::gradients) == "gradients");
  CHECK(parallax::name(MemoryCategory::optimizer) == "optimizer");
  CHECK(parallax::name(MemoryCategory::activations) == "activations");
  CHECK(parallax::name(MemoryCategory::communication) == "communication");
  CHECK(parallax::name(MemoryCategory::workspace) == "workspace");
}

TEST_CASE("MemoryStats: exact live and peak across a sequence", "[core][memory_stats]") {
  MemoryStats s;
  Expect e;
  check_stats(s, e);  // starts at zero

  constexpr auto P = MemoryCategory::parameters;
  constexpr auto A = MemoryCategory::activations;
  constexpr auto W = MemoryCategory::workspace;
  constexpr auto iP = static_cast<std::size_t>(P), iA = static_cast<std::size_t>(A), iW = static_cast<std::size_t>(W);

  s.on_allocate(P, 100);
  e.live[iP] = e.peak[iP] = 100;
  e.live_total = e.peak_total = 100;
  check_stats(s, e);

  s.on_allocate(A, 50);
  e.live[iA] = e.peak[iA] = 50;
  e.live_total = e.peak_total = 150;
  check_stats(s, e);

  s.on_free(P, 100);
  e.live[iP] = 0;  // peak stays 100
  e.live_total = 50;
  check_stats(s, e);

  s.on_allocate(A, 30);
  e.live[iA] = e.peak[iA] = 80;
  e.live_total = 80;  // below the total peak of 150
  check_stats(s, e);

  s.on_allocate(W, 200);
  e.live[iW] = e.peak[iW] = 200;
  e.live_total = e.peak_total = 280;
  check_stats(s, e);

  s.on_free(W, 200);
  s.on_free(A, 30);
  e.live[iW] = 0;
  e.live[iA] = 50;
  e.live_total = 50;
  check_stats(s, e);

  SECTION("reset_peaks restarts from the live figures") {
    s.reset_peaks();
    e.peak = e.live;
    e.peak_total = e.live_total;
    check_stats(s, e);

    s.on_allocate(P, 10);
    e.live[iP] = e.peak[iP] = 10;
    e.live_total = e.peak_total = 60;
    check_stats(s, e);

    s.on_free(P, 10);
    s.on_free(A, 50);
    e.live[iP] = e.live[iA] = 0;
    e.live_total = 0;
    check_stats(s, e);
    s.reset_peaks();
    check_stats(s, Expect{});
  }
  SECTION("zero-byte events change nothing") {
    s.on_allocate(P, 0);
    s.on_free(A, 0);
    check_stats(s, e);
  }
}

TEST_CASE("MemoryStats: freeing more than is live throws and leaves the figures intact", "[core][memory_stats]") {
  MemoryStats s;
  s.on_allocate(MemoryCategory::gradients, 64);
  s.on_allocate(MemoryCategory::optimizer, 8);
  try {
    s.on_free(MemoryCategory::gradients, 100);
    FAIL("expected a parallax::Error");
  } catch (const Error& e) {
    CHECK_THAT(std::string(e.what()), Contains("100") && Contains("gradients") && Contains("64"));
  }
  CHECK(s.live(MemoryCategory::gradients) == 64);
  CHECK(s.live_total() == 72);
  CHECK(s.peak(MemoryCategory::gradients) == 64);
  CHECK(s.peak_total() == 72);

  // Another category's bytes do not cover the shortfall.
  CHECK_THROWS_AS(s.on_free(MemoryCategory::activations, 1), Error);
  CHECK(s.live(MemoryCategory::activations) == 0);
  CHECK(s.live_total() == 72);

  s.on_free(MemoryCategory::gradients, 64);
  s.on_free(MemoryCategory::optimizer, 8);
  CHECK(s.live_total() == 0);
}

TEST_CASE("Allocator: reports to its stats and names the rank", "[core][memory_stats]") {
  MemoryStats s;
  Allocator<parallax::host::Memory> alloc(s, 2);
  void* p = alloc.allocate(1000, MemoryCategory::communication);
  REQUIRE(p != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(p) % parallax::host::Memory::alignment == 0);
  CHECK(s.live(MemoryCategory::communication) == 1000);
  CHECK(alloc.allocate(0, MemoryCategory::communication) == nullptr);  // nothing, not counted
  CHECK(s.live_total() == 1000);
  alloc.deallocate(nullptr, 0, MemoryCategory::communication);
  alloc.deallocate(p, 1000, MemoryCategory::communication);
  CHECK(s.live_total() == 0);
  CHECK(s.peak_total() == 1000);
}

TEST_CASE("MemoryStats: concurrent allocations are counted exactly", "[core][memory_stats]") {
  constexpr int threads = 8;
  constexpr int iterations = 20000;
  MemoryStats s;

  SECTION("pure growth then pure shrink") {
    // Each thread adds `iterations` allocations of (t+1) bytes to category t % count, then frees them.
    std::size_t expect_total = 0;
    std::array<std::size_t, parallax::memory_category_count> expect{};
    for (int t = 0; t < threads; ++t) {
      expect[static_cast<std::size_t>(t % parallax::memory_category_count)] += std::size_t(iterations) * (t + 1);
      expect_total += std::size_t(iterations) * (t + 1);
    }
    {
      std::vector<std::jthread> pool;
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&s, t] {
          for (int i = 0; i < iterations; ++i) s.on_allocate(all_categories[t % parallax::memory_category_count], static_cast<std::size_t>(t + 1));
        });
    }
    for (auto c : all_categories) {
      CHECK(s.live(c) == expect[static_cast<std::size_t>(c)]);
      CHECK(s.peak(c) == expect[static_cast<std::size_t>(c)]);  // monotone growth: the peak is the end
    }
    CHECK(s.live_total() == expect_total);
    CHECK(s.peak_total() == expect_total);
    {
      std::vector<std::jthread> pool;
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&s, t] {
          for (int i = 0; i < iterations; ++i) s.on_free(all_categories[t % parallax::memory_category_count], static_cast<std::size_t>(t + 1));
        });
    }
    for (auto c : all_categories) CHECK(s.live(c) == 0);
    CHECK(s.live_total() == 0);
    CHECK(s.peak_total() == expect_total);
  }

  SECTION("interleaved allocate/free through allocators") {
    // Each thread holds at most two blocks of 64*(t+1) bytes at a time, so the total peak is bounded by
    // the sum of those holdings and at least the largest single thread's.
    std::size_t bound = 0;
    for (int t = 0; t < threads; ++t) bound += 2 * 64 * std::size_t(t + 1);
    {
      std::vector<std::jthread> pool;
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&s, t] {
          Allocator<parallax::host::Memory> alloc(s, t);
          const auto c = all_categories[t % parallax::memory_category_count];
          const std::size_t n = 64 * std::size_t(t + 1);
          for (int i = 0; i < iterations / 10; ++i) {
            void* a = alloc.allocate(n, c);
            void* b = alloc.allocate(n, c);
            alloc.deallocate(a, n, c);
            alloc.deallocate(b, n, c);
          }
        });
    }
    for (auto c : all_categories) CHECK(s.live(c) == 0);
    CHECK(s.live_total() == 0);
    CHECK(s.peak_total() <= bound);
    CHECK(s.peak_total() >= 2 * 64 * threads);
    // Per category: threads t and t + count share category t % count.
    for (int t = 0; t < parallax::memory_category_count; ++t) {
      std::size_t cat_bound = 0, cat_min = 0;
      for (int u = t; u < threads; u += parallax::memory_category_count) {
        cat_bound += 2 * 64 * std::size_t(u + 1);
        cat_min = std::max(cat_min, 2 * 64 * std::size_t(u + 1));
      }
      INFO("category " << t);
      CHECK(s.peak(all_categories[static_cast<std::size_t>(t)]) <= cat_bound);
      CHECK(s.peak(all_categories[static_cast<std::size_t>(t)]) >= cat_min);
    }
  }
}

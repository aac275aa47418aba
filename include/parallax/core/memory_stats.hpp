// parallax/core/memory_stats.hpp — per-rank byte accounting by category (live and peak).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <fmt/format.h>

#include "../error.hpp"

namespace parallax {

//! What an allocation is for. Memory formulas (ZeRO, pipeline activations) are asserted per category.
//! `gathered_parameters` are ZeRO-3's transient full copies of sharded parameters, alive around their use.
enum class MemoryCategory : int {
  parameters,
  gradients,
  optimizer,
  activations,
  communication,
  workspace,
  gathered_parameters
};

inline constexpr int memory_category_count = 7;

//! "parameters", "gradients", ... as used in JSON reports.
[[nodiscard]] constexpr std::string_view name(MemoryCategory c) noexcept {
  constexpr std::array<std::string_view, memory_category_count> names{
      "parameters", "gradients", "optimizer", "activations", "communication", "workspace", "gathered_parameters"};
  return names[static_cast<std::size_t>(c)];
}

//! Live and peak bytes of one rank, per category and in total. Exact: bytes are counted as requested.
//!
//! Thread-safe (a rank's communication thread may allocate while its compute thread does).
class MemoryStats {
 public:
  MemoryStats() = default;
  MemoryStats(const MemoryStats&) = delete;
  MemoryStats& operator=(const MemoryStats&) = delete;

  void on_allocate(MemoryCategory c, std::size_t bytes) noexcept {
    const auto i = static_cast<std::size_t>(c);
    raise_peak(peak_[i], live_[i].fetch_add(bytes, std::memory_order_relaxed) + bytes);
    raise_peak(peak_total_, total_.fetch_add(bytes, std::memory_order_relaxed) + bytes);
  }
  void on_free(MemoryCategory c, std::size_t bytes) {
    const auto i = static_cast<std::size_t>(c);
    // Subtract only if enough is live, so an underflow leaves the figures intact.
    std::size_t before = live_[i].load(std::memory_order_relaxed);
    do {
      if (before < bytes)
        throw Error(fmt::format("MemoryStats: freeing {} bytes of {} but only {} are live", bytes, name(c), before));
    } while (!live_[i].compare_exchange_weak(before, before - bytes, std::memory_order_relaxed));
    total_.fetch_sub(bytes, std::memory_order_relaxed);
  }

  [[nodiscard]] std::size_t live(MemoryCategory c) const noexcept { return live_[static_cast<std::size_t>(c)].load(); }
  [[nodiscard]] std::size_t peak(MemoryCategory c) const noexcept { return peak_[static_cast<std::size_t>(c)].load(); }
  [[nodiscard]] std::size_t live_total() const noexcept { return total_.load(); }
  [[nodiscard]] std::size_t peak_total() const noexcept { return peak_total_.load(); }

  //! Restarts peak tracking from the current live figures (e.g. after initialisation).
  void reset_peaks() noexcept {
    for (int i = 0; i < memory_category_count; ++i) peak_[static_cast<std::size_t>(i)].store(live_[static_cast<std::size_t>(i)].load());
    peak_total_.store(total_.load());
  }

 private:
  static void raise_peak(std::atomic<std::size_t>& peak, std::size_t value) noexcept {
    std::size_t p = peak.load(std::memory_order_relaxed);
    while (value > p && !peak.compare_exchange_weak(p, value, std::memory_order_relaxed)) {
    }
  }
  std::array<std::atomic<std::size_t>, memory_category_count> live_{};
  std::array<std::atomic<std::size_t>, memory_category_count> peak_{};
  std::atomic<std::size_t> total_{0};
  std::atomic<std::size_t> peak_total_{0};
};

}  // namespace parallax

// parallax/core/memory_stats.hpp — per-rank byte accounting by category (live and peak) and reserved bytes.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
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

//! Live and peak bytes of one rank, per category and in total, and the bytes it holds from the raw memory
//! space (reserved). Exact: live bytes are counted as requested; reserved bytes are what the raw space
//! gave, so `reserved() - live_total()` is the overhead of rounding, fragmentation and cached free blocks
//! (zero for an allocator without a cache). Prints as a one-line summary with `fmt::format("{}", stats)`.
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
    subtract(live_[i], bytes, [&](std::size_t live) {
      return fmt::format("MemoryStats: freeing {} bytes of {} but only {} are live", bytes, name(c), live);
    });
    total_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  //! `bytes` obtained from the raw memory space (a cache's new segment, or a plain allocation).
  void on_reserve(std::size_t bytes) noexcept {
    raise_peak(peak_reserved_, reserved_.fetch_add(bytes, std::memory_order_relaxed) + bytes);
  }
  //! `bytes` given back to the raw memory space.
  void on_unreserve(std::size_t bytes) {
    subtract(reserved_, bytes, [&](std::size_t reserved) {
      return fmt::format("MemoryStats: giving back {} reserved bytes but only {} are reserved", bytes, reserved);
    });
  }

  [[nodiscard]] std::size_t live(MemoryCategory c) const noexcept { return live_[static_cast<std::size_t>(c)].load(); }
  [[nodiscard]] std::size_t peak(MemoryCategory c) const noexcept { return peak_[static_cast<std::size_t>(c)].load(); }
  [[nodiscard]] std::size_t live_total() const noexcept { return total_.load(); }
  [[nodiscard]] std::size_t peak_total() const noexcept { return peak_total_.load(); }
  //! Bytes held from the raw memory space now (at least `live_total()` when every allocation is reported).
  [[nodiscard]] std::size_t reserved() const noexcept { return reserved_.load(); }
  [[nodiscard]] std::size_t peak_reserved() const noexcept { return peak_reserved_.load(); }

  //! Restarts peak tracking from the current live and reserved figures (e.g. after initialisation).
  void reset_peaks() noexcept {
    for (int i = 0; i < memory_category_count; ++i) peak_[static_cast<std::size_t>(i)].store(live_[static_cast<std::size_t>(i)].load());
    peak_total_.store(total_.load());
    peak_reserved_.store(reserved_.load());
  }

  //! "live 1.50 MiB (peak 2.00 MiB), reserved 4.00 MiB (peak 4.00 MiB); parameters 1.00 MiB (peak 1.00 MiB), ..."
  //! naming the categories that were ever used since the last `reset_peaks`.
  [[nodiscard]] std::string summary() const {
    std::string s = fmt::format("live {} (peak {}), reserved {} (peak {})", mib(live_total()), mib(peak_total()),
                                mib(reserved()), mib(peak_reserved()));
    char separator = ';';
    for (int i = 0; i < memory_category_count; ++i) {
      const auto c = static_cast<MemoryCategory>(i);
      if (peak(c) == 0) continue;
      s += fmt::format("{} {} {} (peak {})", separator, name(c), mib(live(c)), mib(peak(c)));
      separator = ',';
    }
    return s;
  }

 private:
  static std::string mib(std::size_t bytes) { return fmt::format("{:.2f} MiB", static_cast<double>(bytes) / (1 << 20)); }
  static void raise_peak(std::atomic<std::size_t>& peak, std::size_t value) noexcept {
    std::size_t p = peak.load(std::memory_order_relaxed);
    while (value > p && !peak.compare_exchange_weak(p, value, std::memory_order_relaxed)) {
    }
  }
  // Subtracts only if enough is there, so an underflow throws `message(current)` and leaves the figures intact.
  template <class Message>
  static void subtract(std::atomic<std::size_t>& counter, std::size_t bytes, Message message) {
    std::size_t before = counter.load(std::memory_order_relaxed);
    do {
      if (before < bytes) throw Error(message(before));
    } while (!counter.compare_exchange_weak(before, before - bytes, std::memory_order_relaxed));
  }
  std::array<std::atomic<std::size_t>, memory_category_count> live_{};
  std::array<std::atomic<std::size_t>, memory_category_count> peak_{};
  std::atomic<std::size_t> total_{0};
  std::atomic<std::size_t> peak_total_{0};
  std::atomic<std::size_t> reserved_{0};
  std::atomic<std::size_t> peak_reserved_{0};
};

}  // namespace parallax

//! Formats `MemoryStats::summary()`.
template <>
struct fmt::formatter<parallax::MemoryStats> : fmt::formatter<std::string> {
  auto format(const parallax::MemoryStats& s, format_context& ctx) const {
    return fmt::formatter<std::string>::format(s.summary(), ctx);
  }
};

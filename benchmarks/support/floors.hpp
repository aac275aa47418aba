// benchmarks/support/floors.hpp — physical limits measured on this machine, the floors benchmarks compare against.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <vector>

namespace parallax::bench {

//! The fastest of `reps` single-thread memcpy's of `bytes` (after one warm-up copy), in seconds.
[[nodiscard]] inline double memcpy_seconds(std::size_t bytes, int reps = 5) {
  std::vector<char> src(bytes, 1), dst(bytes, 2);
  double best = 0;
  for (int k = 0; k <= reps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (k > 0) best = best == 0 ? s : std::min(best, s);
    src[static_cast<std::size_t>(k) % bytes] = dst[bytes - 1 - static_cast<std::size_t>(k) % bytes];  // keep copies observable
  }
  return best;
}

}  // namespace parallax::bench

// benchmarks/support/floors.hpp — physical limits measured on this machine, the floors benchmarks compare against.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <parallax/backend/concept.hpp>
#include <parallax/comm/rank.hpp>
#include <parallax/core/init.hpp>
#include <parallax/core/tensor.hpp>

namespace parallax::bench {

//! Fills `v` with Normal(0, std) values: a random block generated on the host and repeated over the view, so that
//! filling gigabytes of device memory takes no longer than a few megabytes.
template <FloatElement T, MemorySpace Space>
void fill_random(View<T, Space> v, float std, std::uint64_t seed) {
  const std::int64_t n = v.numel(), block = std::min<std::int64_t>(n, std::int64_t{1} << 22);
  if (n == 0) return;
  const auto flat = v.flatten();
  init::fill(flat.rows(0, block), init::normal(std, seed));
  for (std::int64_t at = block; at < n; at += block) {
    const std::int64_t len = std::min(block, n - at);
    copy(flat.rows(at, at + len), View<const T, Space>(flat.rows(0, len)));
  }
}

//! FLOP/s of `B::gemm` on one square n x n x n product of T on random data, the best of 5 after a warm-up, each
//! timed from a synchronized context to a synchronized context.
template <Backend B, FloatElement T>
[[nodiscard]] double gemm_flops(Rank<B>& rank, std::int64_t n) {
  using Memory = typename B::Memory;
  const auto ws = MemoryCategory::workspace;
  Tensor<T, Memory> a(rank.allocator(), Shape{n, n}, ws), b(rank.allocator(), Shape{n, n}, ws),
      c(rank.allocator(), Shape{n, n}, ws);
  fill_random(a.view(), 1.f, 1);
  fill_random(b.view(), 1.f, 2);
  double best = 0;
  for (int k = 0; k <= 5; ++k) {
    rank.context().synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    B::gemm(rank.context(), Trans::N, Trans::N, 1.f, a.cview(), b.cview(), 0.f, c.view());
    rank.context().synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (k > 0) best = std::max(best, 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / s);
  }
  return best;
}

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

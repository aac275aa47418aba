// parallax/core/init.hpp — tensor initialisers keyed by the global element index, so shards match slices.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include <fmt/format.h>

#include "../error.hpp"
#include "dtype.hpp"
#include "rng.hpp"
#include "view.hpp"

namespace parallax::init {

//! Normal(mean, std) drawn from Philox at the element's global index.
struct Normal {
  float mean = 0.f;
  float std = 1.f;
  std::uint64_t seed = 0;
  [[nodiscard]] float operator()(std::uint64_t index) const noexcept {
    const auto w = random_words(seed, 0, index);
    const double u1 = (static_cast<double>(w[0] >> 8) + 1.0) * 0x1p-24;  // (0, 1]
    const double u2 = static_cast<double>(w[1] >> 8) * 0x1p-24;          // [0, 1)
    return static_cast<float>(mean + std * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
  }
};

//! Uniform in [lo, hi) drawn from Philox at the element's global index.
struct Uniform {
  float lo = 0.f;
  float hi = 1.f;
  std::uint64_t seed = 0;
  [[nodiscard]] float operator()(std::uint64_t index) const noexcept {
    const double u = static_cast<double>(random_words(seed, 1, index)[0] >> 8) * 0x1p-24;
    const auto v = static_cast<float>(lo + (hi - lo) * u);
    return lo < hi && v >= hi ? std::nextafter(hi, lo) : v;  // rounding to float can reach hi
  }
};

//! Every element equal to `value`.
struct Constant {
  float value = 0.f;
  [[nodiscard]] float operator()(std::uint64_t) const noexcept { return value; }
};

[[nodiscard]] inline Normal normal(float std, std::uint64_t seed, float mean = 0.f) { return {mean, std, seed}; }
[[nodiscard]] inline Uniform uniform(float lo, float hi, std::uint64_t seed) { return {lo, hi, seed}; }
[[nodiscard]] inline Constant constant(float value) { return {value}; }

//! Where a local tensor sits inside its global (unsharded) tensor: split along `dim` at `offset`.
struct Slice {
  Shape global;
  int dim = 0;
  std::int64_t offset = 0;
};

//! Fills `local` with `init` as if it were the slice `where` of the global tensor: element (i0..ik) of
//! the shard gets the value of global element (i0..i_dim + offset..ik). Works for any memory space.
template <class Init, FloatElement T, MemorySpace Space>
void fill(View<T, Space> local, const Init& init, const Slice& where) {
  const Shape& l = local.shape();
  const Shape& g = where.global;
  bool fits = l.rank() == g.rank() && (g.rank() == 0 || (where.dim >= 0 && where.dim < g.rank()));
  for (int i = 0; fits && i < l.rank(); ++i)
    fits = i == where.dim ? where.offset >= 0 && where.offset + l[i] <= g[i] : l[i] == g[i];
  if (!fits)
    throw Error(fmt::format("init::fill: local shape {} at offset {} of dimension {} does not fit global shape {}", l,
                            where.offset, where.dim, g));
  std::vector<T> host(static_cast<std::size_t>(local.numel()));
  // Local rows are contiguous runs of the global tensor: walk the outer index, add the inner run.
  const std::int64_t inner = g.rank() == 0 ? 1 : l.stride(where.dim) * l[where.dim];
  const std::int64_t ginner = g.rank() == 0 ? 1 : g.stride(where.dim) * g[where.dim];
  const std::int64_t shift = g.rank() == 0 ? 0 : where.offset * g.stride(where.dim);
  for (std::int64_t o = 0, n = 0; n < local.numel(); ++o)
    for (std::int64_t i = 0; i < inner; ++i, ++n)
      host[static_cast<std::size_t>(n)] = T(init(static_cast<std::uint64_t>(o * ginner + shift + i)));
  if (!host.empty()) Space::upload(local.data(), host.data(), local.bytes());
}

//! Fills a whole (unsharded) tensor.
template <class Init, FloatElement T, MemorySpace Space>
void fill(View<T, Space> local, const Init& init) {
  fill(local, init, Slice{local.shape(), 0, 0});
}

}  // namespace parallax::init

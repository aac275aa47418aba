// parallax/core/rng.hpp — Philox4x32-10, a counter-based generator: the value at a counter needs no state.
#pragma once

#include <array>
#include <cstdint>

#include "../config.hpp"

namespace parallax {

//! Philox4x32 with 10 rounds (Salmon et al., SC'11). `philox(counter, key)` is a pure function, so
//! element i of a tensor can be drawn on any rank, host or device, without generating elements 0..i-1.
struct Philox4x32 {
  using counter_type = std::array<std::uint32_t, 4>;
  using key_type = std::array<std::uint32_t, 2>;

  PARALLAX_HOST_DEVICE static constexpr counter_type generate(counter_type c, key_type k) noexcept {
    for (int r = 0; r < 10; ++r) {
      c = round(c, k);
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
    return c;
  }

 private:
  PARALLAX_HOST_DEVICE static constexpr counter_type round(counter_type c, key_type k) noexcept {
    const std::uint64_t p0 = std::uint64_t{0xD2511F53u} * c[0];
    const std::uint64_t p1 = std::uint64_t{0xCD9E8D57u} * c[2];
    const auto hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const auto hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    return {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
  }
};

//! Four random 32-bit words for (seed, stream, index): the building block of every initialiser.
PARALLAX_HOST_DEVICE constexpr Philox4x32::counter_type random_words(std::uint64_t seed, std::uint64_t stream,
                                                                     std::uint64_t index) noexcept {
  return Philox4x32::generate({static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                               static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)},
                              {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
}

}  // namespace parallax

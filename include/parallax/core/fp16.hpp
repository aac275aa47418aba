// parallax/core/fp16.hpp — parallax::fp16, the IEEE 754 binary16 storage type, host and device.
#pragma once

#include <cstdint>

#include <parallax/config.hpp>
#include <parallax/core/detail/float_bits.hpp>

namespace parallax {

//! An IEEE 754 binary16 value: 1 sign, 5 exponent and 10 mantissa bits (max finite 65504).
//!
//! Trivially copyable and 2 bytes. Conversion from float rounds to nearest, ties to even, including
//! into the subnormal range (below 2^-14); values of magnitude 65520 and above become Inf; NaN stays
//! a (quiet) NaN with its sign. It converts implicitly and exactly to float, so arithmetic and
//! comparisons happen in float; there is no bitwise `operator==` (compare `.bits` for that).
//!
//! @code
//! parallax::fp16 h(0.1f);          // rounds to 0.0999755859375
//! float y = h * 2.0f;              // computes in float
//! auto inf = parallax::fp16::from_bits(0x7c00);
//! @endcode
struct fp16 {
  std::uint16_t bits;  // raw bit pattern

  fp16() = default;

  //! Rounds `f` to the nearest fp16, ties to even.
  PARALLAX_HOST_DEVICE constexpr explicit fp16(float f) noexcept : bits(round(detail::float_to_bits(f))) {}

  //! The fp16 with bit pattern `b`.
  PARALLAX_HOST_DEVICE static constexpr fp16 from_bits(std::uint16_t b) noexcept {
    fp16 h{};
    h.bits = b;
    return h;
  }

  //! The exact float value.
  PARALLAX_HOST_DEVICE constexpr operator float() const noexcept {
    const std::uint32_t sign = std::uint32_t{bits & 0x8000u} << 16;
    const std::uint32_t exp = (bits >> 10) & 0x1fu, man = bits & 0x3ffu;
    if (exp == 0x1f) return detail::bits_to_float(sign | 0x7f800000u | (man << 13));  // Inf, NaN
    if (exp == 0) {  // zero or subnormal: man * 2^-24 is exact in float
      return detail::bits_to_float(sign | detail::float_to_bits(static_cast<float>(man) * 0x1p-24f));
    }
    return detail::bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));  // rebias 15 -> 127
  }

 private:
  PARALLAX_HOST_DEVICE static constexpr std::uint16_t round(std::uint32_t u) noexcept {
    const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
    if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 (and Inf)
    if (a >= 0x38800000u) {  // normal half: rebias 127 -> 15, round the 13 dropped bits half to even
      const std::uint32_t r = a - (112u << 23);
      return static_cast<std::uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
    }
    if (a <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (2^-25 is a tie, zero is even)
    // Subnormal half: value / 2^-24 = man24 >> shift; a carry out reaches 0x400, the smallest normal.
    const std::uint32_t man = (a & 0x7fffffu) | 0x800000u, shift = 126u - (a >> 23);  // shift in 14..24
    const std::uint32_t q = man >> shift, rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    return static_cast<std::uint16_t>(sign | (q + (rem > half || (rem == half && (q & 1u)))));
  }
};

//! The exact float value of `h`.
PARALLAX_HOST_DEVICE constexpr float to_float(fp16 h) noexcept { return static_cast<float>(h); }

}  // namespace parallax

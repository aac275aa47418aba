// parallax/core/bf16.hpp — parallax::bf16, the bfloat16 storage type (float's top 16 bits), host and device.
#pragma once

#include <cstdint>

#include <parallax/config.hpp>
#include <parallax/core/detail/float_bits.hpp>

namespace parallax {

//! A bfloat16 value: 1 sign, 8 exponent and 7 mantissa bits, i.e. the upper half of a float.
//!
//! Trivially copyable and 2 bytes, so buffers of it can be copied and sent as raw memory. Conversion from
//! float rounds to nearest, ties to even; NaN stays a (quiet) NaN with its sign, overflow becomes Inf.
//! It converts implicitly to float, so arithmetic and comparisons happen in float; there is no
//! bitwise `operator==` (compare `.bits` for that).
//!
//! @code
//! parallax::bf16 w(0.1f);          // rounds to 0.10009765625
//! float y = w * 2.0f;              // computes in float
//! auto one = parallax::bf16::from_bits(0x3f80);
//! @endcode
struct bf16 {
  std::uint16_t bits;  // raw bit pattern

  bf16() = default;

  //! Rounds `f` to the nearest bf16, ties to even.
  PARALLAX_HOST_DEVICE constexpr explicit bf16(float f) noexcept : bits(round(detail::float_to_bits(f))) {}

  //! The bf16 with bit pattern `b`.
  PARALLAX_HOST_DEVICE static constexpr bf16 from_bits(std::uint16_t b) noexcept {
    bf16 h{};
    h.bits = b;
    return h;
  }

  //! The exact float value.
  PARALLAX_HOST_DEVICE constexpr operator float() const noexcept {
    return detail::bits_to_float(std::uint32_t{bits} << 16);
  }

 private:
  PARALLAX_HOST_DEVICE static constexpr std::uint16_t round(std::uint32_t u) noexcept {
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    // Adding 0x7fff plus the kept lsb rounds half to even; a carry into the exponent yields Inf correctly.
    return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
};

//! The exact float value of `h`.
PARALLAX_HOST_DEVICE constexpr float to_float(bf16 h) noexcept { return static_cast<float>(h); }

}  // namespace parallax

// parallax/core/detail/float_bits.hpp — bit casts between float and its 32-bit pattern, on host and device.
#pragma once

#include <cstdint>

#include <parallax/config.hpp>

namespace parallax::detail {

// __builtin_bit_cast is constexpr in g++, clang, MSVC and nvcc (host and device), unlike std::bit_cast on device.
PARALLAX_HOST_DEVICE constexpr std::uint32_t float_to_bits(float f) noexcept {
  return __builtin_bit_cast(std::uint32_t, f);
}

PARALLAX_HOST_DEVICE constexpr float bits_to_float(std::uint32_t u) noexcept { return __builtin_bit_cast(float, u); }

}  // namespace parallax::detail

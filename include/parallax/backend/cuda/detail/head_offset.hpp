// parallax/backend/cuda/detail/head_offset.hpp — where a row of a packed [T, B, S * H * Dh] activation lands in the
// head-major [B, H, T, Dh] operands (host and device, so host tests check the index math the layout kernels use).
#pragma once

#include <cstdint>

#include "../../../config.hpp"

namespace parallax::cuda::detail {

//! The sizes of a layout copy: heads [B, H, T, Dh] per section, packed [T, B, sections * H * Dh].
struct HeadDims {
  std::int64_t nb, nh, nt, dh, sections;
};

//! Where unit `u` of the packed operand goes, when each row of Dh elements is `units` units (16-byte chunks, or
//! single elements): its section s (q, k, v; or 0) and its unit offset in that section's head-major operand.
//! Packed row r = ((t * B + b) * S + s) * H + h holds head h of section s of token (t, b); it is row
//! (b * H + h) * T + t of the head-major operand. `Index` is 32-bit where every offset fits, which keeps the
//! divisions cheap.
template <class Index>
PARALLAX_HOST_DEVICE inline Index head_unit_offset(Index u, Index units, const HeadDims& d, int& section) {
  const auto nh = static_cast<Index>(d.nh), nb = static_cast<Index>(d.nb), nt = static_cast<Index>(d.nt);
  const auto sections = static_cast<Index>(d.sections);
  const Index row = u / units, j = u - row * units;
  const Index h = row % nh;
  Index q = row / nh;
  section = static_cast<int>(q % sections);
  q /= sections;
  const Index b = q % nb, t = q / nb;
  return ((b * nh + h) * nt + t) * units + j;
}

}  // namespace parallax::cuda::detail

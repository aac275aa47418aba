// parallax/mesh/axis.hpp — the axes of a device mesh (no communicator needed to name one).
#pragma once

#include <string_view>

namespace parallax {

//! The axes of a mesh: data, pipeline, tensor and context parallel.
enum class Axis : int { dp, pp, tp, cp };

//! "dp", "pp", "tp" or "cp".
[[nodiscard]] constexpr std::string_view name(Axis a) noexcept {
  return a == Axis::dp ? "dp" : a == Axis::pp ? "pp" : a == Axis::tp ? "tp" : "cp";
}

}  // namespace parallax

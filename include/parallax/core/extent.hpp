// parallax/core/extent.hpp — `dynamic`: an extent known only at run time (like std::dynamic_extent).
#pragma once

namespace parallax {

//! Marks a template extent whose value is resolved at run time, e.g. `DeviceMesh<2, dynamic, 4>`.
inline constexpr int dynamic = -1;

}  // namespace parallax

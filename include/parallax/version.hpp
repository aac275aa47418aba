// parallax/version.hpp — the library version; CMake parses it from here.
#pragma once

#define PARALLAX_VERSION_MAJOR 0
#define PARALLAX_VERSION_MINOR 1
#define PARALLAX_VERSION_PATCH 0

namespace parallax {
//! The library version as MAJOR * 10000 + MINOR * 100 + PATCH.
inline constexpr int version = PARALLAX_VERSION_MAJOR * 10000 + PARALLAX_VERSION_MINOR * 100 + PARALLAX_VERSION_PATCH;
}  // namespace parallax

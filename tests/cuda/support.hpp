// tests/cuda/support.hpp — what the [gpu] test files share: whether a GPU is there, type names, and comparisons of
// device results with the host backend's.
#pragma once

#include <catch2/catch.hpp>

#include <parallax/backend/cuda/backend.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../support/compare.hpp"
#include "../support/support.hpp"

namespace parallax::test::gpu {

//! Whether a CUDA device is usable here ([gpu] tests skip, saying so, where not).
inline bool gpu_available() { return cuda::Backend::device_count() > 0; }

//! "fp32", "bf16" or "fp16".
template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "fp32" : std::is_same_v<T, bf16> ? "bf16" : "fp16";
}

// The comparisons are shared with the emulated kernels' tests (tests/support/compare.hpp).
using parallax::test::bit_differences;
using parallax::test::check_close;

}  // namespace parallax::test::gpu

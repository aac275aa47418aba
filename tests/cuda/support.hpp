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

#include "../support/support.hpp"

namespace parallax::test::gpu {

//! Whether a CUDA device is usable here ([gpu] tests skip, saying so, where not).
inline bool gpu_available() { return cuda::Backend::device_count() > 0; }

//! "fp32", "bf16" or "fp16".
template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "fp32" : std::is_same_v<T, bf16> ? "bf16" : "fp16";
}

//! Checks max |got - want| <= rel * max |want| + 1e-6 element by element (1e-6 absolute for an all-zero reference);
//! NaN fails. Reports the worst error and the scale.
template <class T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, double rel, const std::string& what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  double scale = 0, worst = 0;
  for (const T& w : want) scale = std::max(scale, std::fabs(double(float(w))));
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(float(got[i])) - double(float(want[i])));
    if (!(err <= rel * scale + 1e-6)) ++bad;
    if (!(err <= worst)) worst = err;
  }
  INFO("worst |got - want| " << worst << " against max |want| " << scale << " (rtol " << rel << ")");
  CHECK(bad == 0);
}

//! How many elements of `a` and `b` differ in their bits (-1 for different sizes).
template <class T>
std::int64_t bit_differences(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return -1;
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < a.size(); ++i) bad += bits_of(a[i]) != bits_of(b[i]);
  return bad;
}

}  // namespace parallax::test::gpu

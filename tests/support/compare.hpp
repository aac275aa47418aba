// tests/support/compare.hpp — test data and comparisons of one backend's results with another's (host-side only):
// shared by the [gpu] tests (tests/cuda) and the emulated kernels' tests (tests/cuda_emulated).
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <parallax/core/bf16.hpp>

#include "gradcheck.hpp"
#include "support.hpp"

namespace parallax::test {

//! Deterministic values in [-scale, scale) stored as T.
template <class T>
std::vector<T> values(std::int64_t n, std::uint64_t seed, float scale = 1.f) {
  std::vector<T> out;
  for (float v : random_values(n, seed, scale)) out.push_back(T(v));
  return out;
}

//! Multiples of 1/4 in [-2, 2]: any fp32 sum of fewer than 2^21 of them is exact, in any order.
template <class T>
std::vector<T> quarters(std::int64_t n, std::uint64_t seed) {
  std::vector<T> out;
  for (float v : random_values(n, seed, 2.f)) out.push_back(T(std::round(v * 4.f) / 4.f));
  return out;
}

//! Relative tolerance of a kernel's result against the host's: fp32 math in another order, stored as T.
template <class T>
constexpr double rtol = std::is_same_v<T, float> ? 1e-5 : 1e-2;

//! Relative tolerances of the tensor-core attention (out, dq, dk, dv; P rounded to T before P V) and of any
//! attention kernel's log-sum-exp against the host's.
template <class T>
constexpr double flash_rtol = std::is_same_v<T, bf16> ? 2e-2 : 5e-3;
constexpr double lse_rtol = 1e-4;

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

//! check_close with the tolerance of T (`rtol<T>`).
template <class T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  check_close(got, want, rtol<T>, what);
}

//! How many elements of `a` and `b` differ in their bits (-1 for different sizes).
template <class T>
std::int64_t bit_differences(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return -1;
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < a.size(); ++i) bad += bits_of(a[i]) != bits_of(b[i]);
  return bad;
}

}  // namespace parallax::test

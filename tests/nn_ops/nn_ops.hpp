// tests/nn_ops/nn_ops.hpp — helpers shared by the tests of the attention core, embedding and cross-entropy modules.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/core/view.hpp>

namespace parallax::test {

using HostBackend = host::Backend;
template <class T>
using HostView = View<const T, host::Memory>;

//! Runs fn(rank) on one host rank thread (assert on the main thread afterwards).
template <class F>
void on_one_rank(F&& fn) {
  launch<HostBackend>(1, [&](Rank<HostBackend>& rank) { fn(rank); });
}

//! The values rounded to storage type T.
template <class T>
std::vector<T> stored(const std::vector<float>& x) {
  std::vector<T> out;
  for (float v : x) out.push_back(T(v));
  return out;
}

//! The values rounded through storage type T (what a T run sees), as floats.
template <class T>
std::vector<float> rounded(const std::vector<float>& x) {
  std::vector<float> out;
  for (float v : x) out.push_back(float(T(v)));
  return out;
}

//! A view's elements as floats.
template <class T>
std::vector<float> floats(View<const T, host::Memory> v) {
  std::vector<float> out;
  for (std::int64_t i = 0; i < v.numel(); ++i) out.push_back(float(v.data()[i]));
  return out;
}

//! max |a - b| / max |b|: how far `a` (e.g. a bf16 run) is from `b` (the fp32 run), relative to b's scale.
inline double relative_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace parallax::test

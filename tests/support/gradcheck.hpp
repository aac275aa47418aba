// tests/support/gradcheck.hpp — finite-difference gradient checks for modules on the host backend (fp32).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <parallax/backend/host/backend.hpp>
#include <parallax/core/rng.hpp>
#include <parallax/nn/module.hpp>

namespace parallax::test {

//! The worst disagreement between an analytic gradient and central differences.
struct GradError {
  std::string what;
  double worst_excess = 0;  // max over checked points of |a - n| - (atol + rtol |n|); <= 0 means all agree
  std::int64_t worst_index = -1;
  double analytic = 0, numeric = 0;
  [[nodiscard]] bool ok() const { return worst_excess <= 0; }
  [[nodiscard]] std::string str() const {
    return fmt::format("{}: worst at {}: analytic {} numeric {} (excess {})", what, worst_index, analytic, numeric,
                       worst_excess);
  }
};

struct GradCheckOptions {
  float eps = 1e-2f;
  double rtol = 2e-2, atol = 2e-3;
  int max_points = 40;  // checked elements per tensor (all when fewer)
};

//! Up to `max_points` indices of [0, n), spread evenly and always including the first and last.
inline std::vector<std::int64_t> sample_points(std::int64_t n, int max_points) {
  std::vector<std::int64_t> at;
  if (n <= max_points) {
    for (std::int64_t i = 0; i < n; ++i) at.push_back(i);
    return at;
  }
  for (int k = 0; k < max_points; ++k) at.push_back(k * (n - 1) / (max_points - 1));
  return at;
}

//! Central differences of `loss()` with respect to values[i] for i in `at`.
template <class F>
std::vector<double> numeric_grad(F&& loss, float* values, const std::vector<std::int64_t>& at, float eps) {
  std::vector<double> g;
  for (std::int64_t i : at) {
    const float v = values[i];
    values[i] = v + eps;
    const double up = loss();
    values[i] = v - eps;
    const double down = loss();
    values[i] = v;
    g.push_back((up - down) / (2.0 * static_cast<double>(eps)));
  }
  return g;
}

//! Compares analytic[at[k]] with numeric[k].
inline GradError compare(std::string what, std::span<const float> analytic, const std::vector<double>& numeric,
                         const std::vector<std::int64_t>& at, const GradCheckOptions& o) {
  GradError e{std::move(what), -1e300};
  for (std::size_t k = 0; k < at.size(); ++k) {
    const double a = analytic[static_cast<std::size_t>(at[k])], n = numeric[k];
    const double excess = std::abs(a - n) - (o.atol + o.rtol * std::abs(n));
    if (excess > e.worst_excess) e = GradError{e.what, excess, at[k], a, n};
  }
  if (at.empty()) e.worst_excess = 0;
  return e;
}

//! Deterministic values in [-1, 1).
inline std::vector<float> random_values(std::int64_t n, std::uint64_t seed, float scale = 1.f) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    v[static_cast<std::size_t>(i)] =
        scale * (static_cast<float>(random_words(seed, 7, static_cast<std::uint64_t>(i))[0] >> 8) * 0x1p-23f - 1.f);
  return v;
}

//! Checks an fp32 `Layer` on the host backend against central differences of loss = sum(w * y), w fixed
//! random: dx from backward_input and every parameter's gradient from backward_weight.
template <nn::Layer M>
std::vector<GradError> gradcheck(M& m, std::vector<float> x, Shape xs,
                                 const GradCheckOptions& o = {}) {
  using T = typename M::value_type;
  static_assert(std::is_same_v<T, float>, "gradcheck runs in fp32");
  using V = View<const float, host::Memory>;
  std::vector<float> w;
  auto loss = [&] {
    typename M::Ctx c;
    auto y = m.forward(c, V(x.data(), xs));
    if (w.empty()) w = random_values(y.numel(), 99);
    double s = 0;
    for (std::int64_t i = 0; i < y.numel(); ++i) s += double(y.data()[i]) * double(w[static_cast<std::size_t>(i)]);
    return s;
  };
  (void)loss();  // sizes w
  for (auto* p : m.parameters()) p->zero_grad();
  typename M::Ctx c;
  auto y = m.forward(c, V(x.data(), xs));
  auto dx = m.backward_input(c, V(w.data(), y.shape()));
  m.backward_weight(c);
  std::vector<GradError> out;
  const auto at_x = sample_points(static_cast<std::int64_t>(x.size()), o.max_points);
  out.push_back(compare(m.name() + std::string(" dx"), std::span<const float>(dx.data(), x.size()),
                        numeric_grad(loss, x.data(), at_x, o.eps), at_x, o));
  for (auto* p : m.parameters()) {
    const auto at = sample_points(p->numel(), o.max_points);
    const std::vector<float> g(p->grad().data(), p->grad().data() + p->numel());
    out.push_back(compare(p->name(), g, numeric_grad(loss, p->value().data(), at, o.eps), at, o));
  }
  return out;
}

}  // namespace parallax::test

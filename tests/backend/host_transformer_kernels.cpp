// Tests for parallax/backend/host/{layernorm,activation,attention,cross_entropy,embedding}.hpp: the host transformer
// kernels against double-precision references (forwards) and central finite differences of them (backwards).
#include <parallax/backend/concept.hpp>
#include <parallax/backend/host/backend.hpp>

#include <catch2/catch.hpp>

#include "../support/support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace px = parallax;
using px::bf16;
using px::Error;
using px::fp16;
using px::Shape;
using Backend = px::host::Backend;
using Mem = px::host::Memory;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
template <class T>
using V = px::View<T, Mem>;
template <class T>
using CV = px::View<const T, Mem>;
using vd = std::vector<double>;
using i32 = std::int32_t;
using i64 = std::int64_t;

static_assert(px::Backend<Backend>);

using parallax::test::error_of;

namespace {

const px::host::Context ctx;

// ---- data --------------------------------------------------------------------------------------------------------

// n normal samples with a fixed seed.
vd randn(i64 n, unsigned seed, double stddev = 1.0, double mean = 0.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(mean, stddev);
  vd x(static_cast<std::size_t>(n));
  for (double& v : x) v = dist(gen);
  return x;
}

// The values rounded to storage type T.
template <class T>
std::vector<T> store(const vd& x) {
  std::vector<T> out;
  for (double v : x) out.push_back(T(static_cast<float>(v)));
  return out;
}

// Values back in double (exactly what a kernel reads).
template <class T>
vd widen(const std::vector<T>& x) {
  vd out;
  for (T v : x) out.push_back(static_cast<double>(static_cast<float>(v)));
  return out;
}

// x rounded through T: the inputs as the kernel sees them, for the double reference.
template <class T>
vd rounded(const vd& x) {
  return widen(store<T>(x));
}

using parallax::test::cview;
using parallax::test::view;

// ---- comparison --------------------------------------------------------------------------------------------------

// Relative tolerance per storage type: fp32 is checked tightly, 16-bit storage within 1e-2.
template <class T>
constexpr double tol = std::is_same_v<T, float> ? 2e-5 : 1e-2;

double max_abs(const vd& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::abs(v));
  return m;
}

// Every |got - want| <= rtol * (|want| + max|want|): relative, with an absolute floor at the data's scale.
template <class T>
void check_close(const std::vector<T>& got, const vd& want, double rtol, const std::string& what) {
  REQUIRE(got.size() == want.size());
  const double floor = max_abs(want);
  std::size_t worst = 0;
  double worst_ratio = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(static_cast<float>(got[i]));
    const double r = std::abs(g - want[i]) / (rtol * (std::abs(want[i]) + floor) + 1e-300);
    if (!(r <= worst_ratio)) {  // NaN counts as worst
      worst_ratio = r;
      worst = i;
    }
  }
  INFO(what << ": worst element " << worst << " is " << static_cast<float>(got[worst]) << ", expected " << want[worst]
            << " (error " << worst_ratio << " x tolerance " << rtol << ")");
  CHECK(worst_ratio <= 1.0);
}

// Central differences of the scalar f at x: (f(x + h e_i) - f(x - h e_i)) / 2h, in double.
vd numeric_grad(const std::function<double(const vd&)>& f, vd x, double h = 1e-5) {
  vd g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

double dot(const vd& a, const vd& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---- double references -------------------------------------------------------------------------------------------

struct LayerNormRef {
  vd y, mean, rstd;
};
LayerNormRef ref_layernorm(const vd& x, const vd& gamma, const vd& beta, double eps, i64 n, i64 d) {
  LayerNormRef r{vd(x.size()), vd(static_cast<std::size_t>(n)), vd(static_cast<std::size_t>(n))};
  for (i64 i = 0; i < n; ++i) {
    double mu = 0, var = 0;
    for (i64 j = 0; j < d; ++j) mu += x[i * d + j] / d;
    for (i64 j = 0; j < d; ++j) var += (x[i * d + j] - mu) * (x[i * d + j] - mu) / d;
    const double rs = 1 / std::sqrt(var + eps);
    for (i64 j = 0; j < d; ++j) r.y[i * d + j] = (x[i * d + j] - mu) * rs * gamma[j] + beta[j];
    r.mean[i] = mu, r.rstd[i] = rs;
  }
  return r;
}

double ref_gelu(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
}

struct AttentionRef {
  vd out, lse;
};
// Causal attention over bh = B * H independent heads of [t, dh].
AttentionRef ref_attention(const vd& q, const vd& k, const vd& v, i64 bh, i64 t, i64 dh, double scale) {
  AttentionRef r{vd(q.size()), vd(static_cast<std::size_t>(bh * t))};
  vd s(static_cast<std::size_t>(t));
  for (i64 h = 0; h < bh; ++h)
    for (i64 i = 0; i < t; ++i) {
      const double* qi = &q[(h * t + i) * dh];
      double m = -INFINITY, l = 0;
      for (i64 j = 0; j <= i; ++j) {
        s[j] = 0;
        for (i64 c = 0; c < dh; ++c) s[j] += scale * qi[c] * k[(h * t + j) * dh + c];
        m = std::max(m, s[j]);
      }
      for (i64 j = 0; j <= i; ++j) l += std::exp(s[j] - m);
      for (i64 j = 0; j <= i; ++j)
        for (i64 c = 0; c < dh; ++c) r.out[(h * t + i) * dh + c] += std::exp(s[j] - m) / l * v[(h * t + j) * dh + c];
      r.lse[h * t + i] = m + std::log(l);
    }
  return r;
}

struct CrossEntropyRef {
  vd losses, lse;
  i64 valid = 0;
};
CrossEntropyRef ref_cross_entropy(const vd& z, const std::vector<i32>& y, i32 ignore, i64 n, i64 v) {
  CrossEntropyRef r{vd(static_cast<std::size_t>(n)), vd(static_cast<std::size_t>(n))};
  for (i64 i = 0; i < n; ++i) {
    double m = -INFINITY, l = 0;
    for (i64 j = 0; j < v; ++j) m = std::max(m, z[i * v + j]);
    for (i64 j = 0; j < v; ++j) l += std::exp(z[i * v + j] - m);
    r.lse[i] = m + std::log(l);
    r.losses[i] = y[i] == ignore ? 0 : r.lse[i] - z[i * v + y[i]];
    r.valid += y[i] != ignore;
  }
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("layernorm forward matches a double reference", "[host][kernels][layernorm]", float, bf16, fp16) {
  using T = TestType;
  const i64 n = 5, d = 12;
  const float eps = 1e-5f;
  auto x = store<T>(randn(n * d, 1, 2.0, 0.5)), gamma = store<T>(randn(d, 2, 0.5, 1.0)), beta = store<T>(randn(d, 3));
  std::vector<T> y(x.size());
  std::vector<float> mean(n), rstd(n);
  Backend::layernorm_forward(ctx, view(x, {n, d}), view(gamma, {d}), view(beta, {d}), eps, view(y, {n, d}),
                             view(mean, {n}), view(rstd, {n}));
  const auto ref = ref_layernorm(widen(x), widen(gamma), widen(beta), eps, n, d);
  check_close(y, ref.y, tol<T>, "y");
  check_close(mean, ref.mean, 1e-5, "mean");
  check_close(rstd, ref.rstd, 1e-5, "rstd");
}

TEMPLATE_TEST_CASE("layernorm backward matches finite differences", "[host][kernels][layernorm]", float, bf16, fp16) {
  using T = TestType;
  const i64 n = 4, d = 10;
  const double eps = 1e-5;
  const vd x = rounded<T>(randn(n * d, 11, 1.5, -0.3)), gamma = rounded<T>(randn(d, 12, 0.5, 1.0)),
           beta = rounded<T>(randn(d, 13)), w = rounded<T>(randn(n * d, 14));
  // L = sum(w * y): dy = w.
  const auto loss = [&](const vd& xx, const vd& gg, const vd& bb) { return dot(w, ref_layernorm(xx, gg, bb, eps, n, d).y); };
  const vd dx_ref = numeric_grad([&](const vd& a) { return loss(a, gamma, beta); }, x);
  const vd dg_ref = numeric_grad([&](const vd& a) { return loss(x, a, beta); }, gamma);
  const vd db_ref = numeric_grad([&](const vd& a) { return loss(x, gamma, a); }, beta);

  auto xs = store<T>(x), gs = store<T>(gamma), bs = store<T>(beta), dy = store<T>(w);
  std::vector<T> y(xs.size()), dx(xs.size(), T(9.f));  // dx is overwritten
  std::vector<float> mean(n), rstd(n), dgamma(d, 1.f), dbeta(d, -1.f);  // fp32 parameter grads accumulate
  Backend::layernorm_forward(ctx, view(xs, {n, d}), view(gs, {d}), view(bs, {d}), float(eps), view(y, {n, d}),
                             view(mean, {n}), view(rstd, {n}));
  Backend::layernorm_backward(ctx, view(dy, {n, d}), view(xs, {n, d}), view(gs, {d}), view(mean, {n}), view(rstd, {n}),
                              view(dx, {n, d}), view(dgamma, {d}), view(dbeta, {d}));
  check_close(dx, dx_ref, tol<T>, "dx");
  vd dg_acc = dg_ref, db_acc = db_ref;
  for (auto& g : dg_acc) g += 1;
  for (auto& b : db_acc) b -= 1;
  check_close(dgamma, dg_acc, tol<T>, "dgamma (accumulated onto 1)");
  check_close(dbeta, db_acc, tol<T>, "dbeta (accumulated onto -1)");

  SECTION("parameter gradients in the storage type accumulate too") {
    std::vector<T> dg2(d, T(0.f)), db2(d, T(0.f));
    for (int rep = 0; rep < 2; ++rep)
      Backend::layernorm_backward(ctx, view(dy, {n, d}), view(xs, {n, d}), view(gs, {d}), view(mean, {n}),
                                  view(rstd, {n}), view(dx, {n, d}), view(dg2, {d}), view(db2, {d}));
    vd dg_twice = dg_ref, db_twice = db_ref;
    for (auto& g : dg_twice) g *= 2;
    for (auto& b : db_twice) b *= 2;
    check_close(dg2, dg_twice, tol<T>, "dgamma twice");
    check_close(db2, db_twice, tol<T>, "dbeta twice");
  }
  SECTION("{} skips an output: backward_input and backward_weight") {
    std::vector<T> dx2(xs.size());
    Backend::layernorm_backward<T, float>(ctx, view(dy, {n, d}), view(xs, {n, d}), view(gs, {d}), view(mean, {n}),
                                          view(rstd, {n}), view(dx2, {n, d}), {}, {});
    CHECK(widen(dx2) == widen(dx));
    std::vector<float> dg3(d), db3(d);
    Backend::layernorm_backward<T>(ctx, view(dy, {n, d}), view(xs, {n, d}), view(gs, {d}), view(mean, {n}),
                                   view(rstd, {n}), {}, view(dg3, {d}), view(db3, {d}));
    check_close(dg3, dg_ref, tol<T>, "dgamma alone");
    check_close(db3, db_ref, tol<T>, "dbeta alone");
  }
}

// ---------------------------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("gelu forward and backward match the tanh formula and finite differences",
                   "[host][kernels][gelu]", float, bf16, fp16) {
  using T = TestType;
  const i64 n = 64;
  vd x = rounded<T>(randn(n, 21, 2.5));
  x[0] = 0, x[1] = -12, x[2] = 12;  // saturation on both sides
  const vd w = rounded<T>(randn(n, 22));
  vd y_ref(x.size());
  std::transform(x.begin(), x.end(), y_ref.begin(), ref_gelu);
  const vd dx_ref = numeric_grad(
      [&](const vd& a) {
        double s = 0;
        for (std::size_t i = 0; i < a.size(); ++i) s += w[i] * ref_gelu(a[i]);
        return s;
      },
      x);

  auto xs = store<T>(x), dy = store<T>(w);
  std::vector<T> y(xs.size()), dx(xs.size());
  Backend::gelu_forward(ctx, view(xs, {8, 8}), view(y, {8, 8}));
  Backend::gelu_backward(ctx, view(xs, {8, 8}), view(dy, {8, 8}), view(dx, {8, 8}));
  check_close(y, y_ref, tol<T>, "y");
  check_close(dx, dx_ref, tol<T>, "dx");
  CHECK(float(y[2]) == 12.f);
  CHECK(float(y[1]) == Approx(0).margin(1e-12));
}

// ---------------------------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("attention forward matches a double reference", "[host][kernels][attention]", float, bf16, fp16) {
  using T = TestType;
  const i64 b = 2, h = 3, t = 7, dh = 4;
  const Shape s{b, h, t, dh};
  const double scale = 1 / std::sqrt(double(dh));
  auto q = store<T>(randn(s.numel(), 31, 1.5)), k = store<T>(randn(s.numel(), 32, 1.5)), v = store<T>(randn(s.numel(), 33));
  std::vector<T> out(q.size());
  std::vector<float> lse(b * h * t);
  Backend::attention_forward(ctx, view(q, s), view(k, s), view(v, s), view(out, s), view(lse, {b, h, t}), float(scale));
  const auto ref = ref_attention(widen(q), widen(k), widen(v), b * h, t, dh, scale);
  check_close(out, ref.out, tol<T>, "out");
  check_close(lse, ref.lse, 1e-5, "lse");

  SECTION("large scores are stable") {
    Backend::attention_forward(ctx, view(q, s), view(k, s), view(v, s), view(out, s), view(lse, {b, h, t}), 300.f);
    const auto big = ref_attention(widen(q), widen(k), widen(v), b * h, t, dh, 300.0);
    check_close(out, big.out, tol<T>, "out at scale 300");
    check_close(lse, big.lse, 1e-5, "lse at scale 300");
  }
}

TEMPLATE_TEST_CASE("attention backward matches finite differences", "[host][kernels][attention]", float, bf16, fp16) {
  using T = TestType;
  const i64 b = 2, h = 2, t = 5, dh = 3;
  const Shape s{b, h, t, dh};
  const double scale = 0.7;
  const vd q = rounded<T>(randn(s.numel(), 41)), k = rounded<T>(randn(s.numel(), 42)), v = rounded<T>(randn(s.numel(), 43)),
           w = rounded<T>(randn(s.numel(), 44));
  const auto loss = [&](const vd& qq, const vd& kk, const vd& vv) { return dot(w, ref_attention(qq, kk, vv, b * h, t, dh, scale).out); };
  const vd dq_ref = numeric_grad([&](const vd& a) { return loss(a, k, v); }, q);
  const vd dk_ref = numeric_grad([&](const vd& a) { return loss(q, a, v); }, k);
  const vd dv_ref = numeric_grad([&](const vd& a) { return loss(q, k, a); }, v);

  auto qs = store<T>(q), ks = store<T>(k), vs = store<T>(v), dout = store<T>(w);
  std::vector<T> out(qs.size()), dq(qs.size(), T(5.f)), dk(qs.size(), T(5.f)), dv(qs.size(), T(5.f));
  std::vector<float> lse(b * h * t);
  Backend::attention_forward(ctx, view(qs, s), view(ks, s), view(vs, s), view(out, s), view(lse, {b, h, t}), float(scale));
  Backend::attention_backward(ctx, view(qs, s), view(ks, s), view(vs, s), view(out, s), view(dout, s), view(lse, {b, h, t}),
                              float(scale), view(dq, s), view(dk, s), view(dv, s));
  check_close(dq, dq_ref, tol<T>, "dq");
  check_close(dk, dk_ref, tol<T>, "dk");
  check_close(dv, dv_ref, tol<T>, "dv");
}

TEST_CASE("attention is causal: future keys and values do not change earlier rows", "[host][kernels][attention]") {
  const i64 b = 1, h = 2, t = 6, dh = 4, t0 = 2;
  const Shape s{b, h, t, dh};
  auto q = store<float>(randn(s.numel(), 51)), k = store<float>(randn(s.numel(), 52)), v = store<float>(randn(s.numel(), 53));
  std::vector<float> out1(q.size()), out2(q.size()), lse1(h * t), lse2(h * t);
  Backend::attention_forward(ctx, view(q, s), view(k, s), view(v, s), view(out1, s), view(lse1, {b, h, t}), 0.5f);
  for (i64 hh = 0; hh < h; ++hh)
    for (i64 j = t0 + 1; j < t; ++j)
      for (i64 c = 0; c < dh; ++c) k[(hh * t + j) * dh + c] += 3.f, v[(hh * t + j) * dh + c] -= 2.f;
  Backend::attention_forward(ctx, view(q, s), view(k, s), view(v, s), view(out2, s), view(lse2, {b, h, t}), 0.5f);
  for (i64 hh = 0; hh < h; ++hh)
    for (i64 i = 0; i < t; ++i) {
      const bool past = i <= t0;
      CHECK((lse1[hh * t + i] == lse2[hh * t + i]) == past);
      for (i64 c = 0; c < dh; ++c) CHECK((out1[(hh * t + i) * dh + c] == out2[(hh * t + i) * dh + c]) == past);
    }
  SECTION("a loss on early rows gives future keys and values exactly zero gradient") {
    std::vector<float> dout(q.size(), 0.f), dq(q.size()), dk(q.size()), dv(q.size());
    for (i64 hh = 0; hh < h; ++hh)
      for (i64 i = 0; i <= t0; ++i)
        for (i64 c = 0; c < dh; ++c) dout[(hh * t + i) * dh + c] = 1.f + float(c);
    Backend::attention_backward(ctx, view(q, s), view(k, s), view(v, s), view(out2, s), view(dout, s),
                                view(lse2, {b, h, t}), 0.5f, view(dq, s), view(dk, s), view(dv, s));
    for (i64 hh = 0; hh < h; ++hh)
      for (i64 j = 0; j < t; ++j)
        for (i64 c = 0; c < dh; ++c) {
          const auto at = static_cast<std::size_t>((hh * t + j) * dh + c);
          if (j > t0) CHECK((dq[at] == 0.f && dk[at] == 0.f && dv[at] == 0.f));
          if (j <= t0) CHECK(dv[at] != 0.f);
        }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("cross-entropy forward and backward match the reference and finite differences",
                   "[host][kernels][cross_entropy]", float, bf16, fp16) {
  using T = TestType;
  const i64 n = 6, v = 9;
  const i32 ignore = -100;
  const std::vector<i32> y{3, 0, ignore, 8, 5, ignore};
  const vd z = rounded<T>(randn(n * v, 61, 2.0));
  const auto ref = ref_cross_entropy(z, y, ignore, n, v);
  REQUIRE(ref.valid == 4);

  auto zs = store<T>(z);
  std::vector<float> losses(n, 7.f), lse(n);
  const i64 valid = Backend::cross_entropy_forward(ctx, cview(zs, {n, v}), cview(y, {n}), ignore, view(losses, {n}),
                                                   view(lse, {n}));
  CHECK(valid == 4);
  check_close(losses, ref.losses, 1e-5, "losses");
  check_close(lse, ref.lse, 1e-5, "lse");
  CHECK(losses[2] == 0.f);
  CHECK(losses[5] == 0.f);

  // Mean loss over the valid rows: L = (1 / valid) sum_n loss_n.
  const double sc = 1.0 / double(valid);
  const vd dz_ref = numeric_grad(
      [&](const vd& a) {
        const auto r = ref_cross_entropy(a, y, ignore, n, v);
        double s = 0;
        for (double l : r.losses) s += sc * l;
        return s;
      },
      z);
  std::vector<T> dz(zs.size(), T(3.f));  // overwritten, ignored rows included
  Backend::cross_entropy_backward(ctx, view(zs, {n, v}), cview(y, {n}), view(lse, {n}), ignore, float(sc), view(dz, {n, v}));
  check_close(dz, dz_ref, tol<T>, "dlogits");
  for (i64 j = 0; j < v; ++j) CHECK((float(dz[2 * v + j]) == 0.f && float(dz[5 * v + j]) == 0.f));

  SECTION("in place: dlogits may alias logits") {
    Backend::cross_entropy_backward(ctx, view(zs, {n, v}), cview(y, {n}), view(lse, {n}), ignore, float(sc),
                                    view(zs, {n, v}));
    CHECK(widen(zs) == widen(dz));
  }
}

TEST_CASE("cross-entropy is stable for very large logits", "[host][kernels][cross_entropy]") {
  const i64 n = 4, v = 16;
  vd z = randn(n * v, 71, 3e3, 5e4);  // exp() of any of these overflows fp32 and fp64
  z[1 * v + 2] = 3e37;                  // a dominant logit near fp32's limit
  z[2 * v + 0] = -3e37;
  z = rounded<float>(z);
  const std::vector<i32> y{1, 2, 0, 15};
  const auto ref = ref_cross_entropy(z, y, -1, n, v);
  auto zs = store<float>(z);
  std::vector<float> losses(n), lse(n), dz(zs.size());
  CHECK(Backend::cross_entropy_forward(ctx, cview(zs, {n, v}), cview(y, {n}), -1, view(losses, {n}), view(lse, {n})) == n);
  for (i64 i = 0; i < n; ++i) {
    CHECK(std::isfinite(losses[i]));
    CHECK(losses[i] == Approx(ref.losses[i]).epsilon(1e-5).margin(1e-6 * std::abs(ref.lse[i])));  // lse's ulp
    CHECK(lse[i] == Approx(ref.lse[i]).epsilon(1e-6));
  }
  CHECK(losses[1] == 0.f);  // the target dominates: p = 1 exactly
  Backend::cross_entropy_backward(ctx, view(zs, {n, v}), cview(y, {n}), view(lse, {n}), -1, 1.f, view(dz, {n, v}));
  for (i64 i = 0; i < n; ++i) {
    double row = 0;
    for (i64 j = 0; j < v; ++j) {
      REQUIRE(std::isfinite(dz[i * v + j]));
      row += dz[i * v + j];
    }
    CHECK(row == Approx(0).margin(1e-5));  // softmax sums to one, minus the one-hot
  }
}

TEST_CASE("cross-entropy rejects targets outside the vocabulary", "[host][kernels][cross_entropy]") {
  std::vector<float> z(2 * 5), losses(2), lse(2);
  const std::vector<i32> y{1, 5};
  CHECK_THAT(error_of([&] { (void)Backend::cross_entropy_forward(ctx, cview(z, {2, 5}), cview(y, {2}), -100, view(losses, {2}), view(lse, {2})); }),
             Equals("cross_entropy_forward: target 5 at row 1 is outside [0, 5) and is not ignore_index -100"));
  const std::vector<i32> neg{-3, 0};
  CHECK_THAT(error_of([&] { Backend::cross_entropy_backward(ctx, view(z, {2, 5}), cview(neg, {2}), view(lse, {2}), -100, 1.f, view(z, {2, 5})); }),
             Contains("target -3 at row 0 is negative"));
}

TEMPLATE_TEST_CASE("vocab-parallel cross-entropy over 3 column shards equals the unsharded loss and gradients",
                   "[host][kernels][cross_entropy]", float, bf16) {
  using T = TestType;
  const i64 n = 7, v = 11;
  const i64 begins[] = {0, 4, 8, 11};  // uneven shards [0, 4), [4, 8), [8, 11)
  const i32 ignore = -1;
  const std::vector<i32> y{0, 3, 4, ignore, 7, 8, 10};  // targets on every shard and its edges
  const auto z = store<T>(randn(n * v, 81, 3.0));

  std::vector<float> losses(n), lse(n);
  std::vector<T> dz(z.size());
  const i64 valid = Backend::cross_entropy_forward(ctx, cview(z, {n, v}), cview(y, {n}), ignore, view(losses, {n}), view(lse, {n}));
  Backend::cross_entropy_backward(ctx, cview(z, {n, v}), cview(y, {n}), cview(lse, {n}), ignore, 1.f / float(valid), view(dz, {n, v}));

  std::vector<std::vector<T>> shard(3);
  for (int r = 0; r < 3; ++r)
    for (i64 i = 0; i < n; ++i)
      for (i64 j = begins[r]; j < begins[r + 1]; ++j) shard[r].push_back(z[i * v + j]);
  const auto local = [&](int r) { return cview(shard[r], {n, begins[r + 1] - begins[r]}); };
  // 1) local max, all-reduce max.
  std::vector<float> gmax(n, -INFINITY), part(n);
  for (int r = 0; r < 3; ++r) {
    Backend::row_max(ctx, local(r), view(part, {n}));
    for (i64 i = 0; i < n; ++i) gmax[i] = std::max(gmax[i], part[i]);
  }
  // 2) local sum of exp relative to the global max and the local target logit, all-reduce sum.
  std::vector<float> gsum(n, 0.f), gtarget(n, 0.f);
  for (int r = 0; r < 3; ++r) {
    Backend::sum_exp_shifted(ctx, local(r), cview(gmax, {n}), view(part, {n}));
    for (i64 i = 0; i < n; ++i) gsum[i] += part[i];
    Backend::target_logit(ctx, local(r), cview(y, {n}), begins[r], ignore, view(part, {n}));
    for (i64 i = 0; i < n; ++i) gtarget[i] += part[i];
  }
  // 3) loss and lse; backward per shard with the global lse.
  std::vector<float> losses_p(n), lse_p(n);
  CHECK(Backend::cross_entropy_combine(ctx, view(gmax, {n}), view(gsum, {n}), view(gtarget, {n}), cview(y, {n}), ignore,
                                       view(losses_p, {n}), view(lse_p, {n})) == valid);
  check_close(losses_p, widen(losses), 1e-6, "sharded losses");
  check_close(lse_p, widen(lse), 1e-6, "sharded lse");
  std::vector<T> dz_p;
  std::vector<std::vector<T>> dshard(3);
  for (int r = 0; r < 3; ++r) {
    dshard[r].resize(shard[r].size());
    Backend::cross_entropy_backward(ctx, local(r), cview(y, {n}), cview(lse_p, {n}), ignore, 1.f / float(valid),
                                    view(dshard[r], local(r).shape()), begins[r]);
  }
  for (i64 i = 0; i < n; ++i)
    for (int r = 0; r < 3; ++r)
      for (i64 j = 0; j < begins[r + 1] - begins[r]; ++j) dz_p.push_back(dshard[r][i * (begins[r + 1] - begins[r]) + j]);
  check_close(dz_p, widen(dz), std::is_same_v<T, float> ? 1e-6 : 1e-2, "sharded dlogits");
}

// ---------------------------------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("embedding forward gathers rows and backward scatters them", "[host][kernels][embedding]", float, bf16) {
  using T = TestType;
  const i64 vocab = 8, d = 5, n = 9;
  const std::vector<i32> ids{3, 0, 7, 3, 5, 3, 1, 7, 2};  // repeated ids accumulate
  const vd table = rounded<T>(randn(vocab * d, 91)), w = rounded<T>(randn(n * d, 92));
  const auto gather = [&](const vd& tab) {
    vd out;
    for (i32 id : ids)
      for (i64 j = 0; j < d; ++j) out.push_back(tab[id * d + j]);
    return out;
  };
  auto ts = store<T>(table);
  std::vector<T> out(n * d);
  Backend::embedding_forward(ctx, cview(ids, {n}), view(ts, {vocab, d}), view(out, {n, d}));
  CHECK(widen(out) == gather(table));

  const vd dt_ref = numeric_grad([&](const vd& a) { return dot(w, gather(a)); }, table);
  auto dout = store<T>(w);
  std::vector<float> dtable(vocab * d, 0.5f);  // accumulates onto 0.5
  Backend::embedding_backward(ctx, cview(ids, {n}), cview(dout, {n, d}), view(dtable, {vocab, d}));
  vd dt_acc = dt_ref;
  for (auto& g : dt_acc) g += 0.5;
  check_close(dtable, dt_acc, tol<T>, "dtable");

  SECTION("vocab shards: outside rows give zeros forward and are skipped backward") {
    const i64 begins[] = {0, 3, 6, 8};
    std::vector<T> sum(n * d, T(0.f)), part(n * d);
    std::vector<float> dt_shards;
    for (int r = 0; r < 3; ++r) {
      const i64 rows = begins[r + 1] - begins[r];
      std::vector<T> slice(ts.begin() + begins[r] * d, ts.begin() + begins[r + 1] * d);
      Backend::embedding_forward(ctx, cview(ids, {n}), view(slice, {rows, d}), view(part, {n, d}), begins[r], vocab);
      for (i64 i = 0; i < n; ++i) {
        const bool here = ids[i] >= begins[r] && ids[i] < begins[r + 1];
        for (i64 j = 0; j < d; ++j) {
          if (!here) CHECK(float(part[i * d + j]) == 0.f);
          sum[i * d + j] = T(float(sum[i * d + j]) + float(part[i * d + j]));
        }
      }
      std::vector<float> dslice(rows * d, 0.5f);
      Backend::embedding_backward(ctx, cview(ids, {n}), cview(dout, {n, d}), view(dslice, {rows, d}), begins[r]);
      dt_shards.insert(dt_shards.end(), dslice.begin(), dslice.end());
    }
    CHECK(widen(sum) == widen(out));
    CHECK(dt_shards == dtable);
  }
  SECTION("position embedding: ids 0..T-1 select the first T rows") {
    const std::vector<i32> pos{0, 1, 2, 3};
    std::vector<T> pe(4 * d);
    Backend::embedding_forward(ctx, cview(pos, {4}), view(ts, {vocab, d}), view(pe, {4, d}));
    CHECK(widen(pe) == vd(table.begin(), table.begin() + 4 * d));
  }
}

TEST_CASE("embedding rejects ids outside the vocabulary, naming the id and its position", "[host][kernels][embedding]") {
  std::vector<float> table(8 * 2), out(4 * 2);
  const std::vector<i32> big{1, 2, 3, 8}, neg{0, -1, 0, 0};
  CHECK_THAT(error_of([&] { Backend::embedding_forward(ctx, cview(big, {4}), view(table, {8, 2}), view(out, {4, 2})); }),
             Equals("embedding_forward: id 8 at position 3 is outside [0, 8)"));
  CHECK_THAT(error_of([&] { Backend::embedding_forward(ctx, cview(neg, {4}), view(table, {8, 2}), view(out, {4, 2})); }),
             Equals("embedding_forward: id -1 at position 1 is outside [0, 8)"));
  // A shard checks ids against the whole vocabulary, so every rank throws alike.
  CHECK_THAT(error_of([&] { Backend::embedding_forward(ctx, cview(big, {4}), view(table, {8, 2}).rows(0, 4), view(out, {4, 2}), 4, 8); }),
             Equals("embedding_forward: id 8 at position 3 is outside [0, 8)"));
  CHECK_THAT(error_of([&] { Backend::embedding_forward(ctx, cview(neg, {4}), view(table, {8, 2}).rows(0, 4), view(out, {4, 2}), 6, 8); }),
             Equals("embedding_forward: table rows [6, 10) do not fit a vocabulary of 8"));
}

TEST_CASE("position_ids numbers the rows of a [T, B] batch from the first position", "[host][kernels][embedding]") {
  std::vector<i32> ids(12, -7);
  Backend::position_ids(ctx, V<i32>(ids.data(), Shape{12}), 0, 3);
  CHECK(ids == std::vector<i32>{0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3});
  Backend::position_ids(ctx, V<i32>(ids.data(), Shape{12}), 5, 4);  // a sequence-parallel shard's rows from 5
  CHECK(ids == std::vector<i32>{5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7});
  Backend::position_ids(ctx, V<i32>(ids.data(), Shape{0}), 0, 0);  // nothing to number
  CHECK_THAT(error_of([&] { Backend::position_ids(ctx, V<i32>(ids.data(), Shape{12}), 0, 5); }),
             Equals("position_ids: 12 ids are not rows of a batch of 5"));
  CHECK_THAT(error_of([&] { Backend::position_ids(ctx, V<i32>(ids.data(), Shape{12}), -1, 3); }),
             Equals("position_ids: positions -1 to 2 are not int32 positions"));
  CHECK_THAT(error_of([&] { Backend::position_ids(ctx, V<i32>(ids.data(), Shape{12}), i64{1} << 31, 3); }),
             Equals("position_ids: positions 2147483648 to 2147483651 are not int32 positions"));
}

// ---------------------------------------------------------------------------------------------------------------------
TEST_CASE("transformer kernels reject mismatched shapes, naming the kernel and the shapes", "[host][kernels][errors]") {
  std::vector<float> buf(4096), f(4096);
  std::vector<bf16> hb(4096);
  std::vector<i32> ids(64, 0);
  const auto fv = [&](Shape s) { return V<float>(f.data(), s); };
  const auto bv = [&](Shape s) { return V<float>(buf.data(), s); };

  CHECK_THAT(error_of([&] { Backend::layernorm_forward(ctx, bv({4, 8}), bv({7}), bv({8}), 1e-5f, fv({4, 8}), fv({4}), fv({4})); }),
             Equals("layernorm_forward: gamma has shape [7], expected [8]"));
  CHECK_THAT(error_of([&] { Backend::layernorm_forward(ctx, bv({2, 4, 8}), bv({8}), bv({8}), 1e-5f, fv({2, 4, 8}), fv({4}), fv({4})); }),
             Equals("layernorm_forward: x has shape [2, 4, 8], expected [N, D]"));
  CHECK_THAT(error_of([&] { Backend::layernorm_forward(ctx, bv({4, 8}), bv({8}), bv({8}), 1e-5f, fv({4, 8}), fv({3}), fv({4})); }),
             Equals("layernorm_forward: mean has shape [3], expected [4]"));
  CHECK_THAT(error_of([&] { Backend::layernorm_backward(ctx, bv({4, 8}), bv({4, 8}), bv({8}), bv({4}), bv({4}), fv({4, 8}), fv({8}), fv({9})); }),
             Equals("layernorm_backward: dbeta has shape [9], expected [8]"));
  CHECK_THAT(error_of([&] { Backend::gelu_forward(ctx, bv({4, 8}), fv({8, 4})); }),
             Equals("gelu_forward: y has shape [8, 4], expected [4, 8]"));
  CHECK_THAT(error_of([&] { Backend::gelu_backward(ctx, bv({32}), bv({31}), fv({32})); }),
             Equals("gelu_backward: dy has shape [31], expected [32]"));

  const Shape qs{2, 3, 5, 4};
  CHECK_THAT(error_of([&] { Backend::attention_forward(ctx, bv(qs), bv({2, 3, 6, 4}), bv(qs), fv(qs), fv({2, 3, 5}), 0.5f); }),
             Equals("attention_forward: k has shape [2, 3, 6, 4], expected [2, 3, 5, 4]"));
  CHECK_THAT(error_of([&] { Backend::attention_forward(ctx, bv({6, 5, 4}), bv(qs), bv(qs), fv(qs), fv({2, 3, 5}), 0.5f); }),
             Equals("attention_forward: q has shape [6, 5, 4], expected [B, H, T, Dh]"));
  CHECK_THAT(error_of([&] { Backend::attention_forward(ctx, bv(qs), bv(qs), bv(qs), fv(qs), fv({2, 3, 4}), 0.5f); }),
             Equals("attention_forward: lse has shape [2, 3, 4], expected [2, 3, 5]"));
  CHECK_THAT(error_of([&] {
               Backend::attention_backward(ctx, bv(qs), bv(qs), bv(qs), bv(qs), bv(qs), bv({2, 3, 5}), 0.5f, fv(qs), fv(qs),
                                           fv({2, 3, 5, 5}));
             }),
             Equals("attention_backward: dv has shape [2, 3, 5, 5], expected [2, 3, 5, 4]"));

  const CV<float> logits(buf.data(), {4, 10});
  CHECK_THAT(error_of([&] { (void)Backend::cross_entropy_forward(ctx, logits, cview(ids, {5}), -1, fv({4}), fv({4})); }),
             Equals("cross_entropy_forward: targets has shape [5], expected [4]"));
  CHECK_THAT(error_of([&] { Backend::cross_entropy_backward(ctx, logits, cview(ids, {4}), bv({4}), -1, 1.f, fv({4, 9})); }),
             Equals("cross_entropy_backward: dlogits has shape [4, 9], expected [4, 10]"));
  CHECK_THAT(error_of([&] { Backend::sum_exp_shifted(ctx, logits, bv({3}), fv({4})); }),
             Equals("sum_exp_shifted: shift has shape [3], expected [4]"));
  CHECK_THAT(error_of([&] { Backend::target_logit(ctx, logits, cview(ids, {4}), 0, -1, fv({4, 1})); }),
             Equals("target_logit: out has shape [4, 1], expected [4]"));
  CHECK_THAT(error_of([&] { (void)Backend::cross_entropy_combine(ctx, bv({4}), bv({4}), bv({4}), cview(ids, {4}), -1, fv({3}), fv({4})); }),
             Equals("cross_entropy_combine: losses has shape [3], expected [4]"));

  CHECK_THAT(error_of([&] { Backend::embedding_forward(ctx, cview(ids, {6}), bv({8, 4}), fv({6, 5})); }),
             Equals("embedding_forward: out has shape [6, 5], expected [6, 4]"));
  CHECK_THAT(error_of([&] { Backend::embedding_backward(ctx, cview(ids, {6}), CV<bf16>(hb.data(), {6, 3}), fv({8, 4})); }),
             Equals("embedding_backward: dout has shape [6, 3], expected [6, 4]"));
  CHECK_THAT(error_of([&] { Backend::embedding_backward(ctx, cview(ids, {2, 3}), CV<bf16>(hb.data(), {6, 4}), fv({8, 4})); }),
             Equals("embedding_backward: ids has shape [2, 3], expected [N]"));
}

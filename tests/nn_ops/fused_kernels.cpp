// The host backend's fused kernels against the unfused kernels they replace: GEMMs with a bias / GELU / GELU-gradient
// / bias-gradient epilogue, and the residual add fused into LayerNorm's forward and input gradient; fp32 and bf16,
// every transposition, optional operands, aliasing, and the argument errors.
#include <catch2/catch.hpp>
#include <cstdint>
#include <parallax/backend/host/backend.hpp>
#include <parallax/core/bf16.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"
#include "nn_ops.hpp"

namespace px = parallax;
using px::Shape;
using px::Trans;
using px::test::error_of;
using px::test::HostBackend;
using px::test::relative_diff;
using px::test::stored;
using i64 = std::int64_t;
using Mem = px::host::Memory;

namespace {

using parallax::test::cview;
using parallax::test::view;
template <class T>
std::vector<float> floats(const std::vector<T>& v) {
  return std::vector<float>(v.begin(), v.end());
}

// Fused results against unfused ones: fp32 within 1e-6 (the same math), 16-bit within 1e-2 (one rounding fewer).
template <class T>
void check_near(const std::vector<T>& fused, const std::vector<T>& unfused, const std::string& what) {
  INFO(what);
  CHECK(relative_diff(floats(fused), floats(unfused)) <= (std::is_same_v<T, float> ? 1e-6 : 1e-2));
}

Shape stored_shape(Trans t, i64 rows, i64 cols) { return t == Trans::N ? Shape{rows, cols} : Shape{cols, rows}; }

template <class T>
void check_gemm_bias_act(Trans ta, Trans tb, bool bias, px::Activation act, bool pre) {
  INFO("A " << (ta == Trans::T ? "T" : "N") << " B " << (tb == Trans::T ? "T" : "N") << " bias " << bias << " gelu "
            << (act == px::Activation::gelu) << " pre " << pre);
  const px::host::Context ctx(0);
  constexpr i64 m = 7, n = 9, k = 5;
  const Shape sa = stored_shape(ta, m, k), sb = stored_shape(tb, k, n), sc{m, n};
  const auto a = stored<T>(px::test::random_values(m * k, 1, 2.f)), b = stored<T>(px::test::random_values(k * n, 2));
  const auto bv = stored<T>(px::test::random_values(n, 3));
  std::vector<T> c(m * n, T(7.f)), p(m * n, T(7.f));  // garbage: both are overwritten
  HostBackend::gemm_bias_act(ctx, ta, tb, cview(a, sa), cview(b, sb),
                             bias ? cview(bv, Shape{n}) : px::View<const T, Mem>{}, act, view(c, sc),
                             pre ? view(p, sc) : px::View<T, Mem>{});

  std::vector<T> want(m * n), want_pre(m * n);
  HostBackend::gemm(ctx, ta, tb, 1.f, cview(a, sa), cview(b, sb), 0.f, view(want, sc));
  if (bias) HostBackend::add_bias(ctx, cview(bv, Shape{n}), view(want, sc));
  want_pre = want;
  if (act == px::Activation::gelu) HostBackend::gelu_forward(ctx, cview(want_pre, sc), view(want, sc));
  check_near(c, want, "C");
  if (pre) check_near(p, want_pre, "pre");
}

template <class T>
void check_gemm_dgelu(Trans ta, Trans tb) {
  INFO("A " << (ta == Trans::T ? "T" : "N") << " B " << (tb == Trans::T ? "T" : "N"));
  const px::host::Context ctx(0);
  constexpr i64 m = 6, n = 10, k = 4;
  const Shape sa = stored_shape(ta, m, k), sb = stored_shape(tb, k, n), sc{m, n};
  const auto a = stored<T>(px::test::random_values(m * k, 4)), b = stored<T>(px::test::random_values(k * n, 5));
  const auto pre = stored<T>(px::test::random_values(m * n, 6, 3.f));
  std::vector<T> c(m * n, T(7.f)), want(m * n);
  HostBackend::gemm_dgelu(ctx, ta, tb, cview(a, sa), cview(b, sb), cview(pre, sc), view(c, sc));
  HostBackend::gemm(ctx, ta, tb, 1.f, cview(a, sa), cview(b, sb), 0.f, view(want, sc));
  HostBackend::gelu_backward(ctx, cview(pre, sc), cview(want, sc), view(want, sc));
  check_near(c, want, "C");
}

template <class T, class G>
void check_gemm_bias_grad(Trans tb, float beta) {
  INFO("B " << (tb == Trans::T ? "T" : "N") << " beta " << beta);
  const px::host::Context ctx(0);
  constexpr i64 m = 5, n = 8, k = 11;  // dW [m, n] += dY^T [m, k] X [k, n]
  const Shape sa{k, m}, sb = stored_shape(tb, k, n), sc{m, n};
  const auto a = stored<T>(px::test::random_values(k * m, 7)), b = stored<T>(px::test::random_values(k * n, 8));
  auto c = stored<T>(px::test::random_values(m * n, 9)), want = c;
  auto db = stored<G>(px::test::random_values(m, 10)), want_db = db;
  HostBackend::gemm_bias_grad(ctx, Trans::T, tb, 0.5f, cview(a, sa), cview(b, sb), beta, view(c, sc),
                              view(db, Shape{m}));
  HostBackend::gemm(ctx, Trans::T, tb, 0.5f, cview(a, sa), cview(b, sb), beta, view(want, sc));
  HostBackend::bias_grad(ctx, cview(a, sa), view(want_db, Shape{m}));
  CHECK(c == want);  // the same kernels
  CHECK(db == want_db);
}

template <class T>
void check_add_layernorm() {
  const px::host::Context ctx(0);
  constexpr i64 n = 9, d = 33;
  const Shape s{n, d}, sd{d}, sn{n};
  const auto x = stored<T>(px::test::random_values(n * d, 11, 3.f)), r = stored<T>(px::test::random_values(n * d, 12));
  const auto gamma = stored<T>(px::test::random_values(d, 13)), beta = stored<T>(px::test::random_values(d, 14));
  const auto dy = stored<T>(px::test::random_values(n * d, 15)), dres = stored<T>(px::test::random_values(n * d, 16));

  // Forward: the sum written in place over x (it may alias x), then the LayerNorm of the stored sum.
  auto sum = x;
  std::vector<T> y(n * d);
  std::vector<float> mean(n), rstd(n);
  HostBackend::add_layernorm_forward(ctx, cview(x, s), cview(r, s), cview(gamma, sd), cview(beta, sd), 1e-5f,
                                     view(sum, s), view(y, s), view(mean, sn), view(rstd, sn));
  auto want_sum = r;
  std::vector<T> want_y(n * d);
  std::vector<float> want_mean(n), want_rstd(n);
  HostBackend::axpby(ctx, 1.f, cview(x, s), 1.f, view(want_sum, s));
  HostBackend::layernorm_forward(ctx, cview(want_sum, s), cview(gamma, sd), cview(beta, sd), 1e-5f, view(want_y, s),
                                 view(want_mean, sn), view(want_rstd, sn));
  CHECK(sum == want_sum);  // bit for bit: the same rounding, then the same LayerNorm
  CHECK(y == want_y);
  CHECK(mean == want_mean);
  CHECK(rstd == want_rstd);

  // Backward: dres + LayerNorm's dx, written over dres (dx may alias it).
  auto dx = dres;
  HostBackend::add_layernorm_backward(ctx, cview(dy, s), cview(sum, s), cview(gamma, sd), cview(mean, sn),
                                      cview(rstd, sn), cview(dx, s), view(dx, s));
  std::vector<T> want_dx(n * d);
  HostBackend::layernorm_backward<T, T>(ctx, cview(dy, s), cview(sum, s), cview(gamma, sd), cview(mean, sn),
                                        cview(rstd, sn), view(want_dx, s), {}, {});
  HostBackend::axpby(ctx, 1.f, cview(dres, s), 1.f, view(want_dx, s));
  check_near(dx, want_dx, "dx");
}

}  // namespace

TEMPLATE_TEST_CASE("host gemm_bias_act equals gemm, add_bias and gelu_forward", "[host][fused][gemm]", float,
                   px::bf16) {
  for (Trans ta : {Trans::N, Trans::T})
    for (Trans tb : {Trans::N, Trans::T})
      for (bool bias : {false, true})
        for (px::Activation act : {px::Activation::none, px::Activation::gelu})
          for (bool pre : {false, true}) check_gemm_bias_act<TestType>(ta, tb, bias, act, pre);
}

TEMPLATE_TEST_CASE("host gemm_dgelu equals gemm and gelu_backward", "[host][fused][gemm]", float, px::bf16) {
  for (Trans ta : {Trans::N, Trans::T})
    for (Trans tb : {Trans::N, Trans::T}) check_gemm_dgelu<TestType>(ta, tb);
}

TEST_CASE("host gemm_bias_grad equals gemm and bias_grad, accumulating", "[host][fused][gemm]") {
  for (Trans tb : {Trans::N, Trans::T})
    for (float beta : {0.f, 1.f}) {
      check_gemm_bias_grad<float, float>(tb, beta);
      check_gemm_bias_grad<px::bf16, px::bf16>(tb, beta);
      check_gemm_bias_grad<px::bf16, float>(tb, beta);
    }
}

TEMPLATE_TEST_CASE("host add_layernorm_forward/backward equal the add and the LayerNorm kernels apart",
                   "[host][fused][layernorm]", float, px::bf16) {
  check_add_layernorm<TestType>();
}

TEST_CASE("host fused kernels name the operand whose shape is wrong", "[host][fused][errors]") {
  const px::host::Context ctx(0);
  std::vector<float> h(64);
  auto v = [&](Shape s) { return px::View<float, Mem>(h.data(), s); };
  using CV = px::View<const float, Mem>;
  auto cv = [&](Shape s) { return CV(h.data(), s); };
  const auto gelu = px::Activation::gelu;
  CHECK_THAT(error_of([&] {
               HostBackend::gemm_bias_act(ctx, Trans::N, Trans::T, cv({2, 3}), cv({4, 3}), cv({3}), gelu, v({2, 4}));
             }),
             Catch::Equals("gemm_bias_act: bias has shape [3], expected [4]"));
  CHECK_THAT(
      error_of([&] {
        HostBackend::gemm_bias_act(ctx, Trans::N, Trans::T, cv({2, 3}), cv({4, 3}), CV{}, gelu, v({2, 4}), v({4, 2}));
      }),
      Catch::Equals("gemm_bias_act: pre has shape [4, 2], expected [2, 4]"));
  CHECK_THAT(error_of([&] {
               HostBackend::gemm_bias_act(ctx, Trans::N, Trans::N, cv({2, 3}), cv({4, 3}), CV{}, gelu, v({2, 3}));
             }),
             Catch::Contains("gemm: op(A) is [2, 3], op(B) is [4, 3]"));
  CHECK_THAT(error_of([&] {
               HostBackend::gemm_dgelu(ctx, Trans::N, Trans::N, cv({2, 3}), cv({3, 4}), cv({8}), v({2, 4}));
             }),
             Catch::Equals("gemm_dgelu: pre has shape [8], expected [2, 4]"));
  CHECK_THAT(
      error_of([&] {
        HostBackend::gemm_bias_grad(ctx, Trans::N, Trans::N, 1.f, cv({2, 3}), cv({3, 4}), 1.f, v({2, 4}), v({2}));
      }),
      Catch::Equals("gemm_bias_grad: A [2, 3] must be transposed (A [k, m] is the output gradient dY, C = dY^T X)"));
  CHECK_THAT(
      error_of([&] {
        HostBackend::gemm_bias_grad(ctx, Trans::T, Trans::N, 1.f, cv({3, 2}), cv({3, 4}), 1.f, v({2, 4}), v({4}));
      }),
      Catch::Equals("gemm_bias_grad: db has shape [4], expected [2]"));
  auto s3 = v({3});
  CHECK_THAT(error_of([&] {
               HostBackend::add_layernorm_forward(ctx, cv({3, 4}), cv({4, 3}), cv({4}), cv({4}), 1e-5f, v({3, 4}),
                                                  v({3, 4}), s3, s3);
             }),
             Catch::Equals("add_layernorm_forward: r has shape [4, 3], expected [3, 4]"));
  CHECK_THAT(error_of([&] {
               HostBackend::add_layernorm_forward(ctx, cv({3, 4}), cv({3, 4}), cv({4}), cv({4}), 1e-5f, v({12}),
                                                  v({3, 4}), s3, s3);
             }),
             Catch::Equals("add_layernorm_forward: sum has shape [12], expected [3, 4]"));
  CHECK_THAT(error_of([&] {
               HostBackend::add_layernorm_backward(ctx, cv({3, 4}), cv({3, 4}), cv({4}), cv({3}), cv({3}), cv({3, 5}),
                                                   v({3, 4}));
             }),
             Catch::Equals("add_layernorm_backward: dres has shape [3, 5], expected [3, 4]"));
  CHECK_THAT(error_of([&] {
               HostBackend::add_layernorm_backward(ctx, cv({3, 4}), cv({3, 4}), cv({5}), cv({3}), cv({3}), cv({3, 4}),
                                                   v({3, 4}));
             }),
             Catch::Equals("add_layernorm_backward: gamma has shape [5], expected [4]"));
}

// LayerNorm: forward against a double-precision loop, gradients against finite differences, bf16 against fp32,
// freeing, pass-order and shape errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include <parallax/comm/launch.hpp>
#include <parallax/core/bf16.hpp>
#include <parallax/nn/layer_norm.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace px = parallax;
using Backend = px::host::Backend;
using px::test::error_of;
using px::test::random_values;

namespace {

template <class T>
using LN = px::nn::LayerNorm<Backend, T>;

// Gamma around 1 and beta around 0, so that both show in every check.
template <class T>
void set_affine(LN<T>& ln, std::uint64_t seed) {
  const auto g = random_values(ln.dim(), seed, 0.5f), b = random_values(ln.dim(), seed + 1, 0.5f);
  for (std::int64_t j = 0; j < ln.dim(); ++j) {
    ln.weight().value().data()[j] = T(1.f + g[static_cast<std::size_t>(j)]);
    ln.bias().value().data()[j] = T(b[static_cast<std::size_t>(j)]);
  }
}

template <class T>
std::vector<T> converted(const std::vector<float>& v) {
  std::vector<T> out;
  for (float f : v) out.push_back(T(f));
  return out;
}

template <class T>
std::vector<float> floats(const T* p, std::int64_t n) {
  std::vector<float> out;
  for (std::int64_t i = 0; i < n; ++i) out.push_back(float(p[i]));
  return out;
}

// max |a - b| / max |b|.
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return diff / scale;
}

struct Outputs {
  std::vector<float> y, dx, dgamma, dbeta;
};

// One forward and backward of a LayerNorm storing T, on x and dy given as floats (already representable in T).
template <class T>
Outputs run(px::Rank<Backend>& rank, const std::vector<float>& x, const std::vector<float>& dy, px::Shape s) {
  LN<T> ln(rank, s[s.rank() - 1]);
  set_affine(ln, 5);
  const auto xt = converted<T>(x), dyt = converted<T>(dy);
  typename LN<T>::Ctx ctx;
  auto y = ln.forward(ctx, px::View<const T, px::host::Memory>(xt.data(), s));
  auto dx = ln.backward_input(ctx, px::View<const T, px::host::Memory>(dyt.data(), s));
  ln.backward_weight(ctx);
  return {floats(y.data(), y.numel()), floats(dx.data(), dx.numel()), floats(ln.weight().grad().data(), ln.dim()),
          floats(ln.bias().grad().data(), ln.dim())};
}

}  // namespace

TEST_CASE("LayerNorm forward matches a double-precision loop, for any rank >= 2", "[nn][layer_norm]") {
  constexpr std::int64_t rows = 6, d = 8;
  const auto x = random_values(rows * d, 1, 2.f);
  std::vector<float> got, got_4d, mean, rstd, gamma, beta;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    LN<float> ln(rank, d, {.eps = 1e-3f, .name = "ln_f"});
    set_affine(ln, 3);
    gamma = floats(ln.weight().value().data(), d);
    beta = floats(ln.bias().value().data(), d);
    LN<float>::Ctx ctx, ctx_4d;
    auto y = ln.forward(ctx, px::View<const float, px::host::Memory>(x.data(), px::Shape{3, 2, d}));
    got = px::to_vector(y.cview());
    mean = px::to_vector(ctx.mean.cview());
    rstd = px::to_vector(ctx.rstd.cview());
    auto y4 = ln.forward(ctx_4d, px::View<const float, px::host::Memory>(x.data(), px::Shape{1, 3, 2, d}));
    CHECK(y4.shape() == px::Shape{1, 3, 2, d});
    got_4d = px::to_vector(y4.cview());
  });
  REQUIRE(got.size() == static_cast<std::size_t>(rows * d));
  REQUIRE(mean.size() == static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0;
    for (std::int64_t j = 0; j < d; ++j) mu += x[static_cast<std::size_t>(r * d + j)];
    mu /= d;
    for (std::int64_t j = 0; j < d; ++j) var += std::pow(x[static_cast<std::size_t>(r * d + j)] - mu, 2);
    const double rs = 1.0 / std::sqrt(var / d + 1e-3);
    CHECK(mean[static_cast<std::size_t>(r)] == Approx(mu).margin(1e-6));
    CHECK(rstd[static_cast<std::size_t>(r)] == Approx(rs).epsilon(1e-5));
    for (std::int64_t j = 0; j < d; ++j) {
      const auto i = static_cast<std::size_t>(r * d + j);
      const double want = (x[i] - mu) * rs * gamma[static_cast<std::size_t>(j)] + beta[static_cast<std::size_t>(j)];
      CHECK(got[i] == Approx(want).epsilon(1e-5).margin(1e-5));
    }
  }
  CHECK(got_4d == got);
}

TEST_CASE("LayerNorm gradients match finite differences", "[nn][layer_norm][gradcheck]") {
  std::vector<px::test::GradError> errs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    LN<float> ln(rank, 8, {.name = "ln"});
    set_affine(ln, 11);
    errs = px::test::gradcheck(ln, random_values(3 * 2 * 8, 4), px::Shape{3, 2, 8});
  });
  REQUIRE(errs.size() == 3);  // dx, weight, bias
  CHECK(errs[1].what == "ln.weight");
  CHECK(errs[2].what == "ln.bias");
  for (const auto& e : errs) {
    INFO(e.str());
    CHECK(e.ok());
  }
}

TEST_CASE("LayerNorm in bf16 stays within 1e-2 of fp32", "[nn][layer_norm][bf16]") {
  const px::Shape s{4, 3, 32};
  // Inputs rounded to bf16 first, so both runs see the same values.
  std::vector<float> x, dy;
  for (float v : random_values(s.numel(), 21, 3.f)) x.push_back(float(px::bf16(v)));
  for (float v : random_values(s.numel(), 22)) dy.push_back(float(px::bf16(v)));
  Outputs lo, hi;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    lo = run<px::bf16>(rank, x, dy, s);
    hi = run<float>(rank, x, dy, s);
  });
  CHECK(relative_difference(lo.y, hi.y) < 1e-2);
  CHECK(relative_difference(lo.dx, hi.dx) < 1e-2);
  CHECK(relative_difference(lo.dgamma, hi.dgamma) < 1e-2);
  CHECK(relative_difference(lo.dbeta, hi.dbeta) < 1e-2);
}

TEST_CASE("LayerNorm keeps x, mean, rstd, then dy, and frees them in backward_weight", "[nn][layer_norm][memory]") {
  constexpr std::int64_t rows = 10, d = 8;
  std::int64_t after_forward = -1, after_backward_input = -1, after = -1;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    LN<float> ln(rank, d);
    const auto x = random_values(rows * d, 2);
    auto live = [&] { return static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations)); };
    LN<float>::Ctx ctx;
    auto y = ln.forward(ctx, px::View<const float, px::host::Memory>(x.data(), px::Shape{rows, d}));
    y.reset();
    after_forward = live();
    auto dx = ln.backward_input(ctx, px::View<const float, px::host::Memory>(x.data(), px::Shape{rows, d}));
    dx.reset();
    after_backward_input = live();
    ln.backward_weight(ctx);
    after = live();
  });
  CHECK(after_forward == (rows * d + 2 * rows) * 4);  // x; mean and rstd
  CHECK(after_backward_input == (2 * rows * d + 2 * rows) * 4);  // and dy
  CHECK(after == 0);
}

TEST_CASE("LayerNorm rejects bad sizes, passes out of order and wrong shapes", "[nn][layer_norm][errors]") {
  std::vector<std::string> msgs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    msgs.push_back(error_of([&] { LN<float> bad(rank, 0, {.name = "ln_0"}); }));
    msgs.push_back(error_of([&] { LN<float> bad(rank, 4, {.eps = -1.f, .name = "ln_1"}); }));
    LN<float> ln(rank, 4, {.name = "ln_2"});
    std::vector<float> x(8, 1.f);
    const px::View<const float, px::host::Memory> xv(x.data(), px::Shape{2, 4});
    LN<float>::Ctx ctx;
    msgs.push_back(error_of([&] { (void)ln.backward_input(ctx, xv); }));
    msgs.push_back(error_of([&] { ln.backward_weight(ctx); }));
    for (const px::Shape& s : {px::Shape{4, 2}, px::Shape{4}}) {
      LN<float>::Ctx c;
      msgs.push_back(error_of([&] { (void)ln.forward(c, px::View<const float, px::host::Memory>(x.data(), s)); }));
    }
    LN<float>::Ctx ok;
    (void)ln.forward(ok, xv);
    msgs.push_back(error_of([&] { (void)ln.forward(ok, xv); }));
    msgs.push_back(error_of([&] { (void)ln.backward_input(ok, xv.reshape(px::Shape{1, 2, 4})); }));
  });
  REQUIRE(msgs.size() == 8);
  CHECK_THAT(msgs[0], Catch::Contains("LayerNorm 'ln_0': dim 0 must be at least 1"));
  CHECK_THAT(msgs[1], Catch::Contains("LayerNorm 'ln_1': eps -1 must be >= 0"));
  CHECK_THAT(msgs[2], Catch::Contains("LayerNorm 'ln_2': backward_input called on a context whose forward has not run"));
  CHECK_THAT(msgs[3], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[4], Catch::Contains("input [4, 2] is not [..., 4] of rank >= 2"));
  CHECK_THAT(msgs[5], Catch::Contains("input [4] is not [..., 4] of rank >= 2"));
  CHECK_THAT(msgs[6], Catch::Contains("forward already ran"));
  CHECK_THAT(msgs[7], Catch::Contains("backward_input got dy [1, 2, 4], the forward's output was [2, 4]"));
}

// ---- the residual add fused into the LayerNorm -------------------------------------------------------------------

namespace {

// LayerNorm(x + r) and the gradients of x + r, gamma, beta with the residual fused (forward_residual,
// backward_input_residual), against the residual add, forward, backward_input and the gradient add run apart.
template <class T>
void fused_residual_equals_add_then_layernorm() {
  const px::Shape s{4, 3, 24};
  const std::int64_t n = s.numel();
  const auto x = converted<T>(random_values(n, 41, 2.f)), r = converted<T>(random_values(n, 42, 2.f));
  const auto dy = converted<T>(random_values(n, 43)), dres = converted<T>(random_values(n, 44));
  using V = px::View<const T, px::host::Memory>;
  Outputs fused, unfused;
  std::vector<float> fused_sum, unfused_sum;
  std::int64_t saved_fused = -1, saved_unfused = -2;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    auto live = [&] { return static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations)); };
    LN<T> ln(rank, 24);
    set_affine(ln, 45);
    const Backend::Context& c = rank.context();
    auto run = [&](bool fuse, Outputs& out, std::vector<float>& sum, std::int64_t& saved) {
      typename LN<T>::Ctx ctx;
      px::nn::TensorOf<Backend, T> y, dx;
      if (fuse) {
        y = ln.forward_residual(ctx, V(x.data(), s), V(r.data(), s));
      } else {
        px::nn::TensorOf<Backend, T> added(rank.allocator(), s, px::MemoryCategory::activations);
        px::copy(added.view(), V(r.data(), s));
        Backend::axpby(c, 1.f, V(x.data(), s), 1.f, added.view());
        y = ln.forward(ctx, added.cview());
      }
      sum = floats(LN<T>::residual(ctx).data(), n);
      out.y = floats(y.data(), n);
      y.reset();
      saved = live();
      if (fuse) {
        dx = ln.backward_input_residual(ctx, V(dy.data(), s), V(dres.data(), s));
      } else {
        dx = ln.backward_input(ctx, V(dy.data(), s));
        Backend::axpby(c, 1.f, V(dres.data(), s), 1.f, dx.view());
      }
      out.dx = floats(dx.data(), n);
      ln.backward_weight(ctx);
      out.dgamma = floats(ln.weight().grad().data(), 24);
      out.dbeta = floats(ln.bias().grad().data(), 24);
      ln.weight().zero_grad();
      ln.bias().zero_grad();
    };
    run(true, fused, fused_sum, saved_fused);
    run(false, unfused, unfused_sum, saved_unfused);
  });
  CHECK(fused_sum == unfused_sum);  // the same rounding of x + r
  CHECK(fused.y == unfused.y);      // the LayerNorm of the stored sum
  CHECK(saved_fused == saved_unfused);
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-2;  // dx: one rounding instead of two
  CHECK(relative_difference(fused.dx, unfused.dx) <= tol);
  CHECK(fused.dgamma == unfused.dgamma);
  CHECK(fused.dbeta == unfused.dbeta);
}

}  // namespace

TEMPLATE_TEST_CASE("LayerNorm with the residual add fused equals the add and the LayerNorm apart",
                   "[nn][layer_norm][fused]", float, px::bf16) {
  fused_residual_equals_add_then_layernorm<TestType>();
}

TEST_CASE("LayerNorm's residual passes reject mismatched shapes and passes out of order", "[nn][layer_norm][errors]") {
  std::vector<std::string> msgs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    LN<float> ln(rank, 4, {.name = "ln_2"});
    std::vector<float> x(8, 1.f);
    using V = px::View<const float, px::host::Memory>;
    const V xv(x.data(), px::Shape{2, 4}), flat(x.data(), px::Shape{8});
    LN<float>::Ctx ctx;
    msgs.push_back(error_of([&] { (void)ln.backward_input_residual(ctx, xv, xv); }));
    msgs.push_back(error_of([&] { (void)ln.forward_residual(ctx, xv, xv.reshape(px::Shape{1, 2, 4})); }));
    LN<float>::Ctx ok;
    (void)ln.forward_residual(ok, xv, xv);
    msgs.push_back(error_of([&] { (void)ln.forward_residual(ok, xv, xv); }));
    msgs.push_back(error_of([&] { (void)ln.backward_input_residual(ok, xv, flat); }));
    LN<float>::Ctx dy_ctx;
    (void)ln.forward_residual(dy_ctx, xv, xv);
    msgs.push_back(error_of([&] { (void)ln.backward_input_residual(dy_ctx, flat, xv); }));
  });
  REQUIRE(msgs.size() == 5);
  CHECK_THAT(msgs[0], Catch::Contains("LayerNorm 'ln_2': backward_input_residual called on a context whose forward has "
                                      "not run"));
  CHECK_THAT(msgs[1], Catch::Contains("LayerNorm 'ln_2': residual [1, 2, 4] does not match the input [2, 4]"));
  CHECK_THAT(msgs[2], Catch::Contains("forward_residual called on a context whose forward already ran"));
  CHECK_THAT(msgs[3], Catch::Contains("backward_input_residual got a residual gradient [8], the forward's input was "
                                      "[2, 4]"));
  CHECK_THAT(msgs[4], Catch::Contains("backward_input got dy [8], the forward's output was [2, 4]"));
}

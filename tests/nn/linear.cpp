// Linear: forward against a direct loop, gradients against finite differences, pass-order errors; the GELU
// activation fused into its GEMMs against Linear and GELU run one after the other.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include <parallax/comm/launch.hpp>
#include <parallax/core/bf16.hpp>
#include <parallax/nn/gelu.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/sequential.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace px = parallax;
using Backend = px::host::Backend;
using px::test::error_of;

TEST_CASE("Linear forward matches x W^T + b", "[nn][linear]") {
  std::vector<float> got, want;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    px::nn::Linear<Backend, float> fc(rank, 5, 3, {.name = "fc"});
    px::test::random_values(3, 5).swap(want);  // reuse as bias values
    for (std::int64_t j = 0; j < 3; ++j) fc.bias()->value().data()[j] = want[static_cast<std::size_t>(j)];
    auto x = px::test::random_values(2 * 4 * 5, 1);
    decltype(fc)::Ctx ctx;
    auto y = fc.forward(ctx, px::View<const float, px::host::Memory>(x.data(), px::Shape{2, 4, 5}));
    got = px::to_vector(y.cview());
    want.assign(2 * 4 * 3, 0.f);
    for (int n = 0; n < 8; ++n)
      for (int o = 0; o < 3; ++o) {
        double s = fc.bias()->value().data()[o];
        for (int i = 0; i < 5; ++i) s += double(x[n * 5 + i]) * double(fc.weight().value().data()[o * 5 + i]);
        want[n * 3 + o] = float(s);
      }
  });
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-5).margin(1e-6));
}

TEST_CASE("Linear gradients match finite differences", "[nn][linear][gradcheck]") {
  std::vector<px::test::GradError> errs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    px::nn::Linear<Backend, float> fc(rank, 6, 4, {.init_std = 0.5f, .name = "fc"});
    errs = px::test::gradcheck(fc, px::test::random_values(3 * 2 * 6, 3), px::Shape{3, 2, 6});
  });
  REQUIRE(errs.size() == 3);
  for (const auto& e : errs) {
    INFO(e.str());
    CHECK(e.ok());
  }
}

TEST_CASE("Linear frees what it saved once backward_weight is done", "[nn][linear][memory]") {
  std::int64_t during = -1, after = -1, expected = 0;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    px::nn::Linear<Backend, float> fc(rank, 8, 4);
    auto x = px::test::random_values(10 * 8, 2);
    decltype(fc)::Ctx ctx;
    auto y = fc.forward(ctx, px::View<const float, px::host::Memory>(x.data(), px::Shape{10, 8}));
    during = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    expected = (10 * 8 + 10 * 4) * 4;  // saved x, and y itself
    auto dx = fc.backward_input(ctx, y.cview());
    fc.backward_weight(ctx);
    y.reset();
    dx.reset();
    after = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
  });
  CHECK(during == expected);
  CHECK(after == 0);
}

TEST_CASE("Linear rejects passes out of order and wrong shapes", "[nn][linear][errors]") {
  std::vector<std::string> msgs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    px::nn::Linear<Backend, float> fc(rank, 4, 2, {.name = "proj"});
    std::vector<float> x(8, 1.f);
    px::View<const float, px::host::Memory> xv(x.data(), px::Shape{2, 4});
    decltype(fc)::Ctx ctx;
    msgs.push_back(error_of([&] { (void)fc.backward_input(ctx, xv); }));
    msgs.push_back(error_of([&] { fc.backward_weight(ctx); }));
    msgs.push_back(error_of([&] { (void)fc.forward(ctx, px::View<const float, px::host::Memory>(x.data(), px::Shape{4, 2})); }));
    decltype(fc)::Ctx ok;
    (void)fc.forward(ok, xv);
    msgs.push_back(error_of([&] { (void)fc.forward(ok, xv); }));
    msgs.push_back(error_of([&] { (void)fc.backward_input(ok, xv); }));
  });
  REQUIRE(msgs.size() == 5);
  CHECK_THAT(msgs[0], Catch::Contains("Linear 'proj': backward_input called on a context whose forward has not run"));
  CHECK_THAT(msgs[1], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[2], Catch::Contains("input [4, 2] does not end in 4 features"));
  CHECK_THAT(msgs[3], Catch::Contains("forward already ran"));
  CHECK_THAT(msgs[4], Catch::Contains("backward_input got dy [2, 4], the forward's output was [2, 2]"));
}

// ---- the GELU activation fused into the GEMMs ----------------------------------------------------------------------

namespace {

template <class T>
using View = px::View<const T, px::host::Memory>;

// max |a - b| / max |b|.
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

template <class T>
std::vector<float> floats(View<T> v) {
  std::vector<float> out;
  for (std::int64_t i = 0; i < v.numel(); ++i) out.push_back(float(v.data()[i]));
  return out;
}

template <class T>
std::vector<T> stored(const std::vector<float>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// y, dx and the gradients (in parameter order, concatenated) of one step.
struct Step {
  std::vector<float> y, dx, grads;
};

template <class T>
std::vector<float> grads_of(const px::nn::ParameterList<T, px::host::Memory>& params) {
  std::vector<float> g;
  for (auto* p : params) {
    const auto v = floats<T>(p->grad());
    g.insert(g.end(), v.begin(), v.end());
  }
  return g;
}

template <class T>
void check_steps(const Step& fused, const Step& unfused) {
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-2;
  CHECK(relative_difference(fused.y, unfused.y) <= tol);
  CHECK(relative_difference(fused.dx, unfused.dx) <= tol);
  CHECK(relative_difference(fused.grads, unfused.grads) <= tol);
}

// Linear{gelu} against Linear then GELU, with the same parameters.
template <class T>
void fused_linear_equals_linear_then_gelu() {
  using Fc = px::nn::Linear<Backend, T>;
  const px::Shape xs{3, 2, 6}, ys{3, 2, 10};
  const auto x = stored<T>(px::test::random_values(xs.numel(), 5, 2.f));
  const auto dy = stored<T>(px::test::random_values(ys.numel(), 6));
  Step fused, unfused;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    Fc fc(rank, 6, 10, {.activation = px::Activation::gelu, .init_std = 0.5f, .name = "fc"});
    px::nn::Sequential ref("ref", Fc(rank, 6, 10, {.init_std = 0.5f, .name = "fc"}), px::nn::GELU<Backend, T>(rank));
    for (auto* p : {fc.bias(), ref.template get<0>().bias()})  // a non-zero bias, the same in both
      for (std::int64_t j = 0; j < 10; ++j) p->value().data()[j] = T(0.1f * static_cast<float>(j - 5));
    auto step = [&](auto& m) {
      typename std::remove_reference_t<decltype(m)>::Ctx ctx;
      Step s;
      s.y = floats<T>(m.forward(ctx, View<T>(x.data(), xs)).cview());
      s.dx = floats<T>(m.backward_input(ctx, View<T>(dy.data(), ys)).cview());
      m.backward_weight(ctx);
      s.grads = grads_of<T>(m.parameters());
      return s;
    };
    fused = step(fc);
    unfused = step(ref);
  });
  check_steps<T>(fused, unfused);
}

// fc1{gelu} -> fc2 with the GELU's backward in fc2's dx GEMM, against Linear, GELU, Linear.
template <class T>
void folded_gelu_equals_linear_gelu_linear() {
  using Fc = px::nn::Linear<Backend, T>;
  const px::Shape xs{4, 2, 6}, ys{4, 2, 5};
  const auto x = stored<T>(px::test::random_values(xs.numel(), 7, 2.f));
  const auto dy = stored<T>(px::test::random_values(ys.numel(), 8));
  Step fused, unfused;
  std::int64_t kept_after_forward = -1, kept_want = 0;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    Fc fc1(rank, 6, 12, {.activation = px::Activation::gelu, .init_std = 0.5f, .seed = 1, .name = "fc1"});
    Fc fc2(rank, 12, 5, {.init_std = 0.5f, .seed = 1, .name = "fc2"});
    px::nn::Sequential ref("ref", Fc(rank, 6, 12, {.init_std = 0.5f, .seed = 1, .name = "fc1"}),
                           px::nn::GELU<Backend, T>(rank),
                           Fc(rank, 12, 5, {.init_std = 0.5f, .seed = 1, .name = "fc2"}));
    for (auto* p : {fc1.bias(), ref.template get<0>().bias()})
      for (std::int64_t j = 0; j < 12; ++j) p->value().data()[j] = T(0.05f * static_cast<float>(j - 6));
    auto live = [&] { return static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations)); };
    {
      typename Fc::Ctx c1, c2;
      auto h = fc1.forward(c1, View<T>(x.data(), xs));
      auto y = fc2.forward(c2, h.cview());
      h.reset();
      fused.y = floats<T>(y.cview());
      y.reset();
      kept_after_forward = live();
      kept_want = (xs.numel() + 2 * 4 * 2 * 12) * static_cast<std::int64_t>(sizeof(T));  // x, pre, fc2's x
      auto dpre = fc2.backward_input(c2, View<T>(dy.data(), ys), Fc::preactivation(c1));
      fused.dx = floats<T>(fc1.backward_input_preactivation(c1, std::move(dpre)).cview());
      fc2.backward_weight(c2);
      fc1.backward_weight(c1);
      auto g = grads_of<T>(fc1.parameters());
      const auto g2 = grads_of<T>(fc2.parameters());
      g.insert(g.end(), g2.begin(), g2.end());
      fused.grads = g;
    }
    typename decltype(ref)::Ctx ctx;
    unfused.y = floats<T>(ref.forward(ctx, View<T>(x.data(), xs)).cview());
    unfused.dx = floats<T>(ref.backward_input(ctx, View<T>(dy.data(), ys)).cview());
    ref.backward_weight(ctx);
    unfused.grads = grads_of<T>(ref.parameters());
  });
  check_steps<T>(fused, unfused);
  CHECK(kept_after_forward == kept_want);
}

}  // namespace

TEMPLATE_TEST_CASE("Linear with a GELU activation equals Linear then GELU", "[nn][linear][fused]", float, px::bf16) {
  fused_linear_equals_linear_then_gelu<TestType>();
}

TEMPLATE_TEST_CASE("Linear folds the previous layer's GELU backward into its dx GEMM", "[nn][linear][fused]", float,
                   px::bf16) {
  folded_gelu_equals_linear_gelu_linear<TestType>();
}

TEST_CASE("Linear with a GELU activation: gradients match finite differences", "[nn][linear][gradcheck]") {
  std::vector<px::test::GradError> errs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    px::nn::Linear<Backend, float> fc(rank, 5, 4, {.activation = px::Activation::gelu, .init_std = 0.5f, .name = "fc"});
    errs = px::test::gradcheck(fc, px::test::random_values(3 * 2 * 5, 4), px::Shape{3, 2, 5});
  });
  REQUIRE(errs.size() == 3);
  for (const auto& e : errs) {
    INFO(e.str());
    CHECK(e.ok());
  }
}

TEST_CASE("Linear with a GELU activation keeps x and the pre-activation, and frees both", "[nn][linear][memory]") {
  std::int64_t after_forward = -1, after_backward_input = -1, after = -1;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    px::nn::Linear<Backend, float> fc(rank, 8, 4, {.activation = px::Activation::gelu});
    auto live = [&] { return static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations)); };
    const auto x = px::test::random_values(10 * 8, 2);
    decltype(fc)::Ctx ctx;
    auto y = fc.forward(ctx, px::View<const float, px::host::Memory>(x.data(), px::Shape{10, 8}));
    after_forward = live();
    auto dx = fc.backward_input(ctx, y.cview());  // the gradient takes over the pre-activation's storage
    y.reset();
    dx.reset();
    after_backward_input = live();
    fc.backward_weight(ctx);
    after = live();
  });
  CHECK(after_forward == (10 * 8 + 2 * 10 * 4) * 4);  // saved x and pre-activation, and y itself
  CHECK(after_backward_input == (10 * 8 + 10 * 4) * 4);
  CHECK(after == 0);
}

TEST_CASE("Linear's fused backward passes reject wrong shapes and passes out of order", "[nn][linear][errors]") {
  std::vector<std::string> msgs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    using Fc = px::nn::Linear<Backend, float>;
    Fc fc(rank, 4, 2, {.activation = px::Activation::gelu, .name = "fc"});
    std::vector<float> x(8, 1.f);
    const px::View<const float, px::host::Memory> xv(x.data(), px::Shape{2, 4}), yv(x.data(), px::Shape{2, 2});
    Fc::Ctx none;
    msgs.push_back(error_of([&] { (void)fc.backward_input_preactivation(none, {}); }));
    Fc::Ctx a;
    (void)fc.forward(a, xv);
    msgs.push_back(error_of([&] { (void)fc.backward_input(a, yv, yv); }));
    Fc::Ctx b;
    (void)fc.forward(b, xv);
    msgs.push_back(error_of([&] { (void)fc.backward_input_preactivation(b, {}); }));
  });
  REQUIRE(msgs.size() == 3);
  CHECK_THAT(msgs[0], Catch::Contains("Linear 'fc': backward_input_preactivation called on a context whose forward has "
                                      "not run"));
  CHECK_THAT(msgs[1], Catch::Contains("Linear 'fc': backward_input got a GELU input [2, 2], the forward's input was "
                                      "[2, 4]"));
  CHECK_THAT(msgs[2], Catch::Contains("Linear 'fc': backward_input got dpre [0], the forward's output was [2, 2]"));
}

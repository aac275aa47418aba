// GELU: forward against a double-precision loop, dx against finite differences, bf16 against fp32, freeing, errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>

#include <parallax/comm/launch.hpp>
#include <parallax/core/bf16.hpp>
#include <parallax/nn/gelu.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace px = parallax;
using Backend = px::host::Backend;
using px::test::error_of;
using px::test::random_values;

namespace {

template <class T>
using GELU = px::nn::GELU<Backend, T>;

// y and dx of a GELU storing T, on x and dy given as floats (already representable in T).
template <class T>
std::pair<std::vector<float>, std::vector<float>> run(px::Rank<Backend>& rank, const std::vector<float>& x,
                                                      const std::vector<float>& dy, px::Shape s) {
  GELU<T> act(rank);
  std::vector<T> xt, dyt;
  for (std::size_t i = 0; i < x.size(); ++i) {
    xt.push_back(T(x[i]));
    dyt.push_back(T(dy[i]));
  }
  typename GELU<T>::Ctx ctx;
  auto y = act.forward(ctx, px::View<const T, px::host::Memory>(xt.data(), s));
  auto dx = act.backward_input(ctx, px::View<const T, px::host::Memory>(dyt.data(), s));
  act.backward_weight(ctx);
  std::pair<std::vector<float>, std::vector<float>> out;
  for (std::int64_t i = 0; i < s.numel(); ++i) {
    out.first.push_back(float(y.data()[i]));
    out.second.push_back(float(dx.data()[i]));
  }
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

}  // namespace

TEST_CASE("GELU forward matches the tanh formula in double precision", "[nn][gelu]") {
  const px::Shape s{3, 2, 7};
  const auto x = random_values(s.numel(), 1, 4.f);
  std::vector<float> got;
  std::size_t params = 1;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    GELU<float> act(rank, "act");
    params = act.parameters().size();
    GELU<float>::Ctx ctx;
    got = px::to_vector(act.forward(ctx, px::View<const float, px::host::Memory>(x.data(), s)).cview());
  });
  CHECK(params == 0);
  REQUIRE(got.size() == x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    const double want = 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
    CHECK(got[i] == Approx(want).epsilon(1e-5).margin(1e-6));
  }
}

TEST_CASE("GELU dx matches finite differences", "[nn][gelu][gradcheck]") {
  std::vector<px::test::GradError> errs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    GELU<float> act(rank);
    errs = px::test::gradcheck(act, random_values(4 * 2 * 5, 6, 3.f), px::Shape{4, 2, 5});
  });
  REQUIRE(errs.size() == 1);  // dx only: no parameters
  INFO(errs[0].str());
  CHECK(errs[0].ok());
}

TEST_CASE("GELU in bf16 stays within 1e-2 of fp32", "[nn][gelu][bf16]") {
  const px::Shape s{4, 3, 16};
  std::vector<float> x, dy;  // rounded to bf16 first, so both runs see the same values
  for (float v : random_values(s.numel(), 31, 4.f)) x.push_back(float(px::bf16(v)));
  for (float v : random_values(s.numel(), 32)) dy.push_back(float(px::bf16(v)));
  std::pair<std::vector<float>, std::vector<float>> lo, hi;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    lo = run<px::bf16>(rank, x, dy, s);
    hi = run<float>(rank, x, dy, s);
  });
  CHECK(relative_difference(lo.first, hi.first) < 1e-2);
  CHECK(relative_difference(lo.second, hi.second) < 1e-2);
}

TEST_CASE("GELU keeps x until backward_input and holds nothing after", "[nn][gelu][memory]") {
  const px::Shape s{5, 2, 4};
  std::int64_t after_forward = -1, after_backward_input = -1, after = -1;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    GELU<float> act(rank);
    const auto x = random_values(s.numel(), 2);
    auto live = [&] { return static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations)); };
    GELU<float>::Ctx ctx;
    auto y = act.forward(ctx, px::View<const float, px::host::Memory>(x.data(), s));
    y.reset();
    after_forward = live();
    auto dx = act.backward_input(ctx, px::View<const float, px::host::Memory>(x.data(), s));
    dx.reset();
    after_backward_input = live();
    act.backward_weight(ctx);
    after = live();
  });
  CHECK(after_forward == s.numel() * 4);
  CHECK(after_backward_input == 0);
  CHECK(after == 0);
}

TEST_CASE("GELU rejects passes out of order and a wrong dy", "[nn][gelu][errors]") {
  std::vector<std::string> msgs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    GELU<float> act(rank, "act");
    std::vector<float> x(8, 1.f);
    const px::View<const float, px::host::Memory> xv(x.data(), px::Shape{2, 4});
    GELU<float>::Ctx ctx;
    msgs.push_back(error_of([&] { (void)act.backward_input(ctx, xv); }));
    msgs.push_back(error_of([&] { act.backward_weight(ctx); }));
    (void)act.forward(ctx, xv);
    msgs.push_back(error_of([&] { (void)act.forward(ctx, xv); }));
    msgs.push_back(error_of([&] { act.backward_weight(ctx); }));
    msgs.push_back(error_of([&] { (void)act.backward_input(ctx, xv.reshape(px::Shape{4, 2})); }));
  });
  REQUIRE(msgs.size() == 5);
  CHECK_THAT(msgs[0], Catch::Contains("GELU 'act': backward_input called on a context whose forward has not run"));
  CHECK_THAT(msgs[1], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[2], Catch::Contains("forward already ran"));
  CHECK_THAT(msgs[3], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[4], Catch::Contains("backward_input got dy [4, 2], the forward's output was [2, 4]"));
}

// Linear: forward against a direct loop, gradients against finite differences, pass-order errors.
#include <catch2/catch.hpp>

#include <parallax/comm/launch.hpp>
#include <parallax/nn/linear.hpp>

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

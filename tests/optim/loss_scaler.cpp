// Tests for parallax/optim/loss_scaler.hpp: skip, hysteresis, backoff, growth, min scale, option checks.
#include <catch2/catch.hpp>

#include <parallax/optim/loss_scaler.hpp>

#include "../support/support.hpp"

#include <cstdint>
#include <limits>
#include <vector>

namespace optim = parallax::optim;
using Catch::Matchers::Contains;
using parallax::test::error_of;

namespace {

//! The scales after each step of `overflows` ('o' overflow, '.' good) and whether each was skipped.
struct Trace {
  std::vector<float> scales;
  std::vector<bool> skipped;
};
Trace run(optim::DynamicLossScaler& s, const char* overflows) {
  Trace t;
  for (const char* c = overflows; *c != 0; ++c) {
    t.skipped.push_back(s.update(*c == 'o'));
    t.scales.push_back(s.scale());
  }
  return t;
}

}  // namespace

TEST_CASE("DynamicLossScaler starts as PyTorch's GradScaler with hysteresis 2", "[optim][loss_scaler]") {
  const optim::DynamicLossScaler s;
  CHECK(s.scale() == 65536.f);
  CHECK(s.inverse_scale() == 1.f / 65536);
  CHECK(s.skipped_steps() == 0);
  CHECK(s.options().growth_factor == 2.f);
  CHECK(s.options().backoff_factor == 0.5f);
  CHECK(s.options().growth_interval == 2000);
  CHECK(s.options().hysteresis == 2);
  CHECK(s.options().min_scale == 1.f);
}

TEST_CASE("DynamicLossScaler backs off after hysteresis consecutive overflows", "[optim][loss_scaler]") {
  optim::DynamicLossScaler s({.initial_scale = 1024.f, .growth_interval = 100, .hysteresis = 2});
  const auto t = run(s, "ooo.o.oo");
  // 1st overflow: skipped, scale kept; 2nd: backs off; 3rd (still consecutive): backs off again; a good step
  // resets the count, so the next lone overflow keeps the scale and the pair after backs off once.
  CHECK(t.scales == std::vector<float>{1024, 512, 256, 256, 256, 256, 256, 128});
  CHECK(t.skipped == std::vector<bool>{true, true, true, false, true, false, true, true});
  CHECK(s.skipped_steps() == 6);
  CHECK(s.overflow_steps() == 2);
  CHECK(s.good_steps() == 0);
}

TEST_CASE("DynamicLossScaler with hysteresis 1 is PyTorch's GradScaler", "[optim][loss_scaler]") {
  optim::DynamicLossScaler s({.initial_scale = 8.f,
                              .growth_factor = 4.f,
                              .backoff_factor = 0.25f,
                              .growth_interval = 3,
                              .hysteresis = 1,
                              .min_scale = 0.25f});
  const auto t = run(s, "o...o..o...");
  CHECK(t.scales == std::vector<float>{2, 2, 2, 8, 2, 2, 2, 0.5f, 0.5f, 0.5f, 2});
  CHECK(s.skipped_steps() == 3);
}

TEST_CASE("DynamicLossScaler grows after growth_interval consecutive good steps", "[optim][loss_scaler]") {
  optim::DynamicLossScaler s({.initial_scale = 4.f, .growth_interval = 3});
  const auto t = run(s, "......");
  CHECK(t.scales == std::vector<float>{4, 4, 8, 8, 8, 16});
  CHECK(s.good_steps() == 0);
  CHECK(s.skipped_steps() == 0);
  // An overflow restarts the good-step count even when the scale is kept (hysteresis).
  const auto u = run(s, "..o...");
  CHECK(u.scales == std::vector<float>{16, 16, 16, 16, 16, 32});
  CHECK(s.good_steps() == 0);
}

TEST_CASE("DynamicLossScaler stops at min_scale and never grows to infinity", "[optim][loss_scaler]") {
  optim::DynamicLossScaler low({.initial_scale = 4.f, .hysteresis = 1, .min_scale = 1.5f});
  const auto t = run(low, "oooo");
  CHECK(t.scales == std::vector<float>{2, 1.5f, 1.5f, 1.5f});
  CHECK(t.skipped == std::vector<bool>{true, true, true, true});  // still skipped at the floor
  CHECK(low.skipped_steps() == 4);

  const float big = std::numeric_limits<float>::max() / 1.5f;
  optim::DynamicLossScaler high({.initial_scale = big, .growth_interval = 1});
  const auto u = run(high, "...");
  CHECK(u.scales == std::vector<float>{big, big, big});
}

TEST_CASE("DynamicLossScaler rejects bad options", "[optim][loss_scaler]") {
  using O = optim::LossScalerOptions;
  const auto make = [](const O& o) { optim::DynamicLossScaler s(o); };
  CHECK_THAT(
      error_of([&] { make({.initial_scale = 0.5f}); }),
      Contains("DynamicLossScaler: needs finite 0 < min_scale <= initial_scale, got min_scale 1, initial_scale 0.5"));
  CHECK_THAT(error_of([&] { make({.min_scale = 0.f}); }), Contains("got min_scale 0"));
  CHECK_THAT(error_of([&] { make({.initial_scale = std::numeric_limits<float>::infinity()}); }),
             Contains("initial_scale inf"));
  CHECK_THAT(error_of([&] { make({.growth_factor = 1.f}); }),
             Contains("DynamicLossScaler: growth_factor 1 is not finite and > 1"));
  CHECK_THAT(error_of([&] { make({.backoff_factor = 1.f}); }),
             Contains("DynamicLossScaler: backoff_factor 1 is not in (0, 1)"));
  CHECK_THAT(error_of([&] { make({.growth_interval = 0}); }),
             Contains("DynamicLossScaler: growth_interval 0 is not >= 1"));
  CHECK_THAT(error_of([&] { make({.hysteresis = 0}); }), Contains("DynamicLossScaler: hysteresis 0 is not >= 1"));
}

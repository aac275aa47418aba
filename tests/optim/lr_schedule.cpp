// Tests for parallax/optim/lr_schedule.hpp: ConstantLR, WarmupCosine at key steps, the LRSchedule concept.
#include <catch2/catch.hpp>

#include <parallax/optim/lr_schedule.hpp>

#include "../support/support.hpp"

#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <string>

namespace optim = parallax::optim;
using Catch::Matchers::Contains;
using parallax::test::error_of;

namespace {
struct TakesString {
  float operator()(const std::string&) const { return 0; }
};
static_assert(optim::LRSchedule<optim::ConstantLR> && optim::LRSchedule<optim::WarmupCosine>);
static_assert(optim::LRSchedule<std::function<float(std::int64_t)>>);
static_assert(optim::LRSchedule<decltype([](std::int64_t t) { return 1.f / float(t); })>);
static_assert(!optim::LRSchedule<int> && !optim::LRSchedule<TakesString>);
}  // namespace

TEST_CASE("ConstantLR is the same at every step", "[optim][lr_schedule]") {
  const optim::ConstantLR lr{3e-4f};
  CHECK(lr(1) == 3e-4f);
  CHECK(lr(1000000) == 3e-4f);
  CHECK_THAT(error_of([&] { (void)lr(0); }), Contains("ConstantLR: step 0 is not 1-based"));
}

TEST_CASE("WarmupCosine ramps linearly, decays on a cosine, then stays at min", "[optim][lr_schedule]") {
  const optim::WarmupCosine lr{.peak = 1e-3f, .min = 1e-4f, .warmup_steps = 10, .total_steps = 110};
  // Warmup: peak * t / warmup_steps, peak at t = warmup_steps.
  CHECK(lr(1) == Approx(1e-4).epsilon(1e-6));
  CHECK(lr(5) == Approx(5e-4).epsilon(1e-6));
  CHECK(lr(10) == 1e-3f);
  // Decay over the 100 steps after warmup: a quarter, half and three quarters of the way.
  const double span = 1e-3 - 1e-4;
  CHECK(lr(35) == Approx(1e-4 + span * 0.5 * (1 + std::cos(std::numbers::pi / 4))).epsilon(1e-6));
  CHECK(lr(60) == Approx(5.5e-4).epsilon(1e-6));
  CHECK(lr(85) == Approx(1e-4 + span * 0.5 * (1 + std::cos(3 * std::numbers::pi / 4))).epsilon(1e-6));
  CHECK(lr(110) == 1e-4f);
  CHECK(lr(111) == 1e-4f);
  CHECK(lr(1000000) == 1e-4f);
  // Rising through the warmup, never rising after it.
  for (std::int64_t t = 2; t <= 10; ++t) CHECK(lr(t) > lr(t - 1));
  for (std::int64_t t = 11; t <= 120; ++t) CHECK(lr(t) <= lr(t - 1));
}

TEST_CASE("WarmupCosine with a start rate, without warmup, and all warmup", "[optim][lr_schedule]") {
  const optim::WarmupCosine from{.peak = 1.f, .min = 0.f, .warmup_steps = 4, .total_steps = 8, .start = 0.2f};
  CHECK(from(1) == Approx(0.4).epsilon(1e-6));
  CHECK(from(2) == Approx(0.6).epsilon(1e-6));
  CHECK(from(4) == 1.f);
  CHECK(from(6) == Approx(0.5).epsilon(1e-6));
  CHECK(from(8) == 0.f);

  const optim::WarmupCosine no_warmup{.peak = 2.f, .min = 1.f, .warmup_steps = 0, .total_steps = 4};
  CHECK(no_warmup(1) == Approx(1 + 0.5 * (1 + std::cos(std::numbers::pi / 4))).epsilon(1e-6));
  CHECK(no_warmup(2) == Approx(1.5).epsilon(1e-6));
  CHECK(no_warmup(4) == 1.f);

  const optim::WarmupCosine no_decay{.peak = 2.f, .min = 1.f, .warmup_steps = 4, .total_steps = 4};
  CHECK(no_decay(4) == 2.f);
  CHECK(no_decay(5) == 1.f);
}

TEST_CASE("WarmupCosine works through std::function and rejects bad settings", "[optim][lr_schedule]") {
  const optim::WarmupCosine wc{.peak = 6e-4f, .min = 6e-5f, .warmup_steps = 2000, .total_steps = 600000};
  const std::function<float(std::int64_t)> erased = wc;
  for (std::int64_t t : {1, 1999, 2000, 2001, 300000, 600000, 700000}) CHECK(erased(t) == wc(t));
  CHECK(wc(1) == Approx(3e-7).epsilon(1e-6));

  CHECK_THAT(error_of([&] { (void)wc(0); }), Contains("WarmupCosine: step 0 is not 1-based"));
  CHECK_THAT(error_of([] { (void)optim::WarmupCosine{.peak = 1, .warmup_steps = 10, .total_steps = 5}(1); }),
             Contains("WarmupCosine: needs 0 <= warmup_steps <= total_steps, got warmup_steps 10, total_steps 5"));
  CHECK_THAT(error_of([] { (void)optim::WarmupCosine{.peak = 1, .warmup_steps = -1, .total_steps = 5}(1); }),
             Contains("got warmup_steps -1"));
}

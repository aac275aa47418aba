// parallax/optim/lr_schedule.hpp — learning-rate schedules: ConstantLR, WarmupCosine and the LRSchedule concept.
#pragma once

#include <cmath>
#include <concepts>
#include <cstdint>
#include <functional>
#include <numbers>

#include <fmt/format.h>

#include "../error.hpp"

namespace parallax::optim {

//! A learning-rate schedule: a copyable callable from the 1-based step (the update about to be applied) to
//! that step's learning rate. `ConstantLR`, `WarmupCosine`, a lambda and `std::function<float(std::int64_t)>`
//! all model it.
//! @code
//! std::function<float(std::int64_t)> lr = optim::WarmupCosine{.peak = 3e-4f, .min = 3e-5f, .warmup_steps = 100,
//!                                                             .total_steps = 10000};
//! float rate = lr(step);
//! @endcode
template <class S>
concept LRSchedule = std::copy_constructible<S> && requires(const S& s, std::int64_t step) {
  { s(step) } -> std::convertible_to<float>;
};

namespace detail {
inline void check_step_number(const char* schedule, std::int64_t step) {
  if (step < 1) throw Error(fmt::format("{}: step {} is not 1-based", schedule, step));
}
}  // namespace detail

//! The same learning rate at every step.
struct ConstantLR {
  float lr = 0;

  //! `lr`, for any step >= 1.
  [[nodiscard]] float operator()(std::int64_t step) const {
    detail::check_step_number("ConstantLR", step);
    return lr;
  }
};

//! Linear warmup then cosine decay (GPT-style, as Megatron's "cosine" style), at 1-based step t:
//! - t <= warmup_steps:            start + (peak - start) * t / warmup_steps   (peak at t = warmup_steps)
//! - warmup_steps < t <= total:    min + (peak - min) * (1 + cos(pi * (t - warmup_steps) / (total - warmup_steps))) / 2
//! - t > total_steps:              min.
//! Formed in fp64, returned as float. `warmup_steps` may be 0; `total_steps >= warmup_steps`.
//! @code
//! optim::WarmupCosine lr{.peak = 6e-4f, .min = 6e-5f, .warmup_steps = 2000, .total_steps = 600000};
//! lr(1);        // 3e-7: 1/2000 of the way up
//! lr(2000);     // 6e-4
//! lr(600000);   // 6e-5
//! @endcode
struct WarmupCosine {
  float peak = 0;
  float min = 0;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 0;
  float start = 0;  //!< the rate the warmup ramps from (reached at step 0, so step 1 is already above it)

  [[nodiscard]] float operator()(std::int64_t step) const {
    detail::check_step_number("WarmupCosine", step);
    if (warmup_steps < 0 || total_steps < warmup_steps)
      throw Error(
          fmt::format("WarmupCosine: needs 0 <= warmup_steps <= total_steps, got warmup_steps {}, total_steps {}",
                      warmup_steps, total_steps));
    if (step <= warmup_steps)
      return static_cast<float>(start +
                                (double{peak} - start) * static_cast<double>(step) / static_cast<double>(warmup_steps));
    if (step >= total_steps) return min;
    const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
    return static_cast<float>(min + (double{peak} - min) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
  }
};

static_assert(LRSchedule<ConstantLR> && LRSchedule<WarmupCosine> && LRSchedule<std::function<float(std::int64_t)>>);

}  // namespace parallax::optim

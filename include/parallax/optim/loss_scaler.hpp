// parallax/optim/loss_scaler.hpp — DynamicLossScaler: fp16 loss scaling with backoff, growth and hysteresis.
#pragma once

#include <cmath>
#include <cstdint>

#include <fmt/format.h>

#include "../error.hpp"

namespace parallax::optim {

//! Options of a `DynamicLossScaler`; the defaults are PyTorch's GradScaler's plus DeepSpeed's hysteresis 2.
struct LossScalerOptions {
  float initial_scale = 65536.f;
  float growth_factor = 2.f;            //!< > 1
  float backoff_factor = 0.5f;          //!< in (0, 1)
  std::int64_t growth_interval = 2000;  //!< consecutive good steps before the scale grows
  int hysteresis = 2;                   //!< consecutive overflowing steps before the scale backs off
  float min_scale = 1.f;                //!< the scale never backs off below this
};

//! Dynamic loss scaling for fp16 training: the loss is multiplied by `scale()` before the backward, the
//! gradients by 1 / `scale()` in the update, and `update(found_inf)` is called once per step with whether
//! any gradient (on any rank: that reduction is the optimizer's) was NaN or infinite.
//!
//! Exact semantics of `update(found_inf)`:
//! - found_inf: the step is skipped (returns true, `skipped_steps()` counts it) and the good-step count
//!   restarts at 0. The overflow count goes up by 1; once it reaches `hysteresis`, this and every further
//!   consecutive overflowing step multiply the scale by `backoff_factor`, but not below `min_scale`. At
//!   `min_scale` overflowing steps are still skipped (no error).
//! - otherwise: the step is applied (returns false), the overflow count restarts at 0 (hysteresis is about
//!   consecutive overflows), and the good-step count goes up by 1; when it reaches `growth_interval` the
//!   scale is multiplied by `growth_factor` (unless that would overflow float) and the count restarts at 0.
//!
//! So with hysteresis 1 it is exactly PyTorch's GradScaler; with hysteresis h, like DeepSpeed's
//! `DynamicLossScaler(delayed_shift = h, consecutive_hysteresis = True)`.
//! @code
//! optim::DynamicLossScaler scaler;                                   // scale 65536
//! auto dlogits = loss.backward_input(ctx, scaler.scale() / tokens);  // gradients scaled by scale()
//! ...                                                                // backward, all-reduce, found_inf
//! const float grad_scale = scaler.inverse_scale();                   // read before update() changes it
//! if (!scaler.update(found_inf)) apply_update(grad_scale);
//! @endcode
class DynamicLossScaler {
 public:
  //! Throws unless initial_scale and min_scale are finite, 0 < min_scale <= initial_scale, growth_factor > 1,
  //! 0 < backoff_factor < 1, growth_interval >= 1 and hysteresis >= 1.
  explicit DynamicLossScaler(const LossScalerOptions& o = {}) : options_(o), scale_(o.initial_scale) {
    if (!(o.min_scale > 0.f && o.min_scale <= o.initial_scale) || !std::isfinite(o.initial_scale))
      throw Error(
          fmt::format("DynamicLossScaler: needs finite 0 < min_scale <= initial_scale, got min_scale {}, "
                      "initial_scale {}",
                      o.min_scale, o.initial_scale));
    if (!(o.growth_factor > 1.f) || !std::isfinite(o.growth_factor))
      throw Error(fmt::format("DynamicLossScaler: growth_factor {} is not finite and > 1", o.growth_factor));
    if (!(o.backoff_factor > 0.f && o.backoff_factor < 1.f))
      throw Error(fmt::format("DynamicLossScaler: backoff_factor {} is not in (0, 1)", o.backoff_factor));
    if (o.growth_interval < 1)
      throw Error(fmt::format("DynamicLossScaler: growth_interval {} is not >= 1", o.growth_interval));
    if (o.hysteresis < 1) throw Error(fmt::format("DynamicLossScaler: hysteresis {} is not >= 1", o.hysteresis));
  }

  //! The factor the loss is multiplied by for the current step.
  [[nodiscard]] float scale() const noexcept { return scale_; }
  //! 1 / scale(): the gradients' factor in the update (`StepInfo::grad_scale`, before clipping).
  [[nodiscard]] float inverse_scale() const noexcept { return 1.f / scale_; }

  //! Records the step's outcome and returns whether the step must be SKIPPED (found_inf); updates the
  //! scale for the next step as the class comment says.
  [[nodiscard]] bool update(bool found_inf) noexcept {
    if (found_inf) {
      ++skipped_;
      good_steps_ = 0;
      if (overflow_steps_ < options_.hysteresis) ++overflow_steps_;
      if (overflow_steps_ == options_.hysteresis)
        scale_ = std::fmax(scale_ * options_.backoff_factor, options_.min_scale);
      return true;
    }
    overflow_steps_ = 0;
    if (++good_steps_ == options_.growth_interval) {
      good_steps_ = 0;
      if (const float grown = scale_ * options_.growth_factor; std::isfinite(grown)) scale_ = grown;
    }
    return false;
  }

  //! Steps skipped so far.
  [[nodiscard]] std::int64_t skipped_steps() const noexcept { return skipped_; }
  //! Consecutive good steps since the last overflow or growth (growth happens when it reaches growth_interval).
  [[nodiscard]] std::int64_t good_steps() const noexcept { return good_steps_; }
  //! Consecutive overflowing steps so far, counted up to `hysteresis` (from where each one backs off).
  [[nodiscard]] int overflow_steps() const noexcept { return overflow_steps_; }
  [[nodiscard]] const LossScalerOptions& options() const noexcept { return options_; }

 private:
  LossScalerOptions options_;
  float scale_;
  std::int64_t skipped_ = 0;
  std::int64_t good_steps_ = 0;
  int overflow_steps_ = 0;
};

}  // namespace parallax::optim

// parallax/optim/rule.hpp — the Rule concept (SGD, Adam, AdamW: how one tensor is updated) and StepInfo.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../core/dtype.hpp"
#include "../core/view.hpp"
#include "../error.hpp"

namespace parallax::optim {

//! What one update needs besides the tensors and the rule's hyperparameters.
struct StepInfo {
  std::int64_t step = 1;   //!< 1-based count of updates applied so far, this one included (Adam's bias correction)
  float lr = 0;            //!< this step's learning rate (from a schedule; the rule's `Hyper::lr` is not used)
  float grad_scale = 1.f;  //!< the gradient is multiplied by this first (1/loss_scale times the clipping coefficient)
};

//! An update rule: a policy type with no state of its own that says how an fp32 master weight (or a shard
//! of one) moves given its gradient and the fp32 state tensors the caller owns.
//!
//! A rule `R` provides
//! - `R::Hyper`, an aggregate with at least `float lr` (`AdamW::Hyper{.lr = 3e-4f, .weight_decay = 0.1f}`);
//! - `R::name`, a `std::string_view` ("sgd", "adam", "adamw");
//! - `R::state_count(hyper)`, the number of fp32 state tensors per parameter, each with the parameter's
//!   element count, zero-initialised by the caller before the first step;
//! - `R::step<B, G>(ctx, hyper, info, master, grad, state)` (see `RuleFor`), which updates `master` in place
//!   from `grad` (storage G, math in fp32) and `state` (`state_count` views).
//!
//! `Rule` checks what does not depend on the backend; `RuleFor<R, B, G>` adds `step` on backend B with
//! gradients of type G.
//! @code
//! static_assert(optim::Rule<optim::AdamW>);
//! static_assert(optim::RuleFor<optim::AdamW, host::Backend, bf16>);
//! @endcode
template <class R>
concept Rule = std::default_initializable<typename R::Hyper> && std::copy_constructible<typename R::Hyper> &&
               requires(const typename R::Hyper& hyper) {
                 { hyper.lr } -> std::convertible_to<float>;
                 { R::name } -> std::convertible_to<std::string_view>;
                 { R::state_count(hyper) } -> std::same_as<int>;
               };

//! A `Rule` whose `step` runs on backend `B` with gradients stored as `G`:
//! `R::template step<B, G>(ctx, hyper, info, master, grad, state)` with `master` a `View<float, M>`,
//! `grad` a `View<const G, M>` of as many elements and `state` a `std::span<const View<float, M>>`,
//! M being `B::Memory`.
template <class R, class B, class G>
concept RuleFor = Rule<R> && Backend<B> && FloatElement<G> &&
                  requires(const typename B::Context& ctx, const typename R::Hyper& hyper, const StepInfo& info,
                           View<float, typename B::Memory> master, View<const G, typename B::Memory> grad,
                           std::span<const View<float, typename B::Memory>> state) {
                    R::template step<B, G>(ctx, hyper, info, master, grad, state);
                  };

namespace detail {

//! Throws "rule: what value is not finite and >= 0" unless it is (learning rates, weight decay).
inline void check_nonnegative(std::string_view rule, std::string_view what, float value, int rank) {
  if (!(value >= 0.f) || !std::isfinite(value))
    throw Error(fmt::format("{}: {} {} is not finite and >= 0", rule, what, value), rank);
}

//! Throws unless `info` is usable (step >= 1, lr finite and >= 0, finite grad_scale) and the rule got
//! `want_state` state tensors. Element counts are the kernels' to check.
inline void check_step(std::string_view rule, const StepInfo& info, std::size_t state, int want_state, int rank) {
  if (info.step < 1) throw Error(fmt::format("{}: step {} is not 1-based", rule, info.step), rank);
  check_nonnegative(rule, "step lr", info.lr, rank);
  if (!std::isfinite(info.grad_scale))
    throw Error(fmt::format("{}: grad_scale {} is not finite", rule, info.grad_scale), rank);
  if (state != static_cast<std::size_t>(want_state))
    throw Error(fmt::format("{}: got {} state tensors, expected {}", rule, state, want_state), rank);
}

}  // namespace detail
}  // namespace parallax::optim

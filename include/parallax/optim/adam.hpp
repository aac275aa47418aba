// parallax/optim/adam.hpp — optim::Adam (L2 weight decay) and optim::AdamW (decoupled weight decay), PyTorch's.
#pragma once

#include <cmath>
#include <span>
#include <string_view>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../backend/optimizer_args.hpp"
#include "../core/dtype.hpp"
#include "../core/view.hpp"
#include "../error.hpp"
#include "rule.hpp"

namespace parallax::optim {

namespace detail {

//! Adam and AdamW: the same rule, with the weight decay added to the gradient (L2) or applied to the
//! weight (`Decoupled`). Users name `optim::Adam` and `optim::AdamW`.
template <bool Decoupled>
struct AdamRule {
  //! Hyperparameters; the defaults are PyTorch's (AdamW's weight_decay is 0.01, Adam's 0).
  struct Hyper {
    float lr = 1e-3f;  //!< the base rate (a schedule's input); `step` uses `StepInfo::lr`
    float beta1 = 0.9f;
    float beta2 = 0.999f;
    float eps = 1e-8f;  //!< added to sqrt(v_hat), outside the square root
    float weight_decay = Decoupled ? 1e-2f : 0.f;
  };

  static constexpr std::string_view name = Decoupled ? "adamw" : "adam";
  static constexpr std::string_view display = Decoupled ? "AdamW" : "Adam";

  //! fp32 state tensors per parameter: the first and second moments m and v.
  [[nodiscard]] static int state_count(const Hyper&) noexcept { return 2; }

  //! Updates `master` in place from `grad`; `state` is {m, v}. `info.step` is the 1-based step of the
  //! bias corrections 1 - beta^step (formed in fp64).
  template <Backend B, FloatElement G>
  static void step(const typename B::Context& ctx, const Hyper& h, const StepInfo& info,
                   View<float, typename B::Memory> master, View<const G, typename B::Memory> grad,
                   std::span<const View<float, typename B::Memory>> state) {
    check(h, ctx.rank());
    check_step(display, info, state.size(), state_count(h), ctx.rank());
    const auto t = static_cast<double>(info.step);
    const AdamArgs args{.lr = info.lr,
                        .beta1 = h.beta1,
                        .beta2 = h.beta2,
                        .eps = h.eps,
                        .weight_decay = h.weight_decay,
                        .decoupled = Decoupled,
                        .bias_correction1 = static_cast<float>(1.0 - std::pow(double{h.beta1}, t)),
                        .bias_correction2 = static_cast<float>(1.0 - std::pow(double{h.beta2}, t)),
                        .grad_scale = info.grad_scale};
    B::adam_step(ctx, args, master, grad, state[0], state[1]);
  }

  //! Throws unless lr, eps and weight_decay are finite and >= 0 and both betas are in [0, 1).
  static void check(const Hyper& h, int rank = -1) {
    check_nonnegative(display, "lr", h.lr, rank);
    check_nonnegative(display, "eps", h.eps, rank);
    check_nonnegative(display, "weight_decay", h.weight_decay, rank);
    if (!(h.beta1 >= 0.f && h.beta1 < 1.f) || !(h.beta2 >= 0.f && h.beta2 < 1.f))
      throw Error(fmt::format("{}: betas ({}, {}) are not in [0, 1)", display, h.beta1, h.beta2), rank);
  }
};

}  // namespace detail

//! The Adam update rule, as `torch.optim.Adam` (amsgrad off): with g = grad_scale * grad + weight_decay * w,
//! m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2,
//! w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps). Two fp32 state tensors {m, v}.
//! Models `Rule`.
//! @code
//! optim::Adam::Hyper h{.lr = 1e-3f};
//! optim::Adam::step<host::Backend, bf16>(ctx, h, {.step = t, .lr = 1e-3f}, master, grad, state);
//! @endcode
struct Adam : detail::AdamRule<false> {};

//! The AdamW update rule, as `torch.optim.AdamW`: Adam without the L2 term, the weight decayed instead by
//! w *= 1 - lr * weight_decay before the Adam update (decoupled weight decay, default 0.01). Models `Rule`.
//! @code
//! optim::AdamW::Hyper h{.lr = 3e-4f, .weight_decay = 0.1f};
//! optim::AdamW::step<host::Backend, bf16>(ctx, h, {.step = t, .lr = lr(t), .grad_scale = 1 / s}, master, grad, state);
//! @endcode
struct AdamW : detail::AdamRule<true> {};

static_assert(Rule<Adam> && Rule<AdamW>);

}  // namespace parallax::optim

namespace parallax {
using optim::Adam;  // the name users write: parallax::Adam
using optim::AdamW;  // the name users write: parallax::AdamW
}  // namespace parallax

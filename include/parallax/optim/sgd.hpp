// parallax/optim/sgd.hpp — optim::SGD: stochastic gradient descent with momentum, Nesterov and L2 decay (PyTorch's).
#pragma once

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

//! The SGD update rule, as `torch.optim.SGD`: with g = grad_scale * grad + weight_decay * w,
//! buf = momentum * buf + (1 - dampening) * g (buf = g on step 1), g = nesterov ? g + momentum * buf : buf
//! (with momentum != 0), then w -= lr * g. One fp32 state tensor (the momentum buffer) with momentum, none
//! without. Models `Rule`.
//! @code
//! optim::SGD::Hyper h{.lr = 0.1f, .momentum = 0.9f, .nesterov = true};
//! optim::SGD::step<host::Backend, bf16>(ctx, h, {.step = t, .lr = 0.1f}, master, grad, state);
//! @endcode
struct SGD {
  //! Hyperparameters; the defaults are PyTorch's.
  struct Hyper {
    float lr = 1e-3f;  //!< the base rate (a schedule's input); `step` uses `StepInfo::lr`
    float momentum = 0;
    float dampening = 0;
    float weight_decay = 0;  //!< L2: added to the gradient
    bool nesterov = false;   //!< needs momentum > 0 and dampening 0
  };

  static constexpr std::string_view name = "sgd";

  //! fp32 state tensors per parameter: the momentum buffer, if any.
  [[nodiscard]] static int state_count(const Hyper& h) noexcept { return h.momentum != 0.f ? 1 : 0; }

  //! Updates `master` in place from `grad`; `state` holds `state_count(h)` views (the momentum buffer).
  template <Backend B, FloatElement G>
  static void step(const typename B::Context& ctx, const Hyper& h, const StepInfo& info,
                   View<float, typename B::Memory> master, View<const G, typename B::Memory> grad,
                   std::span<const View<float, typename B::Memory>> state) {
    check(h, ctx.rank());
    detail::check_step("SGD", info, state.size(), state_count(h), ctx.rank());
    const SgdArgs args{.lr = info.lr,
                       .momentum = h.momentum,
                       .dampening = info.step == 1 ? 0.f : h.dampening,
                       .weight_decay = h.weight_decay,
                       .nesterov = h.nesterov,
                       .grad_scale = info.grad_scale};
    B::sgd_step(ctx, args, master, grad, state.empty() ? View<float, typename B::Memory>{} : state[0]);
  }

  //! Throws unless lr, weight_decay and momentum are finite and >= 0, 0 <= dampening <= 1, and Nesterov has
  //! momentum > 0 and dampening 0.
  static void check(const Hyper& h, int rank = -1) {
    detail::check_nonnegative("SGD", "lr", h.lr, rank);
    detail::check_nonnegative("SGD", "weight_decay", h.weight_decay, rank);
    detail::check_nonnegative("SGD", "momentum", h.momentum, rank);
    if (!(h.dampening >= 0.f && h.dampening <= 1.f))
      throw Error(fmt::format("SGD: dampening {} is not in [0, 1]", h.dampening), rank);
    if (h.nesterov && (h.momentum <= 0.f || h.dampening != 0.f))
      throw Error(
          fmt::format("SGD: Nesterov momentum needs momentum > 0 and dampening 0, got momentum {}, dampening {}",
                      h.momentum, h.dampening),
          rank);
  }
};

static_assert(Rule<SGD>);

}  // namespace parallax::optim

namespace parallax {
using optim::SGD;  // the name users write: parallax::SGD
}  // namespace parallax

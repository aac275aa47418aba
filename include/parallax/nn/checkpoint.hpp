// parallax/nn/checkpoint.hpp — Checkpoint<M>: activation checkpointing (recompute in backward) as a policy on a layer.
#pragma once

#include <concepts>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "module.hpp"

namespace parallax::nn {

//! Activation checkpointing around the layer (or block) `M`: while enabled, forward keeps only a copy of
//! its input and runs the inner forward on a throw-away context, so everything the inner layer saves is
//! freed at once; backward_input first recomputes the inner forward from the saved input into the real
//! inner context (frees the copy), then runs the inner backward_input; backward_weight is the inner one.
//! Memory per microbatch in flight drops from all of the inner layer's activations to its input, for one
//! extra inner forward. Results are bitwise those of `M` alone, given an inner forward that is
//! deterministic (the same kernels on the same input). Disabled, it is transparent.
//!
//! Enabling or disabling applies to forwards run afterwards: each context remembers how its forward ran.
//!
//! @tparam M an `nn::Layer`, built in place from the constructor's arguments.
//! @code
//! // LN, Fc, Act as in nn::Residual's example; the arguments build the Residual, whose arguments build the Sequential
//! nn::Checkpoint<nn::Residual<nn::Sequential<LN, Fc, Act, Fc>>> mlp("h.0.mlp", LN(rank, 768), Fc(rank, 768, 3072),
//!                                                                    Act(rank), Fc(rank, 3072, 768));
//! mlp.set_enabled(memory_is_tight);
//! decltype(mlp)::Ctx ctx;
//! auto y = mlp.forward(ctx, x);   auto dx = mlp.backward_input(ctx, dy);   mlp.backward_weight(ctx);
//! @endcode
template <Layer M>
class Checkpoint {
 public:
  using backend = typename M::backend;
  using value_type = typename M::value_type;
  using Memory = typename backend::Memory;

  struct Ctx : CtxBase {
    typename M::Ctx inner;
    TensorOf<backend, value_type> x;  // the saved input, while a checkpointed forward awaits its backward
    bool recompute = false;           // whether the forward ran checkpointed
  };

  //! Builds the inner layer from `a...`; checkpointing starts enabled.
  template <class... A>
    requires std::constructible_from<M, A...>
  explicit Checkpoint(A&&... a) : inner_(std::forward<A>(a)...) {}

  [[nodiscard]] M& inner() noexcept { return inner_; }
  [[nodiscard]] const M& inner() const noexcept { return inner_; }
  [[nodiscard]] decltype(auto) name() const { return inner_.name(); }
  [[nodiscard]] Rank<backend>& rank() const noexcept { return inner_.rank(); }
  [[nodiscard]] ParameterList<value_type, Memory> parameters() { return inner_.parameters(); }

  //! Whether forwards run from now on are checkpointed.
  void set_enabled(bool on) noexcept { enabled_ = on; }
  [[nodiscard]] bool enabled() const noexcept { return enabled_; }

  [[nodiscard]] TensorOf<backend, value_type> forward(Ctx& ctx, ViewOf<backend, const value_type> x) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank().id());
    ctx.recompute = enabled_;
    if (!enabled_) return inner_.forward(ctx.inner, x);
    ctx.x = save<backend, value_type>(rank(), x);
    typename M::Ctx scratch;  // what the inner forward saves dies with it
    return inner_.forward(scratch, x);
  }

  [[nodiscard]] TensorOf<backend, value_type> backward_input(Ctx& ctx, ViewOf<backend, const value_type> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank().id());
    if (ctx.recompute) {
      (void)inner_.forward(ctx.inner, ctx.x.cview());
      ctx.x.reset();
    }
    return inner_.backward_input(ctx.inner, dy);
  }

  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank().id());
    inner_.backward_weight(ctx.inner);
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("Checkpoint '{}'", inner_.name()); }

  M inner_;
  bool enabled_ = true;
};

}  // namespace parallax::nn

// parallax/nn/residual.hpp — Residual<M>: a skip connection around a layer, y = x + inner(x).
#pragma once

#include <concepts>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "module.hpp"

namespace parallax::nn {

//! A residual connection around the layer `M`: y = x + inner(x), dx = dy + inner's dx. The inner layer
//! must map its input to the same shape. It saves nothing of its own; its context holds the inner one,
//! and its parameters and name are the inner layer's.
//!
//! @tparam M an `nn::Layer`, built in place from the constructor's arguments.
//! @code
//! using LN = nn::LayerNorm<host::Backend, float>;  using Fc = nn::Linear<host::Backend, float>;
//! using Act = nn::GELU<host::Backend, float>;
//! nn::Residual<nn::Sequential<LN, Fc, Act, Fc>> mlp("h.0.mlp", LN(rank, 768, {.name = "h.0.ln_2"}),
//!     Fc(rank, 768, 3072, {.name = "h.0.mlp.c_fc"}), Act(rank), Fc(rank, 3072, 768, {.name = "h.0.mlp.c_proj"}));
//! decltype(mlp)::Ctx ctx;
//! auto y = mlp.forward(ctx, x);   auto dx = mlp.backward_input(ctx, dy);   mlp.backward_weight(ctx);
//! @endcode
template <Layer M>
class Residual {
 public:
  using backend = typename M::backend;
  using value_type = typename M::value_type;
  using Memory = typename backend::Memory;

  struct Ctx : CtxBase {
    typename M::Ctx inner;
  };

  //! Builds the inner layer from `a...`.
  template <class... A>
    requires std::constructible_from<M, A...>
  explicit Residual(A&&... a) : inner_(std::forward<A>(a)...) {}

  [[nodiscard]] M& inner() noexcept { return inner_; }
  [[nodiscard]] const M& inner() const noexcept { return inner_; }
  [[nodiscard]] decltype(auto) name() const { return inner_.name(); }
  [[nodiscard]] Rank<backend>& rank() const noexcept { return inner_.rank(); }
  [[nodiscard]] ParameterList<value_type, Memory> parameters() { return inner_.parameters(); }

  [[nodiscard]] TensorOf<backend, value_type> forward(Ctx& ctx, ViewOf<backend, const value_type> x) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank().id());
    auto y = inner_.forward(ctx.inner, x);
    if (y.shape() != x.shape())
      throw Error(fmt::format("{}: the inner layer maps {} to {}; a residual needs the same shape", label(), x.shape(),
                              y.shape()),
                  rank().id());
    backend::axpby(rank().context(), 1.f, x, 1.f, y.view());
    return y;
  }

  [[nodiscard]] TensorOf<backend, value_type> backward_input(Ctx& ctx, ViewOf<backend, const value_type> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank().id());
    auto dx = inner_.backward_input(ctx.inner, dy);
    backend::axpby(rank().context(), 1.f, dy, 1.f, dx.view());
    return dx;
  }

  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank().id());
    inner_.backward_weight(ctx.inner);
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("Residual '{}'", inner_.name()); }

  M inner_;
};

}  // namespace parallax::nn

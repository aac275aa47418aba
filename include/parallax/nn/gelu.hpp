// parallax/nn/gelu.hpp — the GELU activation (GPT-2's tanh approximation) as a module without parameters.
#pragma once

#include <string>
#include <utility>

#include <fmt/format.h>

#include "module.hpp"

namespace parallax::nn {

//! GELU, elementwise on any shape: y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GPT-2's approximation).
//! Storage T (fp32, bf16, fp16); math in fp32. No parameters.
//!
//! forward saves x; backward_input computes dx and frees x (its last use); backward_weight has nothing to
//! accumulate and only completes the pass.
//! @code
//! nn::GELU<host::Backend, float> act(rank, "h.0.mlp.act");
//! nn::GELU<host::Backend, float>::Ctx ctx;
//! auto y = act.forward(ctx, x);   auto dx = act.backward_input(ctx, dy);   act.backward_weight(ctx);
//! @endcode
template <Backend B, FloatElement T>
class GELU {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;

  struct Ctx : CtxBase {
    TensorOf<B, T> x;
  };

  explicit GELU(Rank<B>& rank, std::string name = "gelu") : rank_(&rank), name_(std::move(name)) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  [[nodiscard]] ParameterList<T, Memory> parameters() const { return {}; }

  [[nodiscard]] TensorOf<B, T> forward(Ctx& ctx, ViewOf<B, const T> x) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank_->id());
    ctx.x = save<B, T>(*rank_, x);
    auto y = activation<B, T>(*rank_, x.shape());
    B::gelu_forward(rank_->context(), x, y.view());
    return y;
  }

  [[nodiscard]] TensorOf<B, T> backward_input(Ctx& ctx, ViewOf<B, const T> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    if (dy.shape() != ctx.x.shape())
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(),
                              ctx.x.shape()),
                  rank_->id());
    auto dx = activation<B, T>(*rank_, dy.shape());
    B::gelu_backward(rank_->context(), ctx.x.cview(), dy, dx.view());
    ctx.x.reset();
    return dx;
  }

  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank_->id());
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("GELU '{}'", name_); }

  Rank<B>* rank_;
  std::string name_;
};

}  // namespace parallax::nn

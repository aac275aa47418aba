// parallax/nn/layer_norm.hpp — LayerNorm over the last dimension (learned gain and bias), with split backward.
#pragma once

#include <cstdint>
#include <string>

#include <fmt/format.h>

#include "../core/init.hpp"
#include "module.hpp"

namespace parallax::nn {

//! Options of a `LayerNorm`.
struct LayerNormOptions {
  float eps = 1e-5f;  // added to the (biased) variance
  std::string name = "ln";
};

//! Layer normalisation over the last dimension: x [..., D] -> y [..., D],
//! y = (x - mean) / sqrt(var + eps) * gamma + beta, per row, with gamma (`<name>.weight`, init 1) and beta
//! (`<name>.bias`, init 0) of shape [D], both replicated. Storage T (fp32, bf16, fp16); statistics in fp32.
//!
//! forward saves x and the fp32 row mean and reciprocal standard deviation; backward_input computes dx and
//! keeps dy; backward_weight accumulates dgamma and dbeta, then frees everything.
//! @code
//! nn::LayerNorm<host::Backend, float> ln(rank, 768, {.name = "h.0.ln_1"});
//! nn::LayerNorm<host::Backend, float>::Ctx ctx;
//! auto y = ln.forward(ctx, x);   auto dx = ln.backward_input(ctx, dy);   ln.backward_weight(ctx);
//! @endcode
template <Backend B, FloatElement T>
class LayerNorm {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;

  struct Ctx : CtxBase {
    TensorOf<B, T> x, dy;
    TensorOf<B, float> mean, rstd;
  };

  //! A LayerNorm over `dim` features; throws for dim < 1 or a negative eps.
  LayerNorm(Rank<B>& rank, std::int64_t dim, const LayerNormOptions& o = {})
      : rank_(&rank),
        name_(o.name),
        eps_(o.eps),
        weight_(rank.allocator(), ShardSpec::replicated(join_name(o.name, "weight"), Shape{checked_dim(dim)})),
        bias_(rank.allocator(), ShardSpec::replicated(join_name(o.name, "bias"), weight_.shape())) {
    if (!(eps_ >= 0.f)) throw Error(fmt::format("{}: eps {} must be >= 0", label(), eps_), rank.id());
    init_shard(weight_.value(), weight_.spec(), init::constant(1.f));  // the bias starts at zero, as tensors do
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  //! Normalised features, and the variance epsilon.
  [[nodiscard]] std::int64_t dim() const noexcept { return weight_.shape()[0]; }
  [[nodiscard]] float eps() const noexcept { return eps_; }
  //! gamma and beta.
  [[nodiscard]] Parameter<T, Memory>& weight() noexcept { return weight_; }
  [[nodiscard]] Parameter<T, Memory>& bias() noexcept { return bias_; }

  [[nodiscard]] ParameterList<T, Memory> parameters() { return {&weight_, &bias_}; }

  [[nodiscard]] TensorOf<B, T> forward(Ctx& ctx, ViewOf<B, const T> x) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank_->id());
    if (x.shape().rank() < 2 || x.shape()[x.shape().rank() - 1] != dim())
      throw Error(fmt::format("{}: input {} is not [..., {}] of rank >= 2", label(), x.shape(), dim()), rank_->id());
    const auto xm = as_matrix(x);
    ctx.x = save<B, T>(*rank_, x);
    ctx.mean = activation<B, float>(*rank_, Shape{xm.shape()[0]});
    ctx.rstd = activation<B, float>(*rank_, Shape{xm.shape()[0]});
    auto y = activation<B, T>(*rank_, x.shape());
    B::layernorm_forward(rank_->context(), xm, ViewOf<B, const T>(weight_.acquire_value()),
                         ViewOf<B, const T>(bias_.acquire_value()), eps_, as_matrix(y.view()), ctx.mean.view(),
                         ctx.rstd.view());
    weight_.release_value();
    bias_.release_value();
    return y;
  }

  [[nodiscard]] TensorOf<B, T> backward_input(Ctx& ctx, ViewOf<B, const T> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    if (dy.shape() != ctx.x.shape())
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(),
                              ctx.x.shape()),
                  rank_->id());
    ctx.dy = save<B, T>(*rank_, dy);
    auto dx = activation<B, T>(*rank_, dy.shape());
    B::template layernorm_backward<T, T>(rank_->context(), as_matrix(dy), as_matrix(ctx.x.cview()),
                                         ViewOf<B, const T>(weight_.acquire_value()), ctx.mean.cview(),
                                         ctx.rstd.cview(), as_matrix(dx.view()), {}, {});
    weight_.release_value();
    return dx;
  }

  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank_->id());
    B::template layernorm_backward<T, T>(rank_->context(), as_matrix(ctx.dy.cview()), as_matrix(ctx.x.cview()),
                                         ViewOf<B, const T>(weight_.acquire_value()), ctx.mean.cview(),
                                         ctx.rstd.cview(), {}, weight_.acquire_grad(), bias_.acquire_grad());
    weight_.release_value();
    weight_.release_grad();
    bias_.release_grad();
    ctx.x.reset();
    ctx.dy.reset();
    ctx.mean.reset();
    ctx.rstd.reset();
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("LayerNorm '{}'", name_); }
  [[nodiscard]] std::int64_t checked_dim(std::int64_t dim) const {
    if (dim < 1) throw Error(fmt::format("{}: dim {} must be at least 1", label(), dim), rank_->id());
    return dim;
  }

  Rank<B>* rank_;
  std::string name_;
  float eps_;
  Parameter<T, Memory> weight_, bias_;
};

}  // namespace parallax::nn

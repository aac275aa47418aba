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
//!
//! A pre-LN block adds a residual and normalises the sum: `forward_residual(ctx, x, r)` does both in one kernel and
//! keeps the sum x + r (the residual stream, which the block reads back as `residual(ctx)`) as the saved input;
//! `backward_input_residual(ctx, dy, dres)` returns the sum's gradient, dres + the LayerNorm's dx, in one kernel.
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
    check_input(x.shape());
    ctx.x = save<B, T>(*rank_, x);
    auto y = start_forward(ctx);
    B::layernorm_forward(rank_->context(), as_matrix(x), ViewOf<B, const T>(weight_.acquire_value()),
                         ViewOf<B, const T>(bias_.acquire_value()), eps_, as_matrix(y.view()), ctx.mean.view(),
                         ctx.rstd.view());
    weight_.release_value();
    bias_.release_value();
    return y;
  }

  //! LayerNorm(x + r), the sum formed in the same kernel (`B::add_layernorm_forward`) and kept as the saved input:
  //! `residual(ctx)` reads it until backward_weight. x and r have the same shape [..., D].
  [[nodiscard]] TensorOf<B, T> forward_residual(Ctx& ctx, ViewOf<B, const T> x, ViewOf<B, const T> r) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward_residual", rank_->id());
    check_input(x.shape());
    if (r.shape() != x.shape())
      throw Error(fmt::format("{}: residual {} does not match the input {}", label(), r.shape(), x.shape()),
                  rank_->id());
    ctx.x = activation<B, T>(*rank_, x.shape());
    auto y = start_forward(ctx);
    B::add_layernorm_forward(rank_->context(), as_matrix(x), as_matrix(r), ViewOf<B, const T>(weight_.acquire_value()),
                             ViewOf<B, const T>(bias_.acquire_value()), eps_, as_matrix(ctx.x.view()),
                             as_matrix(y.view()), ctx.mean.view(), ctx.rstd.view());
    weight_.release_value();
    bias_.release_value();
    return y;
  }

  //! The input the forward saved: x, or x + r after `forward_residual` (the residual stream).
  [[nodiscard]] static ViewOf<B, const T> residual(const Ctx& ctx) { return ctx.x.cview(); }

  [[nodiscard]] TensorOf<B, T> backward_input(Ctx& ctx, ViewOf<B, const T> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    auto dx = start_backward(ctx, dy);
    B::template layernorm_backward<T, T>(rank_->context(), as_matrix(dy), as_matrix(ctx.x.cview()),
                                         ViewOf<B, const T>(weight_.acquire_value()), ctx.mean.cview(),
                                         ctx.rstd.cview(), as_matrix(dx.view()), {}, {});
    weight_.release_value();
    return dx;
  }

  //! dres + backward_input's dx, in one kernel (`B::add_layernorm_backward`): the gradient of the sum x + r of
  //! `forward_residual`, given dres, the gradient reaching the sum through the residual path.
  [[nodiscard]] TensorOf<B, T> backward_input_residual(Ctx& ctx, ViewOf<B, const T> dy, ViewOf<B, const T> dres) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input_residual", rank_->id());
    if (dres.shape() != ctx.x.shape())
      throw Error(fmt::format("{}: backward_input_residual got a residual gradient {}, the forward's input was {}",
                              label(), dres.shape(), ctx.x.shape()),
                  rank_->id());
    auto dx = start_backward(ctx, dy);
    B::add_layernorm_backward(rank_->context(), as_matrix(dy), as_matrix(ctx.x.cview()),
                              ViewOf<B, const T>(weight_.acquire_value()), ctx.mean.cview(), ctx.rstd.cview(),
                              as_matrix(dres), as_matrix(dx.view()));
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
  void check_input(const Shape& s) const {
    if (s.rank() < 2 || s[s.rank() - 1] != dim())
      throw Error(fmt::format("{}: input {} is not [..., {}] of rank >= 2", label(), s, dim()), rank_->id());
  }
  // The row statistics of the saved input ctx.x, and the output tensor.
  [[nodiscard]] TensorOf<B, T> start_forward(Ctx& ctx) {
    const std::int64_t rows = as_matrix(ctx.x.cview()).shape()[0];
    ctx.mean = activation<B, float>(*rank_, Shape{rows});
    ctx.rstd = activation<B, float>(*rank_, Shape{rows});
    return activation<B, T>(*rank_, ctx.x.shape());
  }
  // Checks dy, keeps a copy for backward_weight, and returns the input gradient tensor.
  [[nodiscard]] TensorOf<B, T> start_backward(Ctx& ctx, ViewOf<B, const T> dy) {
    if (dy.shape() != ctx.x.shape())
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(),
                              ctx.x.shape()),
                  rank_->id());
    ctx.dy = save<B, T>(*rank_, dy);
    return activation<B, T>(*rank_, dy.shape());
  }
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

// parallax/nn/linear.hpp — y = act(x W^T + b) over the last dimension (bias and activation fused into the GEMM),
// with split backward.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "../backend/epilogue.hpp"
#include "../core/init.hpp"
#include "module.hpp"

namespace parallax::nn {

//! Options of a `Linear` layer (and of the tensor-parallel linears built on it).
struct LinearOptions {
  bool bias = true;
  Activation activation = Activation::none;  // gelu: y = gelu(x W^T + b), in the GEMM's epilogue
  float init_std = 0.02f;   // weight ~ Normal(0, init_std); bias = 0
  std::uint64_t seed = 0;   // mixed with each parameter's name
  std::string name = "linear";
};

//! A linear layer: x [..., in] -> y [..., out], y = act(x W^T + b), with W [out, in] (PyTorch's layout), b [out]
//! and act the identity or GELU (`LinearOptions::activation`). Storage T (fp32, bf16, fp16); GEMMs accumulate in fp32,
//! and the bias and activation are applied in the forward GEMM's epilogue (`B::gemm_bias_act`: one cuBLASLt call on
//! the GPU).
//!
//! forward saves x (and, with an activation, the pre-activation x W^T + b: the GEMM writes it, nothing is copied);
//! backward_input turns dy into the gradient of the pre-activation (GELU: dy * gelu'(pre), in place over the saved
//! pre-activation; else a copy of dy), keeps it and computes dx from it; backward_weight accumulates dW += g^T x and
//! db += sum_rows(g) in one GEMM (`B::gemm_bias_grad`), then frees both.
//!
//! Two layers in a row can fuse the first one's GELU backward into the second one's dx GEMM (`B::gemm_dgelu`):
//! `second.backward_input(ctx2, dy, Linear::preactivation(ctx1))` returns the gradient of the first one's
//! pre-activation, which `first.backward_input_preactivation(ctx1, ...)` takes over (see `tp::ParallelMLP`).
//!
//! The weight and bias may be shards of larger global tensors (their `ShardSpec`s say which): the
//! tensor-parallel linears are this layer plus communication.
//! @code
//! nn::Linear<host::Backend, float> fc(rank, 768, 3072, {.activation = Activation::gelu, .name = "h.0.mlp.c_fc"});
//! nn::Linear<host::Backend, float>::Ctx ctx;
//! auto y = fc.forward(ctx, x);   auto dx = fc.backward_input(ctx, dy);   fc.backward_weight(ctx);
//! @endcode
template <Backend B, FloatElement T>
class Linear {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;

  struct Ctx : CtxBase {
    TensorOf<B, T> x;
    TensorOf<B, T> pre;  // x W^T + b, with an activation (until backward_input)
    TensorOf<B, T> dy;   // the gradient of the pre-activation (of y, without an activation)
  };

  //! A linear layer whose weight and bias are the shards `weight` ([out, in] locally) and `bias` ([out]).
  Linear(Rank<B>& rank, const ShardSpec& weight, std::optional<ShardSpec> bias, const LinearOptions& o)
      : rank_(&rank), name_(o.name), activation_(o.activation), weight_(rank.allocator(), weight) {
    if (weight.global.rank() != 2)
      throw Error(fmt::format("Linear '{}': weight shape {} is not [out, in]", name_, weight.global), rank.id());
    init_shard(weight_.value(), weight_.spec(), init::normal(o.init_std, seed_for(o.seed, weight.name)));
    if (bias) {
      if (bias->local_shape() != Shape{weight_.shape()[0]})
        throw Error(fmt::format("Linear '{}': bias shard {} does not match the weight shard {}", name_,
                                bias->local_shape(), weight_.shape()),
                    rank.id());
      bias_.emplace(rank.allocator(), *bias);
    }
  }
  //! A whole (unsharded) layer from `in` to `out` features.
  Linear(Rank<B>& rank, std::int64_t in, std::int64_t out, const LinearOptions& o = {})
      : Linear(rank, ShardSpec::replicated(join_name(o.name, "weight"), Shape{out, in}),
               o.bias ? std::optional(ShardSpec::replicated(join_name(o.name, "bias"), Shape{out})) : std::nullopt, o) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  //! Local input and output features.
  [[nodiscard]] std::int64_t in_features() const noexcept { return weight_.shape()[1]; }
  [[nodiscard]] std::int64_t out_features() const noexcept { return weight_.shape()[0]; }
  [[nodiscard]] Parameter<T, Memory>& weight() noexcept { return weight_; }
  [[nodiscard]] Parameter<T, Memory>* bias() noexcept { return bias_ ? &*bias_ : nullptr; }
  //! The pre-activation x W^T + b a forward with an activation saved in `ctx`, until its backward_input: the GELU
  //! input whose gradient the next layer may fuse into its dx GEMM (`backward_input(ctx, dy, gelu_input)`).
  [[nodiscard]] static ViewOf<B, const T> preactivation(const Ctx& ctx) { return ctx.pre.cview(); }

  [[nodiscard]] ParameterList<T, Memory> parameters() {
    ParameterList<T, Memory> p{&weight_};
    if (bias_) p.push_back(&*bias_);
    return p;
  }

  [[nodiscard]] TensorOf<B, T> forward(Ctx& ctx, ViewOf<B, const T> x) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank_->id());
    check_features("input", x.shape(), in_features());
    ctx.x = save<B, T>(*rank_, x);
    Shape ys = x.shape().with(x.shape().rank() - 1, out_features());
    auto y = activation<B, T>(*rank_, ys);
    if (activation_ != Activation::none) ctx.pre = activation<B, T>(*rank_, ys);
    const ViewOf<B, const T> w(weight_.acquire_value());
    const ViewOf<B, const T> b = bias_ ? ViewOf<B, const T>(bias_->acquire_value()) : ViewOf<B, const T>{};
    const ViewOf<B, T> pre = activation_ != Activation::none ? as_matrix(ctx.pre.view()) : ViewOf<B, T>{};
    B::gemm_bias_act(rank_->context(), Trans::N, Trans::T, as_matrix(x), w, b, activation_, as_matrix(y.view()), pre);
    weight_.release_value();
    if (bias_) bias_->release_value();
    return y;
  }

  //! dx from dy, the gradient of y.
  [[nodiscard]] TensorOf<B, T> backward_input(Ctx& ctx, ViewOf<B, const T> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    keep_preactivation_grad(ctx, dy);
    return input_grad(ctx, nullptr);
  }

  //! The gradient of `gelu_input` where this layer's input was x = gelu(gelu_input) (the previous layer's
  //! `preactivation`): dx * gelu'(gelu_input), formed in the dx GEMM's epilogue (`B::gemm_dgelu`) instead of a
  //! separate pass of the GELU's backward.
  [[nodiscard]] TensorOf<B, T> backward_input(Ctx& ctx, ViewOf<B, const T> dy, ViewOf<B, const T> gelu_input) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    if (gelu_input.shape() != ctx.x.shape())
      throw Error(fmt::format("{}: backward_input got a GELU input {}, the forward's input was {}", label(),
                              gelu_input.shape(), ctx.x.shape()),
                  rank_->id());
    keep_preactivation_grad(ctx, dy);
    return input_grad(ctx, &gelu_input);
  }

  //! backward_input given `dpre`, the gradient of the pre-activation x W^T + b rather than of y: the activation's
  //! backward is already done (the next layer fused it into its dx GEMM). Takes `dpre` over as the gradient kept
  //! for backward_weight (no copy) and frees the saved pre-activation.
  [[nodiscard]] TensorOf<B, T> backward_input_preactivation(Ctx& ctx, TensorOf<B, T> dpre) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input_preactivation", rank_->id());
    check_output_grad("dpre", dpre.shape(), ctx);
    ctx.pre.reset();
    ctx.dy = std::move(dpre);
    return input_grad(ctx, nullptr);
  }

  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank_->id());
    auto& c = rank_->context();
    const auto g = as_matrix(ctx.dy.cview()), x = as_matrix(ctx.x.cview());
    const auto dw = weight_.acquire_grad();
    if (bias_)
      B::gemm_bias_grad(c, Trans::T, Trans::N, 1.f, g, x, 1.f, dw, bias_->acquire_grad());
    else
      B::gemm(c, Trans::T, Trans::N, 1.f, g, x, 1.f, dw);
    weight_.release_grad();
    if (bias_) bias_->release_grad();
    ctx.x.reset();
    ctx.dy.reset();
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("Linear '{}'", name_); }
  void check_features(const char* what, const Shape& s, std::int64_t want) const {
    if (s.rank() < 1 || s[s.rank() - 1] != want)
      throw Error(fmt::format("{}: {} {} does not end in {} features", label(), what, s, want), rank_->id());
  }
  // Throws unless a gradient named `what` has the forward's output shape.
  void check_output_grad(const char* what, const Shape& s, const Ctx& ctx) const {
    const Shape want = ctx.x.shape().with(ctx.x.shape().rank() - 1, out_features());
    if (s != want)
      throw Error(fmt::format("{}: backward_input got {} {}, the forward's output was {}", label(), what, s, want),
                  rank_->id());
  }

  // Keeps the gradient of the pre-activation for backward_weight: dy * gelu'(pre), in place over pre (its last
  // use), or a copy of dy.
  void keep_preactivation_grad(Ctx& ctx, ViewOf<B, const T> dy) {
    check_output_grad("dy", dy.shape(), ctx);
    if (activation_ == Activation::gelu) {
      B::gelu_backward(rank_->context(), ctx.pre.cview(), dy, ctx.pre.view());
      ctx.dy = std::move(ctx.pre);
    } else {
      ctx.dy = save<B, T>(*rank_, dy);
    }
  }

  // dx = g W from the kept gradient g; times gelu'(*gelu_input) in the same GEMM when given.
  [[nodiscard]] TensorOf<B, T> input_grad(const Ctx& ctx, const ViewOf<B, const T>* gelu_input) {
    auto dx = activation<B, T>(*rank_, ctx.x.shape());
    auto& c = rank_->context();
    const ViewOf<B, const T> w(weight_.acquire_value());
    if (gelu_input != nullptr)
      B::gemm_dgelu(c, Trans::N, Trans::N, as_matrix(ctx.dy.cview()), w, as_matrix(*gelu_input), as_matrix(dx.view()));
    else
      B::gemm(c, Trans::N, Trans::N, 1.f, as_matrix(ctx.dy.cview()), w, 0.f, as_matrix(dx.view()));
    weight_.release_value();
    return dx;
  }

  Rank<B>* rank_;
  std::string name_;
  Activation activation_;
  Parameter<T, Memory> weight_;
  std::optional<Parameter<T, Memory>> bias_;
};

}  // namespace parallax::nn

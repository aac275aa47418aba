// parallax/nn/linear.hpp — y = x W^T + b over the last dimension, with split backward.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "../core/init.hpp"
#include "module.hpp"

namespace parallax::nn {

//! Options of a `Linear` layer (and of the tensor-parallel linears built on it).
struct LinearOptions {
  bool bias = true;
  float init_std = 0.02f;   // weight ~ Normal(0, init_std); bias = 0
  std::uint64_t seed = 0;   // mixed with each parameter's name
  std::string name = "linear";
};

//! A linear layer: x [..., in] -> y [..., out], y = x W^T + b, with W [out, in] (PyTorch's layout) and b [out].
//! Storage T (fp32, bf16, fp16); GEMMs accumulate in fp32.
//!
//! forward saves x; backward_input computes dx = dy W and keeps dy; backward_weight accumulates
//! dW += dy^T x and db += sum_rows(dy), then frees both.
//!
//! The weight and bias may be shards of larger global tensors (their `ShardSpec`s say which): the
//! tensor-parallel linears are this layer plus communication.
//! @code
//! nn::Linear<host::Backend, float> fc(rank, 768, 3072, {.name = "h.0.mlp.c_fc"});
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
    TensorOf<B, T> x, dy;
  };

  //! A linear layer whose weight and bias are the shards `weight` ([out, in] locally) and `bias` ([out]).
  Linear(Rank<B>& rank, const ShardSpec& weight, std::optional<ShardSpec> bias, const LinearOptions& o)
      : rank_(&rank), name_(o.name), weight_(rank.allocator(), weight) {
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
    auto& c = rank_->context();
    B::gemm(c, Trans::N, Trans::T, 1.f, as_matrix(x), ViewOf<B, const T>(weight_.acquire_value()), 0.f,
            as_matrix(y.view()));
    weight_.release_value();
    if (bias_) {
      B::add_bias(c, ViewOf<B, const T>(bias_->acquire_value()), as_matrix(y.view()));
      bias_->release_value();
    }
    return y;
  }

  [[nodiscard]] TensorOf<B, T> backward_input(Ctx& ctx, ViewOf<B, const T> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    if (dy.shape() != ctx.x.shape().with(ctx.x.shape().rank() - 1, out_features()))
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(),
                              ctx.x.shape().with(ctx.x.shape().rank() - 1, out_features())),
                  rank_->id());
    ctx.dy = save<B, T>(*rank_, dy);
    auto dx = activation<B, T>(*rank_, ctx.x.shape());
    B::gemm(rank_->context(), Trans::N, Trans::N, 1.f, as_matrix(dy), ViewOf<B, const T>(weight_.acquire_value()), 0.f,
            as_matrix(dx.view()));
    weight_.release_value();
    return dx;
  }

  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank_->id());
    auto& c = rank_->context();
    const auto dy = as_matrix(ctx.dy.cview());
    B::gemm(c, Trans::T, Trans::N, 1.f, dy, as_matrix(ctx.x.cview()), 1.f, weight_.acquire_grad());
    weight_.release_grad();
    if (bias_) {
      B::bias_grad(c, dy, bias_->acquire_grad());
      bias_->release_grad();
    }
    ctx.x.reset();
    ctx.dy.reset();
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("Linear '{}'", name_); }
  void check_features(const char* what, const Shape& s, std::int64_t want) const {
    if (s.rank() < 1 || s[s.rank() - 1] != want)
      throw Error(fmt::format("{}: {} {} does not end in {} features", label(), what, s, want), rank_->id());
  }

  Rank<B>* rank_;
  std::string name_;
  Parameter<T, Memory> weight_;
  std::optional<Parameter<T, Memory>> bias_;
};

}  // namespace parallax::nn

// parallax/nn/cross_entropy.hpp — fused softmax cross-entropy loss over logits [..., V] and int32 targets [...].
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "loss_value.hpp"
#include "module.hpp"

namespace parallax::nn {

//! Options of a `CrossEntropyLoss`.
struct CrossEntropyOptions {
  std::int32_t ignore_index = -100;  // tokens with this target count neither in the loss nor in `count`
  std::string name = "loss";
};

//! Softmax cross-entropy of logits [..., V] against int32 targets [...] (the same leading shape): per token
//!   loss = log sum_j exp(z[j]) - z[target],
//! fused and numerically stable (the backend shifts by the row max; fp32 math for any storage T).
//!
//! forward returns `LossValue{sum, count}` over the tokens whose target is not `ignore_index` and saves the
//! logits, targets and per-token log-sum-exp. backward_input(ctx, scale) returns dlogits, the gradient of
//! `scale * sum` (zero rows for ignored tokens), computed in place over the saved logits, and frees what the
//! forward saved. It has no parameters: backward_weight only advances the pass. Pass scale = 1 / count of the
//! global batch for the gradient of the global mean.
//! @code
//! nn::CrossEntropyLoss<host::Backend, float> ce(rank);
//! nn::CrossEntropyLoss<host::Backend, float>::Ctx ctx;
//! nn::LossValue l = ce.forward(ctx, logits, targets);
//! auto dlogits = ce.backward_input(ctx, 1.f / float(l.count));   ce.backward_weight(ctx);
//! @endcode
template <Backend B, FloatElement T>
class CrossEntropyLoss {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;

  struct Ctx : CtxBase {
    TensorOf<B, T> logits;
    TensorOf<B, std::int32_t> targets;
    TensorOf<B, float> lse;
  };

  explicit CrossEntropyLoss(Rank<B>& rank, const CrossEntropyOptions& o = {})
      : rank_(&rank), name_(o.name), ignore_index_(o.ignore_index) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  [[nodiscard]] std::int32_t ignore_index() const noexcept { return ignore_index_; }
  [[nodiscard]] ParameterList<T, Memory> parameters() { return {}; }

  //! The summed loss and the number of tokens not ignored. Throws for a target outside [0, V) that is not
  //! ignore_index.
  [[nodiscard]] LossValue forward(Ctx& ctx, ViewOf<B, const T> logits, ViewOf<B, const std::int32_t> targets) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank_->id());
    const Shape& ls = logits.shape();
    const Shape& ts = targets.shape();
    bool leading = ls.rank() >= 1 && ts.rank() == ls.rank() - 1;
    for (int i = 0; leading && i < ts.rank(); ++i) leading = ts[i] == ls[i];
    if (!leading)
      throw Error(fmt::format("{}: targets {} are not the leading shape of logits {}", label(), ts, ls), rank_->id());
    auto& c = rank_->context();
    const auto z = as_matrix(logits);
    const Shape rows{z.shape()[0]};
    TensorOf<B, float> losses(rank_->allocator(), rows, MemoryCategory::workspace);
    auto lse = activation<B, float>(*rank_, rows);
    const std::int64_t count =
        B::cross_entropy_forward(c, z, targets.reshape(rows), ignore_index_, losses.view(), lse.view());
    ctx.logits = save<B, T>(*rank_, logits);
    ctx.targets = save<B, std::int32_t>(*rank_, targets.reshape(rows));
    ctx.lse = std::move(lse);
    return LossValue{B::sum(c, losses.cview()), count};
  }

  //! dlogits (the logits' shape) = gradient of `scale * sum`; frees what the forward saved.
  [[nodiscard]] TensorOf<B, T> backward_input(Ctx& ctx, float scale) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    const auto z = as_matrix(ctx.logits.view());
    B::cross_entropy_backward(rank_->context(), ViewOf<B, const T>(z), ctx.targets.cview(), ctx.lse.cview(),
                              ignore_index_, scale, z);
    ctx.targets.reset();
    ctx.lse.reset();
    return std::move(ctx.logits);
  }

  //! No parameters: only checks and advances the pass.
  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank_->id());
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("CrossEntropyLoss '{}'", name_); }

  Rank<B>* rank_;
  std::string name_;
  std::int32_t ignore_index_;
};

}  // namespace parallax::nn

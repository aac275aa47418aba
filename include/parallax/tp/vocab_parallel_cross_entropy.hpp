// parallax/tp/vocab_parallel_cross_entropy.hpp — softmax cross-entropy over logits split over TP by vocabulary.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "../comm/collective.hpp"
#include "../core/extent.hpp"
#include "../mesh/device_mesh.hpp"
#include "../nn/loss_value.hpp"
#include "../nn/module.hpp"
#include "divisible.hpp"

namespace parallax::tp {

//! Options of a `VocabParallelCrossEntropy`.
struct VocabParallelCrossEntropyOptions {
  std::int32_t ignore_index = -100;  // targets equal to it count neither in the loss nor in the token count
  std::string name = "loss";
};

//! The language-model loss on vocabulary-parallel logits: rank r of the TP group holds the columns
//! [r V/tp, (r+1) V/tp) of the logits (what a column-parallel LM head produces) and the full-vocabulary logits
//! never exist on one rank. Per row: the max, the sum of exp(z - max) and the target's logit are each formed
//! on the shard and reduced over TP (the max alone, the other two in one all-reduce), then
//! loss = max + log(sum_exp) - z[target].
//!
//! forward(ctx, logits [..., V/tp], targets int32 [...]) returns `nn::LossValue{sum, count}`, identical on
//! every TP rank; rows whose target is `ignore_index` add nothing. It saves a copy of the logits shard, which
//! `backward_input(ctx, scale)` overwrites in place with this shard of the gradient of `scale * sum` and returns;
//! `backward_weight` frees what is left (the loss has no parameters).
//! Targets are checked on the host (one small copy from the device): every rank throws alike for a target
//! outside [0, vocab) that is not `ignore_index`.
//! @tparam Mesh a `DeviceMesh` built from a `Rank<B>`.  @tparam B the backend.  @tparam T the storage type.
//! @code
//! tp::VocabParallelCrossEntropy<Mesh, host::Backend, float> ce(mesh, 50304);
//! decltype(ce)::Ctx ctx;
//! nn::LossValue l = ce.forward(ctx, logits_shard, targets);   // [T, B, 50304 / tp], [T, B]
//! auto dlogits = ce.backward_input(ctx, 1.f / l.count);     ce.backward_weight(ctx);
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class VocabParallelCrossEntropy {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;
  using Options = VocabParallelCrossEntropyOptions;

  struct Ctx : nn::CtxBase {
    nn::TensorOf<B, T> logits;            // the forward's shard, turned into dlogits by backward_input
    Tensor<std::int32_t, Memory> targets;  // [N]
    Tensor<float, Memory> lse;             // [N], log-sum-exp over the whole vocabulary
  };

  //! The loss over a vocabulary of `vocab` (`std::int64_t` or `fixed<N>`) split over the TP group of `mesh` (which
  //! must outlive the module). Throws unless TP divides `vocab` (fails to compile for a `fixed<N>` vocabulary on a
  //! mesh with a static TP extent).
  template <SizeArg V>
  VocabParallelCrossEntropy(Mesh& mesh, V vocab, const Options& o = {})
      : mesh_(&mesh),
        rank_(&mesh_rank<B>(mesh)),
        name_(o.name),
        vocab_(static_cast<std::int64_t>(vocab)),
        ignore_index_(o.ignore_index) {
    static_assert(statically_divisible<Mesh, V>,
                  "VocabParallelCrossEntropy: a fixed<N> vocabulary is not divisible by the mesh's static TP extent; "
                  "pad N to a multiple of TP");
    if (vocab_ <= 0) throw Error(fmt::format("{}: vocabulary {} must be positive", label(), vocab_), rank_->id());
    (void)check_divisible(mesh, label(), "vocabulary entries", vocab_);
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  //! The whole vocabulary, and this rank's columns of it [vocab_begin, vocab_begin + local_vocab).
  [[nodiscard]] std::int64_t vocab() const noexcept { return vocab_; }
  [[nodiscard]] std::int64_t local_vocab() const noexcept { return vocab_ / mesh_->tp_size(); }
  [[nodiscard]] std::int64_t vocab_begin() const noexcept { return mesh_->tp_rank() * local_vocab(); }
  [[nodiscard]] std::int32_t ignore_index() const noexcept { return ignore_index_; }
  [[nodiscard]] nn::ParameterList<T, Memory> parameters() { return {}; }

  //! logits [..., V/tp] (this rank's vocabulary columns) and targets [...] (global ids, the same on every TP
  //! rank) -> the summed loss and the number of rows counted, the same on every TP rank.
  [[nodiscard]] nn::LossValue forward(Ctx& ctx, nn::ViewOf<B, const T> logits,
                                      nn::ViewOf<B, const std::int32_t> targets) {
    nn::detail::advance(ctx, nn::Pass::none, nn::Pass::forward, label(), "forward", rank_->id());
    check_shapes(logits.shape(), targets.shape());
    check_targets(targets);
    const std::int64_t n = targets.numel();
    auto& c = rank_->context();
    ctx.logits = nn::save<B, T>(*rank_, logits);
    ctx.targets = nn::save<B, std::int32_t>(*rank_, targets.flatten());
    const auto z = nn::as_matrix(ctx.logits.cview());
    const auto y = ctx.targets.cview();

    auto max = nn::activation<B, float>(*rank_, Shape{n});
    B::row_max(c, z, max.view());
    mesh_->tp().all_reduce(max.view(), ReduceOp::max);
    auto sums = nn::activation<B, float>(*rank_, Shape{2, n});  // sum_exp | target logit, reduced together
    const auto sum_exp = sums.view().rows(0, 1).reshape(Shape{n});
    const auto target_logit = sums.view().rows(1, 2).reshape(Shape{n});
    B::sum_exp_shifted(c, z, max.cview(), sum_exp);
    B::target_logit(c, z, y, vocab_begin(), ignore_index_, target_logit);
    mesh_->tp().all_reduce(sums.view());

    auto losses = nn::activation<B, float>(*rank_, Shape{n});
    ctx.lse = nn::activation<B, float>(*rank_, Shape{n});
    const std::int64_t count = B::cross_entropy_combine(c, max.cview(), sum_exp, target_logit, y, ignore_index_,
                                                        losses.view(), ctx.lse.view());
    return nn::LossValue{B::sum(c, losses.cview()), count};
  }

  //! This rank's shard of d(scale * loss sum)/d logits, shaped like the forward's logits (0 on ignored rows).
  [[nodiscard]] nn::TensorOf<B, T> backward_input(Ctx& ctx, float scale) {
    nn::detail::advance(ctx, nn::Pass::forward, nn::Pass::backward_input, label(), "backward_input", rank_->id());
    const auto dz = nn::as_matrix(ctx.logits.view());
    B::cross_entropy_backward(rank_->context(), dz, ctx.targets.cview(), ctx.lse.cview(), ignore_index_, scale, dz,
                              vocab_begin());
    ctx.targets.reset();
    ctx.lse.reset();
    return std::move(ctx.logits);
  }

  //! Nothing to accumulate: frees what the context still holds.
  void backward_weight(Ctx& ctx) {
    nn::detail::advance(ctx, nn::Pass::backward_input, nn::Pass::none, label(), "backward_weight", rank_->id());
    ctx.logits.reset();
    ctx.targets.reset();
    ctx.lse.reset();
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("VocabParallelCrossEntropy '{}'", name_); }

  void check_shapes(const Shape& logits, const Shape& targets) const {
    const int r = logits.rank();
    bool leading = r == targets.rank() + 1;
    for (int i = 0; leading && i < targets.rank(); ++i) leading = logits[i] == targets[i];
    if (!leading)
      throw Error(fmt::format("{}: targets {} are not the leading dimensions of logits {}", label(), targets, logits),
                  rank_->id());
    if (logits[r - 1] * mesh_->tp_size() != vocab_)
      throw Error(fmt::format("{}: logits shard width {} times TP {} is {}, not the vocabulary {}", label(),
                              logits[r - 1], mesh_->tp_size(), logits[r - 1] * mesh_->tp_size(), vocab_),
                  rank_->id());
  }

  void check_targets(nn::ViewOf<B, const std::int32_t> targets) const {
    const auto y = to_vector(targets);
    for (std::size_t i = 0; i < y.size(); ++i)
      if (y[i] != ignore_index_ && (y[i] < 0 || y[i] >= vocab_))
        throw Error(fmt::format("{}: target {} at row {} is outside [0, {}) and is not ignore_index {}", label(), y[i],
                                i, vocab_, ignore_index_),
                    rank_->id());
  }

  Mesh* mesh_;
  Rank<B>* rank_;
  std::string name_;
  std::int64_t vocab_;
  std::int32_t ignore_index_;
};

}  // namespace parallax::tp

namespace parallax {
using tp::VocabParallelCrossEntropy;  // the name users write: parallax::VocabParallelCrossEntropy
}  // namespace parallax

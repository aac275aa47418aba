// parallax/nn/embedding.hpp — token + learned position embedding: int32 ids [T, B] to activations [T, B, D].
#pragma once

#include <cstdint>
#include <string>

#include <fmt/format.h>

#include "../core/init.hpp"
#include "module.hpp"

namespace parallax::nn {

//! Options of an `Embedding`.
struct EmbeddingOptions {
  float init_std = 0.02f;  // both tables ~ Normal(0, init_std)
  std::uint64_t seed = 0;  // mixed with each parameter's name
  std::string name = "embedding";
};

//! The input embedding of a GPT: out[t, b] = token[ids[t, b]] + position[t], with a token table
//! `<name>.token.weight` [V, D] and a position table `<name>.position.weight` [max_seq, D], both replicated.
//! Storage T (fp32, bf16, fp16).
//!
//! forward saves the ids; backward_input(ctx, dy) returns nothing (token ids have no gradient) and keeps dy;
//! backward_weight accumulates both tables' gradients (repeated ids summed) and frees both. The input is
//! token ids, not an activation, so this is a `Module` but not a `Layer`.
//! @code
//! nn::Embedding<host::Backend, float> wte(rank, 50304, 1024, 768, {.seed = 1234});
//! nn::Embedding<host::Backend, float>::Ctx ctx;
//! auto x = wte.forward(ctx, ids);   wte.backward_input(ctx, dx);   wte.backward_weight(ctx);
//! @endcode
template <Backend B, FloatElement T>
class Embedding {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;

  struct Ctx : CtxBase {
    TensorOf<B, std::int32_t> ids;
    TensorOf<B, T> dy;
  };

  //! A vocabulary of `vocab` tokens and sequences of up to `max_seq` positions, embedded in `dim` features.
  Embedding(Rank<B>& rank, std::int64_t vocab, std::int64_t max_seq, std::int64_t dim, const EmbeddingOptions& o = {})
      : rank_(&rank),
        name_(o.name),
        token_(rank.allocator(),
               ShardSpec::replicated(join_name(o.name, "token.weight"), checked(vocab, max_seq, dim))),
        position_(rank.allocator(), ShardSpec::replicated(join_name(o.name, "position.weight"), Shape{max_seq, dim})) {
    for (auto* p : parameters())
      init_shard(p->value(), p->spec(), init::normal(o.init_std, seed_for(o.seed, p->name())));
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  [[nodiscard]] std::int64_t vocab_size() const noexcept { return token_.shape()[0]; }
  [[nodiscard]] std::int64_t max_seq() const noexcept { return position_.shape()[0]; }
  [[nodiscard]] std::int64_t dim() const noexcept { return token_.shape()[1]; }
  [[nodiscard]] Parameter<T, Memory>& token() noexcept { return token_; }
  [[nodiscard]] Parameter<T, Memory>& position() noexcept { return position_; }
  [[nodiscard]] ParameterList<T, Memory> parameters() { return {&token_, &position_}; }

  //! ids [T, B] (each in [0, V), T <= max_seq) to [T, B, D].
  [[nodiscard]] TensorOf<B, T> forward(Ctx& ctx, ViewOf<B, const std::int32_t> ids) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank_->id());
    const Shape& s = ids.shape();
    if (s.rank() != 2)
      throw Error(fmt::format("{}: ids {} are not [T, B]", label(), s), rank_->id());
    if (s[0] > max_seq())
      throw Error(fmt::format("{}: sequence length {} exceeds max_seq {}", label(), s[0], max_seq()), rank_->id());
    const Shape rows{s.numel(), dim()};
    auto& c = rank_->context();
    auto y = activation<B, T>(*rank_, Shape{s[0], s[1], dim()});
    B::embedding_forward(c, ids.flatten(), ViewOf<B, const T>(token_.acquire_value()), y.view().reshape(rows));
    token_.release_value();
    TensorOf<B, T> pos(rank_->allocator(), rows, MemoryCategory::workspace);
    B::embedding_forward(c, position_ids(s).cview(), ViewOf<B, const T>(position_.acquire_value()), pos.view());
    position_.release_value();
    B::axpby(c, 1.f, pos.cview(), 1.f, y.view().reshape(rows));
    ctx.ids = save<B, std::int32_t>(*rank_, ids);
    return y;
  }

  //! Keeps dy [T, B, D] for backward_weight; the ids have no gradient.
  void backward_input(Ctx& ctx, ViewOf<B, const T> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    const Shape& s = ctx.ids.shape();
    if (dy.shape() != Shape{s[0], s[1], dim()})
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(),
                              Shape{s[0], s[1], dim()}),
                  rank_->id());
    ctx.dy = save<B, T>(*rank_, dy);
  }

  //! token.grad += scatter of dy by token id, position.grad += scatter of dy by position; frees ids and dy.
  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank_->id());
    auto& c = rank_->context();
    const Shape& s = ctx.ids.shape();
    const auto dy = ctx.dy.cview().reshape(Shape{s.numel(), dim()});
    B::embedding_backward(c, ctx.ids.cview().flatten(), dy, token_.acquire_grad());
    token_.release_grad();
    B::embedding_backward(c, position_ids(s).cview(), dy, position_.acquire_grad());
    position_.release_grad();
    ctx.ids.reset();
    ctx.dy.reset();
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("Embedding '{}'", name_); }
  [[nodiscard]] Shape checked(std::int64_t vocab, std::int64_t max_seq, std::int64_t dim) const {
    if (vocab < 1 || max_seq < 1 || dim < 1)
      throw Error(fmt::format("{}: vocab {}, max_seq {} and dim {} must all be positive", label(), vocab, max_seq, dim),
                  rank_->id());
    return Shape{vocab, dim};
  }
  //! The position of every token of ids [T, B], flattened: t at index t * B + b.
  [[nodiscard]] TensorOf<B, std::int32_t> position_ids(const Shape& ids) const {
    TensorOf<B, std::int32_t> out(rank_->allocator(), Shape{ids.numel()}, MemoryCategory::workspace);
    B::position_ids(rank_->context(), out.view(), 0, ids[1]);
    return out;
  }

  Rank<B>* rank_;
  std::string name_;
  Parameter<T, Memory> token_, position_;
};

}  // namespace parallax::nn

// parallax/nn/causal_attention.hpp — the causal multi-head attention core: fused qkv in, heads joined out.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <fmt/format.h>

#include "module.hpp"

namespace parallax::nn {

//! Options of a `CausalAttention` core.
struct AttentionOptions {
  std::string name = "attn_core";
};

//! The causal self-attention core of a transformer block, without projections: qkv [T, B, 3 * H * Dh]
//! (per token: q of every head | k | v, each head-major, as the fused projection writes them) to
//! y [T, B, H * Dh] (head-major), per batch b and head h
//!   y[t, b, h] = sum_{j <= t} softmax_j(q[t] . k[j] / sqrt(Dh)) v[j].
//! Storage T (fp32, bf16, fp16); the backend's attention kernels compute in fp32.
//!
//! forward splits qkv into q, k, v [B, H, T, Dh], runs `B::attention_forward` and joins the heads; it saves
//! q, k, v, the head-major output and the fp32 log-sum-exp [B, H, T]. backward_input returns dqkv and frees
//! all of them. It has no parameters: backward_weight only advances the pass.
//!
//! Under tensor parallelism each TP rank runs this core on its H / tp heads.
//! @code
//! nn::CausalAttention<host::Backend, float> core(rank, 12, 64, {.name = "h.0.attn.core"});
//! nn::CausalAttention<host::Backend, float>::Ctx ctx;
//! auto y = core.forward(ctx, qkv);   auto dqkv = core.backward_input(ctx, dy);   core.backward_weight(ctx);
//! @endcode
template <Backend B, FloatElement T>
class CausalAttention {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;

  struct Ctx : CtxBase {
    TensorOf<B, T> q, k, v, o;
    TensorOf<B, float> lse;
  };

  //! A core over `heads` heads of `head_dim` features each.
  CausalAttention(Rank<B>& rank, std::int64_t heads, std::int64_t head_dim, const AttentionOptions& o = {})
      : rank_(&rank), name_(o.name), heads_(heads), head_dim_(head_dim) {
    if (heads < 1 || head_dim < 1)
      throw Error(fmt::format("{}: {} heads of {} features, both must be positive", label(), heads, head_dim),
                  rank.id());
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  //! Local heads and features per head.
  [[nodiscard]] std::int64_t heads() const noexcept { return heads_; }
  [[nodiscard]] std::int64_t head_dim() const noexcept { return head_dim_; }
  [[nodiscard]] ParameterList<T, Memory> parameters() { return {}; }

  //! qkv [T, B, 3 * H * Dh] to y [T, B, H * Dh].
  [[nodiscard]] TensorOf<B, T> forward(Ctx& ctx, ViewOf<B, const T> qkv) {
    detail::advance(ctx, Pass::none, Pass::forward, label(), "forward", rank_->id());
    const Shape& s = qkv.shape();
    if (s.rank() != 3 || s[2] != 3 * heads_ * head_dim_)
      throw Error(fmt::format("{}: qkv {} is not [T, B, 3 * {} heads * {}] = [T, B, {}]", label(), s, heads_,
                              head_dim_, 3 * heads_ * head_dim_),
                  rank_->id());
    const Shape hs{s[1], heads_, s[0], head_dim_};
    ctx.q = activation<B, T>(*rank_, hs);
    ctx.k = activation<B, T>(*rank_, hs);
    ctx.v = activation<B, T>(*rank_, hs);
    ctx.o = activation<B, T>(*rank_, hs);
    ctx.lse = activation<B, float>(*rank_, Shape{s[1], heads_, s[0]});
    auto& c = rank_->context();
    B::split_qkv(c, qkv, ctx.q.view(), ctx.k.view(), ctx.v.view());
    B::attention_forward(c, ctx.q.cview(), ctx.k.cview(), ctx.v.cview(), ctx.o.view(), ctx.lse.view(), scale());
    auto y = activation<B, T>(*rank_, Shape{s[0], s[1], heads_ * head_dim_});
    B::merge_heads(c, ctx.o.cview(), y.view());
    return y;
  }

  //! dy [T, B, H * Dh] to dqkv [T, B, 3 * H * Dh]; frees what the forward saved.
  [[nodiscard]] TensorOf<B, T> backward_input(Ctx& ctx, ViewOf<B, const T> dy) {
    detail::advance(ctx, Pass::forward, Pass::backward_input, label(), "backward_input", rank_->id());
    const Shape hs = ctx.q.shape();  // a copy: q is freed below
    const Shape ys{hs[2], hs[0], heads_ * head_dim_};
    if (dy.shape() != ys)
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(), ys),
                  rank_->id());
    auto& c = rank_->context();
    auto d_o = activation<B, T>(*rank_, hs);
    B::split_heads(c, dy, d_o.view());
    auto dq = activation<B, T>(*rank_, hs), dk = activation<B, T>(*rank_, hs), dv = activation<B, T>(*rank_, hs);
    B::attention_backward(c, ctx.q.cview(), ctx.k.cview(), ctx.v.cview(), ctx.o.cview(), d_o.cview(),
                          ctx.lse.cview(), scale(), dq.view(), dk.view(), dv.view());
    d_o.reset();
    ctx.q.reset();
    ctx.k.reset();
    ctx.v.reset();
    ctx.o.reset();
    ctx.lse.reset();
    auto dqkv = activation<B, T>(*rank_, Shape{hs[2], hs[0], 3 * heads_ * head_dim_});
    B::merge_qkv(c, dq.cview(), dk.cview(), dv.cview(), dqkv.view());
    return dqkv;
  }

  //! No parameters: only checks and advances the pass.
  void backward_weight(Ctx& ctx) {
    detail::advance(ctx, Pass::backward_input, Pass::none, label(), "backward_weight", rank_->id());
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("CausalAttention '{}'", name_); }
  [[nodiscard]] float scale() const { return 1.f / std::sqrt(static_cast<float>(head_dim_)); }

  Rank<B>* rank_;
  std::string name_;
  std::int64_t heads_, head_dim_;
};

}  // namespace parallax::nn

// parallax/tp/transformer_block.hpp — a pre-LayerNorm GPT-2 transformer block, tensor parallel, optionally sequence parallel.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "../nn/checkpoint.hpp"
#include "../nn/layer_norm.hpp"
#include "parallel_attention.hpp"
#include "parallel_mlp.hpp"
#include "sequence_parallel.hpp"

namespace parallax::tp {

//! Options of a `TransformerBlock`.
struct TransformerBlockOptions {
  std::int64_t hidden = 0;         // MLP features; 0: 4 * dim
  float eps = 1e-5f;               // LayerNorm epsilon
  bool bias = true;                // biases on every projection
  bool sequence_parallel = false;  // LayerNorm/residual regions hold this rank's sequence shard [T/tp, B, D]
  bool checkpoint = false;         // activation checkpointing: keep only the block's input, recompute in backward
  float init_std = 0.02f;          // weights of attn.qkv and mlp.fc
  float proj_init_std = 0.02f;     // weights of attn.proj and mlp.proj (GPT-2: 0.02 / sqrt(2 * layers))
  std::uint64_t seed = 0;
  std::string name = "block";
};

namespace detail {

//! What a `TransformerBlock` runs (and checkpoints): y = x + attn(ln_1(x)), z = y + mlp(ln_2(y)), written out so that
//! the residual add before ln_2 and the residual gradients run inside the LayerNorm kernels
//! (`nn::LayerNorm::forward_residual`, `backward_input_residual`). Its context keeps what its layers keep; y, the
//! residual stream, is ln_2's saved input.
template <class Mesh, Backend B, FloatElement T>
class PreLNBody {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;
  using LN = SequenceParallel<Mesh, nn::LayerNorm<B, T>>;
  using Attn = ParallelAttention<Mesh, B, T>;
  using Mlp = ParallelMLP<Mesh, B, T>;

  struct Ctx : nn::CtxBase {
    typename LN::Ctx ln_1;
    typename Attn::Ctx attn;
    typename LN::Ctx ln_2;
    typename Mlp::Ctx mlp;
  };

  PreLNBody(std::string name, LN ln_1, Attn attn, LN ln_2, Mlp mlp)
      : name_(std::move(name)), ln_1_(std::move(ln_1)), attn_(std::move(attn)), ln_2_(std::move(ln_2)),
        mlp_(std::move(mlp)) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] Rank<B>& rank() const noexcept { return ln_1_.rank(); }
  //! ln_1, attn, ln_2, mlp.
  [[nodiscard]] nn::ParameterList<T, Memory> parameters() {
    auto p = ln_1_.parameters();
    nn::append(p, attn_.parameters());
    nn::append(p, ln_2_.parameters());
    nn::append(p, mlp_.parameters());
    return p;
  }

  [[nodiscard]] nn::TensorOf<B, T> forward(Ctx& ctx, nn::ViewOf<B, const T> x) {
    nn::detail::advance(ctx, nn::Pass::none, nn::Pass::forward, label(), "forward", rank().id());
    auto h = ln_1_.forward(ctx.ln_1, x);
    auto a = attn_.forward(ctx.attn, h.cview());
    h.reset();
    auto u = ln_2_.inner().forward_residual(ctx.ln_2, x, a.cview());  // ln_2(y), y = x + a kept in ctx.ln_2
    a.reset();
    auto z = mlp_.forward(ctx.mlp, u.cview());
    u.reset();
    B::axpby(rank().context(), 1.f, nn::LayerNorm<B, T>::residual(ctx.ln_2), 1.f, z.view());  // z = y + mlp(...)
    return z;
  }

  [[nodiscard]] nn::TensorOf<B, T> backward_input(Ctx& ctx, nn::ViewOf<B, const T> dz) {
    nn::detail::advance(ctx, nn::Pass::forward, nn::Pass::backward_input, label(), "backward_input", rank().id());
    auto du = mlp_.backward_input(ctx.mlp, dz);
    auto dy = ln_2_.inner().backward_input_residual(ctx.ln_2, du.cview(), dz);  // dz + ln_2's dx
    du.reset();
    auto dh = attn_.backward_input(ctx.attn, dy.cview());
    return ln_1_.inner().backward_input_residual(ctx.ln_1, dh.cview(), dy.cview());  // dy + ln_1's dx
  }

  void backward_weight(Ctx& ctx) {
    nn::detail::advance(ctx, nn::Pass::backward_input, nn::Pass::none, label(), "backward_weight", rank().id());
    mlp_.backward_weight(ctx.mlp);
    ln_2_.backward_weight(ctx.ln_2);
    attn_.backward_weight(ctx.attn);
    ln_1_.backward_weight(ctx.ln_1);
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("TransformerBlock '{}'", name_); }

  std::string name_;
  LN ln_1_;
  Attn attn_;
  LN ln_2_;
  Mlp mlp_;
};

}  // namespace detail

//! A GPT-2 block, pre-LayerNorm:  y = x + attn(ln_1(x)),  z = y + mlp(ln_2(y)),  over activations [T, B, D]
//! (with sequence parallelism [T/tp, B, D]: this rank's rows of the sequence).
//!
//! Parameters, under the block's name: `ln_1.{weight,bias}`, `attn.qkv.{weight,bias}` ([3D, D], q | k | v),
//! `attn.proj.{weight,bias}`, `ln_2.{weight,bias}`, `mlp.fc.{weight,bias}`, `mlp.proj.{weight,bias}`;
//! the projections are split over TP (heads and MLP features), LayerNorms and output biases replicated.
//! Without sequence parallelism the block runs four TP collectives per forward (an all-reduce after
//! each row-parallel projection, and one per column-parallel input gradient in backward); with it, each
//! all-reduce becomes an all-gather before the column-parallel GEMM plus a reduce-scatter after the
//! row-parallel one, and the LayerNorm gradients are summed over TP.
//! The residual add before ln_2 runs in ln_2's kernel, and each residual gradient in the LayerNorm backward
//! kernel before it; the MLP's GELU runs in the epilogues of its GEMMs (`tp::ParallelMLP`).
//! With `checkpoint`, only the block's input is kept per microbatch and the block is recomputed in backward.
//! @code
//! tp::TransformerBlock<Mesh, B, bf16> block(mesh, 768, 12, {.sequence_parallel = true, .name = "h.0"});
//! decltype(block)::Ctx ctx;
//! auto y = block.forward(ctx, x);  auto dx = block.backward_input(ctx, dy);  block.backward_weight(ctx);
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class TransformerBlock : public nn::Checkpoint<detail::PreLNBody<Mesh, B, T>> {
  using Body = detail::PreLNBody<Mesh, B, T>;
  using Base = nn::Checkpoint<Body>;

 public:
  //! `dim` model features and `heads` heads (`std::int64_t` or `fixed<N>`): heads must divide by TP (a
  //! compile error for a `fixed<N>` count on a mesh with a static TP extent), dim by heads, and the MLP
  //! features by TP.
  template <SizeArg D, SizeArg H>
  TransformerBlock(Mesh& mesh, D dim, H heads, const TransformerBlockOptions& o = {})
      : TransformerBlock(mesh,
                         detail::attention_sizes(mesh, fmt::format("ParallelAttention '{}'", nn::join_name(o.name, "attn")),
                                                 static_cast<std::int64_t>(dim), static_cast<std::int64_t>(heads)),
                         o) {
    static_assert(statically_divisible<Mesh, H>,
                  "TransformerBlock: fixed<N> heads are not divisible by the mesh's static TP extent; make the number "
                  "of heads a multiple of TP");
  }

 private:
  // Builds the block once the attention sizes are checked (so a bad head count is the error reported).
  TransformerBlock(Mesh& mesh, detail::AttentionSizes s, const TransformerBlockOptions& o)
      : Base(o.name, make_ln(mesh, s.dim, o, "ln_1"),
             ParallelAttention<Mesh, B, T>(mesh, s.dim, s.heads,
                                           {.bias = o.bias, .sequence_parallel = o.sequence_parallel,
                                            .init_std = o.init_std, .proj_init_std = o.proj_init_std, .seed = o.seed,
                                            .name = nn::join_name(o.name, "attn")}),
             make_ln(mesh, s.dim, o, "ln_2"),
             ParallelMLP<Mesh, B, T>(mesh, s.dim, o.hidden > 0 ? o.hidden : 4 * s.dim,
                                     {.bias = o.bias, .sequence_parallel = o.sequence_parallel,
                                      .init_std = o.init_std, .proj_init_std = o.proj_init_std, .seed = o.seed,
                                      .name = nn::join_name(o.name, "mlp")})) {
    this->set_enabled(o.checkpoint);
  }

  [[nodiscard]] static typename Body::LN make_ln(Mesh& mesh, std::int64_t dim, const TransformerBlockOptions& o,
                                                 const char* which) {
    typename Body::LN ln(mesh, dim, nn::LayerNormOptions{.eps = o.eps, .name = nn::join_name(o.name, which)});
    ln.set_enabled(o.sequence_parallel);
    return ln;
  }
};

}  // namespace parallax::tp

namespace parallax {
using tp::TransformerBlock;  // the name users write: parallax::TransformerBlock
}  // namespace parallax

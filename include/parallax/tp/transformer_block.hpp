// parallax/tp/transformer_block.hpp — a pre-LayerNorm GPT-2 transformer block, tensor parallel, optionally sequence parallel.
#pragma once

#include <cstdint>
#include <string>

#include <fmt/format.h>

#include "../nn/checkpoint.hpp"
#include "../nn/layer_norm.hpp"
#include "../nn/residual.hpp"
#include "../nn/sequential.hpp"
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

template <class Mesh, Backend B, FloatElement T>
struct BlockTypes {
  using LN = SequenceParallel<Mesh, nn::LayerNorm<B, T>>;
  using Attn = nn::Residual<nn::Sequential<LN, ParallelAttention<Mesh, B, T>>>;
  using Mlp = nn::Residual<nn::Sequential<LN, ParallelMLP<Mesh, B, T>>>;
  using Body = nn::Sequential<Attn, Mlp>;
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
//! With `checkpoint`, only the block's input is kept per microbatch and the block is recomputed in backward.
//! @code
//! tp::TransformerBlock<Mesh, B, bf16> block(mesh, 768, 12, {.sequence_parallel = true, .name = "h.0"});
//! decltype(block)::Ctx ctx;
//! auto y = block.forward(ctx, x);  auto dx = block.backward_input(ctx, dy);  block.backward_weight(ctx);
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class TransformerBlock : public nn::Checkpoint<typename detail::BlockTypes<Mesh, B, T>::Body> {
  using Types = detail::BlockTypes<Mesh, B, T>;
  using Base = nn::Checkpoint<typename Types::Body>;

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
      : Base(o.name,
             typename Types::Attn(
                 nn::join_name(o.name, "attn_block"), make_ln(mesh, s.dim, o, "ln_1"),
                 ParallelAttention<Mesh, B, T>(mesh, s.dim, s.heads,
                                               {.bias = o.bias, .sequence_parallel = o.sequence_parallel,
                                                .init_std = o.init_std, .proj_init_std = o.proj_init_std,
                                                .seed = o.seed, .name = nn::join_name(o.name, "attn")})),
             typename Types::Mlp(
                 nn::join_name(o.name, "mlp_block"), make_ln(mesh, s.dim, o, "ln_2"),
                 ParallelMLP<Mesh, B, T>(mesh, s.dim, o.hidden > 0 ? o.hidden : 4 * s.dim,
                                         {.bias = o.bias, .sequence_parallel = o.sequence_parallel,
                                          .init_std = o.init_std, .proj_init_std = o.proj_init_std, .seed = o.seed,
                                          .name = nn::join_name(o.name, "mlp")}))) {
    this->set_enabled(o.checkpoint);
  }

  [[nodiscard]] static typename Types::LN make_ln(Mesh& mesh, std::int64_t dim, const TransformerBlockOptions& o,
                                                  const char* which) {
    typename Types::LN ln(mesh, dim, nn::LayerNormOptions{.eps = o.eps, .name = nn::join_name(o.name, which)});
    ln.set_enabled(o.sequence_parallel);
    return ln;
  }
};

}  // namespace parallax::tp

namespace parallax {
using tp::TransformerBlock;  // the name users write: parallax::TransformerBlock
}  // namespace parallax

// parallax/tp/parallel_attention.hpp — causal self-attention with its heads split over TP (Megatron style).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "../nn/causal_attention.hpp"
#include "../nn/sequential.hpp"
#include "column_parallel_linear.hpp"
#include "divisible.hpp"
#include "row_parallel_linear.hpp"

namespace parallax::tp {

//! Options of a `ParallelAttention`.
struct ParallelAttentionOptions {
  bool bias = true;
  bool sequence_parallel = false;  // input and output are this rank's sequence shard [T/tp, B, D]
  float init_std = 0.02f;          // the fused QKV projection's weight ~ Normal(0, init_std)
  float proj_init_std = 0.02f;     // the output projection's (GPT-2: 0.02 / sqrt(2 * layers))
  std::uint64_t seed = 0;
  std::string name = "attn";
};

namespace detail {

//! The sizes of an attention layer, checked: D divides into H heads and H divides over TP.
struct AttentionSizes {
  std::int64_t dim, heads, local_heads, head_dim;
};

template <class Mesh>
[[nodiscard]] AttentionSizes attention_sizes(const Mesh& mesh, std::string_view module, std::int64_t dim,
                                             std::int64_t heads) {
  if (dim <= 0 || heads <= 0 || dim % heads != 0)
    throw Error(fmt::format("{}: dimension {} does not divide into {} heads", module, dim, heads), mesh.rank());
  return {dim, heads, check_divisible(mesh, module, "heads", heads), dim / heads};
}

}  // namespace detail

//! Causal multi-head self-attention x [T, B, D] -> [T, B, D] with the heads split over the mesh's TP group:
//! a column-parallel fused projection `<name>.qkv` ([3D, D], blocks q | k | v, so each rank holds whole
//! heads), the attention core on this rank's H / TP heads, and a row-parallel output projection
//! `<name>.proj` whose all-reduce (reduce-scatter under sequence parallelism) completes the layer.
//! Two collectives per forward, two per backward. Every shard equals the slice of the single-rank layer.
//! @code
//! tp::ParallelAttention<Mesh, B, bf16> attn(mesh, 768, 12, {.name = "h.0.attn"});
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class ParallelAttention
    : public nn::Sequential<ColumnParallelLinear<Mesh, B, T>, nn::CausalAttention<B, T>, RowParallelLinear<Mesh, B, T>> {
  using Qkv = ColumnParallelLinear<Mesh, B, T>;
  using Core = nn::CausalAttention<B, T>;
  using Proj = RowParallelLinear<Mesh, B, T>;
  using Base = nn::Sequential<Qkv, Core, Proj>;

 public:
  //! Model dimension `dim` and `heads` heads (`std::int64_t` or `fixed<N>`): heads must divide by TP
  //! (a compile error for a `fixed<N>` count on a mesh with a static TP extent) and dim by heads.
  template <SizeArg D, SizeArg H>
  ParallelAttention(Mesh& mesh, D dim, H heads, const ParallelAttentionOptions& o = {})
      : ParallelAttention(mesh, detail::attention_sizes(mesh, label(o.name), static_cast<std::int64_t>(dim),
                                                        static_cast<std::int64_t>(heads)),
                          o) {
    static_assert(statically_divisible<Mesh, H>,
                  "ParallelAttention: fixed<N> heads are not divisible by the mesh's static TP extent; make the "
                  "number of heads a multiple of TP");
  }

  //! This rank's heads, and the size of one head.
  [[nodiscard]] std::int64_t local_heads() const noexcept { return sizes_.local_heads; }
  [[nodiscard]] std::int64_t head_dim() const noexcept { return sizes_.head_dim; }

 private:
  ParallelAttention(Mesh& mesh, detail::AttentionSizes s, const ParallelAttentionOptions& o)
      : Base(o.name,
             Qkv(mesh, s.dim, 3 * s.dim,
                 {.bias = o.bias, .sequence_parallel = o.sequence_parallel, .blocks = 3, .init_std = o.init_std,
                  .seed = o.seed, .name = nn::join_name(o.name, "qkv")}),
             Core(mesh_rank<B>(mesh), s.local_heads, s.head_dim, {.name = nn::join_name(o.name, "core")}),
             Proj(mesh, s.dim, s.dim,
                  {.bias = o.bias, .sequence_parallel = o.sequence_parallel, .init_std = o.proj_init_std,
                   .seed = o.seed, .name = nn::join_name(o.name, "proj")})),
        sizes_(s) {}

  [[nodiscard]] static std::string label(const std::string& name) { return fmt::format("ParallelAttention '{}'", name); }

  detail::AttentionSizes sizes_;
};

}  // namespace parallax::tp

namespace parallax {
using tp::ParallelAttention;  // the name users write: parallax::ParallelAttention
}  // namespace parallax

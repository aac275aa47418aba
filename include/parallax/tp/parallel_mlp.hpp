// parallax/tp/parallel_mlp.hpp — the transformer MLP (Linear, GELU, Linear) with its hidden features split over TP.
#pragma once

#include <cstdint>
#include <string>

#include "../nn/gelu.hpp"
#include "../nn/sequential.hpp"
#include "column_parallel_linear.hpp"
#include "row_parallel_linear.hpp"

namespace parallax::tp {

//! Options of a `ParallelMLP`.
struct ParallelMLPOptions {
  bool bias = true;
  bool sequence_parallel = false;  // input and output are this rank's sequence shard [T/tp, B, D]
  float init_std = 0.02f;          // `<name>.fc` weight ~ Normal(0, init_std)
  float proj_init_std = 0.02f;     // `<name>.proj` weight (GPT-2: 0.02 / sqrt(2 * layers))
  std::uint64_t seed = 0;
  std::string name = "mlp";
};

//! The transformer MLP x [T, B, D] -> [T, B, D]: a column-parallel `<name>.fc` (D -> hidden), GELU on
//! this rank's hidden / TP features, and a row-parallel `<name>.proj` (hidden -> D) whose all-reduce
//! (reduce-scatter under sequence parallelism) completes it: one collective per forward and one per backward.
//! @code
//! tp::ParallelMLP<Mesh, B, bf16> mlp(mesh, 768, 3072, {.name = "h.0.mlp"});
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class ParallelMLP
    : public nn::Sequential<ColumnParallelLinear<Mesh, B, T>, nn::GELU<B, T>, RowParallelLinear<Mesh, B, T>> {
  using Fc = ColumnParallelLinear<Mesh, B, T>;
  using Act = nn::GELU<B, T>;
  using Proj = RowParallelLinear<Mesh, B, T>;
  using Base = nn::Sequential<Fc, Act, Proj>;

 public:
  //! `dim` model features and `hidden` MLP features (`std::int64_t` or `fixed<N>`; hidden must divide by TP).
  template <SizeArg D, SizeArg H>
  ParallelMLP(Mesh& mesh, D dim, H hidden, const ParallelMLPOptions& o = {})
      : Base(o.name,
             Fc(mesh, dim, hidden,
                {.bias = o.bias, .sequence_parallel = o.sequence_parallel, .init_std = o.init_std, .seed = o.seed,
                 .name = nn::join_name(o.name, "fc")}),
             Act(mesh_rank<B>(mesh), nn::join_name(o.name, "gelu")),
             Proj(mesh, hidden, dim,
                  {.bias = o.bias, .sequence_parallel = o.sequence_parallel, .init_std = o.proj_init_std,
                   .seed = o.seed, .name = nn::join_name(o.name, "proj")})) {}
};

}  // namespace parallax::tp

namespace parallax {
using tp::ParallelMLP;  // the name users write: parallax::ParallelMLP
}  // namespace parallax

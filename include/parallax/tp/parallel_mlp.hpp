// parallax/tp/parallel_mlp.hpp — the transformer MLP (Linear, GELU, Linear) with its hidden features split over TP,
// the GELU fused into the GEMMs on both sides of it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <fmt/format.h>

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
//!
//! The GELU costs no pass of its own: the forward runs it (with fc's bias) in fc's GEMM epilogue, which also
//! writes the pre-activation that fc keeps; the backward applies its derivative in the epilogue of proj's dx GEMM
//! (`B::gemm_dgelu`), whose result fc takes over as its saved gradient. Per microbatch it keeps fc's input, the
//! pre-activation and proj's input, and each result is within rounding of `nn::Sequential<fc, nn::GELU, proj>`.
//! @code
//! tp::ParallelMLP<Mesh, B, bf16> mlp(mesh, 768, 3072, {.name = "h.0.mlp"});
//! decltype(mlp)::Ctx ctx;
//! auto y = mlp.forward(ctx, x);   auto dx = mlp.backward_input(ctx, dy);   mlp.backward_weight(ctx);
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class ParallelMLP {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;
  using Fc = ColumnParallelLinear<Mesh, B, T>;
  using Proj = RowParallelLinear<Mesh, B, T>;

  struct Ctx : nn::CtxBase {
    typename Fc::Ctx fc;
    typename Proj::Ctx proj;
  };

  //! `dim` model features and `hidden` MLP features (`std::int64_t` or `fixed<N>`; hidden must divide by TP).
  template <SizeArg D, SizeArg H>
  ParallelMLP(Mesh& mesh, D dim, H hidden, const ParallelMLPOptions& o = {})
      : name_(o.name),
        fc_(mesh, dim, hidden,
            {.bias = o.bias, .activation = Activation::gelu, .sequence_parallel = o.sequence_parallel,
             .init_std = o.init_std, .seed = o.seed, .name = nn::join_name(o.name, "fc")}),
        proj_(mesh, hidden, dim,
              {.bias = o.bias, .sequence_parallel = o.sequence_parallel, .init_std = o.proj_init_std, .seed = o.seed,
               .name = nn::join_name(o.name, "proj")}) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] Rank<B>& rank() const noexcept { return fc_.rank(); }
  [[nodiscard]] Fc& fc() noexcept { return fc_; }
  [[nodiscard]] Proj& proj() noexcept { return proj_; }
  //! fc's weight and bias, then proj's.
  [[nodiscard]] nn::ParameterList<T, Memory> parameters() {
    auto p = fc_.parameters();
    nn::append(p, proj_.parameters());
    return p;
  }

  [[nodiscard]] nn::TensorOf<B, T> forward(Ctx& ctx, nn::ViewOf<B, const T> x) {
    nn::detail::advance(ctx, nn::Pass::none, nn::Pass::forward, label(), "forward", rank().id());
    auto h = fc_.forward(ctx.fc, x);  // gelu(x W_fc^T + b_fc), this rank's hidden features
    return proj_.forward(ctx.proj, h.cview());
  }

  [[nodiscard]] nn::TensorOf<B, T> backward_input(Ctx& ctx, nn::ViewOf<B, const T> dy) {
    nn::detail::advance(ctx, nn::Pass::forward, nn::Pass::backward_input, label(), "backward_input", rank().id());
    // (dy W_proj) * gelu'(pre): the gradient of fc's pre-activation, from one GEMM.
    auto dpre = proj_.backward_input(ctx.proj, dy, Fc::preactivation(ctx.fc));
    return fc_.backward_input_preactivation(ctx.fc, std::move(dpre));
  }

  void backward_weight(Ctx& ctx) {
    nn::detail::advance(ctx, nn::Pass::backward_input, nn::Pass::none, label(), "backward_weight", rank().id());
    proj_.backward_weight(ctx.proj);
    fc_.backward_weight(ctx.fc);
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("ParallelMLP '{}'", name_); }

  std::string name_;
  Fc fc_;
  Proj proj_;
};

}  // namespace parallax::tp

namespace parallax {
using tp::ParallelMLP;  // the name users write: parallax::ParallelMLP
}  // namespace parallax

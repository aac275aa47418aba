// parallax/tp/column_parallel_linear.hpp — Megatron's column-parallel linear: the weight's output rows split
// over TP, the input replicated (or gathered from sequence shards), the output parallel or gathered.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "../core/extent.hpp"
#include "../mesh/device_mesh.hpp"
#include "../nn/linear.hpp"
#include "divisible.hpp"
#include "sequence_parallel.hpp"

namespace parallax::tp {

//! Options of a `ColumnParallelLinear`.
struct ColumnParallelOptions {
  bool bias = true;
  Activation activation = Activation::none;  // gelu: y = gelu(x W^T + b), in the local GEMM's epilogue
  bool gather_output = false;      // all-gather the output columns: y is [..., out] on every rank
  bool sequence_parallel = false;  // the input is this rank's sequence shard [T/tp, B, in]
  int blocks = 1;                  // equal blocks along the output (fused q|k|v: 3), each split over TP
  float init_std = 0.02f;          // weight ~ Normal(0, init_std); bias = 0
  std::uint64_t seed = 0;          // mixed with each parameter's name
  std::string name = "linear";
};

namespace detail {

//! dst[:, dst_col + j] = src[:, src_col + j] for j < width, on matrices dst [N, Cd] and src [N, Cs]; row by
//! row, with the memory space's copy.
template <class T, MemorySpace Space>
void copy_columns(View<T, Space> dst, std::int64_t dst_col, View<const T, Space> src, std::int64_t src_col,
                  std::int64_t width) {
  const std::int64_t n = dst.shape()[0], cd = dst.shape()[1], cs = src.shape()[1];
  for (std::int64_t r = 0; r < n; ++r)
    Space::copy(dst.data() + r * cd + dst_col, src.data() + r * cs + src_col,
                static_cast<std::size_t>(width) * sizeof(T));
}

}  // namespace detail

//! y = act(x W^T + b) with W [out, in] split by output rows over the mesh's TP group: rank r holds rows
//! [r out/tp, (r+1) out/tp) of W and b (of every block with `blocks` > 1), so its output is the matching
//! columns of y. Every shard equals the slice of the single-rank `nn::Linear` with the same name and seed. An
//! activation (`ColumnParallelOptions::activation`, elementwise, so it commutes with the split) runs in the local
//! GEMM's epilogue.
//!
//! forward: (SP: all-gather the sequence shards [T/tp, B, in] into x [T, B, in]) -> local GEMM -> y_local
//! [T, B, out/tp] (gather_output: all-gathered into y [T, B, out]). backward_input: (gather_output: this
//! rank's columns of dy) -> partial dx from the local rows -> summed over TP (SP: reduce-scattered into
//! the shard [T/tp, B, in]; else all-reduced). backward_weight: the local layer's, no communication.
//! `backward_input_preactivation` takes the gradient of this rank's pre-activation instead of dy (the next layer
//! fused the activation's backward into its own GEMM: see `tp::ParallelMLP`).
//!
//! @tparam Mesh a `DeviceMesh`.  @tparam B the backend.  @tparam T the storage type.
//! @code
//! tp::ColumnParallelLinear<Mesh, host::Backend, float> fc1(mesh, 1024, 4096, {.name = "h.0.mlp.c_fc"});
//! tp::ColumnParallelLinear<Mesh, host::Backend, float> qkv(mesh, fixed<1024>, fixed<3 * 1024>,
//!                                                          {.blocks = 3, .name = "h.0.attn.c_attn"});
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class ColumnParallelLinear {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;
  using Linear = nn::Linear<B, T>;

  struct Ctx : nn::CtxBase {
    typename Linear::Ctx local;
  };

  //! A layer from `in` to `out` features (`std::int64_t` or `fixed<N>`); `out / blocks` must divide by TP
  //! (checked at compile time for a `fixed<N>` size on a mesh with a static TP extent).
  template <SizeArg In, SizeArg Out>
  ColumnParallelLinear(Mesh& mesh, In in, Out out, ColumnParallelOptions o = {})
      : mesh_(&mesh),
        rank_(&mesh_rank<B>(mesh)),
        o_(std::move(o)),
        out_(static_cast<std::int64_t>(out)),
        local_(make_local(static_cast<std::int64_t>(in))) {
    static_assert(statically_divisible<Mesh, Out>,
                  "ColumnParallelLinear: fixed<N> output features are not divisible by the mesh's static TP extent; "
                  "make N a multiple of TP");
  }

  [[nodiscard]] const std::string& name() const noexcept { return o_.name; }

  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  //! Global input and output features.
  [[nodiscard]] std::int64_t in_features() const noexcept { return local_.in_features(); }
  [[nodiscard]] std::int64_t out_features() const noexcept { return out_; }
  //! This rank's output features (out / TP).
  [[nodiscard]] std::int64_t local_out_features() const noexcept { return local_.out_features(); }
  [[nodiscard]] nn::Parameter<T, Memory>& weight() noexcept { return local_.weight(); }
  [[nodiscard]] nn::Parameter<T, Memory>* bias() noexcept { return local_.bias(); }
  [[nodiscard]] nn::ParameterList<T, Memory> parameters() { return local_.parameters(); }
  //! This rank's pre-activation [..., out/tp] that a forward with an activation saved in `ctx` (until its
  //! backward_input): the GELU input whose gradient the next layer may form (`nn::Linear::preactivation`).
  [[nodiscard]] static nn::ViewOf<B, const T> preactivation(const Ctx& ctx) {
    return Linear::preactivation(ctx.local);
  }

  [[nodiscard]] nn::TensorOf<B, T> forward(Ctx& ctx, nn::ViewOf<B, const T> x) {
    nn::detail::advance(ctx, nn::Pass::none, nn::Pass::forward, label(), "forward", rank_->id());
    nn::TensorOf<B, T> y;
    if (o_.sequence_parallel) {
      auto full = gather_sequence<B>(*mesh_, x);
      y = local_.forward(ctx.local, full.cview());
    } else {
      y = local_.forward(ctx.local, x);
    }
    return o_.gather_output ? gather_columns(y.cview()) : std::move(y);
  }

  [[nodiscard]] nn::TensorOf<B, T> backward_input(Ctx& ctx, nn::ViewOf<B, const T> dy) {
    nn::detail::advance(ctx, nn::Pass::forward, nn::Pass::backward_input, label(), "backward_input", rank_->id());
    const Shape& xs = ctx.local.x.shape();
    const Shape want = xs.with(xs.rank() - 1, o_.gather_output ? out_ : local_out_features());
    if (dy.shape() != want)
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(), want),
                  rank_->id());
    nn::TensorOf<B, T> dx;
    if (o_.gather_output) {
      // This rank's columns of the full output gradient.
      auto mine = nn::activation<B, T>(*rank_, want.with(want.rank() - 1, local_out_features()));
      detail::copy_columns(nn::as_matrix(mine.view()), 0, nn::as_matrix(dy), mesh_->tp_rank() * local_out_features(),
                           local_out_features());
      dx = local_.backward_input(ctx.local, mine.cview());
    } else {
      dx = local_.backward_input(ctx.local, dy);
    }
    return sum_input_grad(std::move(dx));
  }

  //! backward_input given `dpre`, the gradient of this rank's pre-activation [..., out/tp] (also with
  //! gather_output): the activation's backward is already done. Takes `dpre` over (no copy).
  [[nodiscard]] nn::TensorOf<B, T> backward_input_preactivation(Ctx& ctx, nn::TensorOf<B, T> dpre) {
    nn::detail::advance(ctx, nn::Pass::forward, nn::Pass::backward_input, label(), "backward_input_preactivation",
                        rank_->id());
    return sum_input_grad(local_.backward_input_preactivation(ctx.local, std::move(dpre)));
  }

  void backward_weight(Ctx& ctx) {
    nn::detail::advance(ctx, nn::Pass::backward_input, nn::Pass::none, label(), "backward_weight", rank_->id());
    local_.backward_weight(ctx.local);
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("ColumnParallelLinear '{}'", o_.name); }

  // The input gradient summed over TP from this rank's partial one (SP: reduce-scattered into the sequence shard).
  [[nodiscard]] nn::TensorOf<B, T> sum_input_grad(nn::TensorOf<B, T> dx) {
    if (o_.sequence_parallel) return reduce_scatter_sequence<B>(*mesh_, dx.cview());
    mesh_->tp().all_reduce(dx.view());
    return dx;
  }

  // The local layer on this rank's rows of every block, after checking that they divide evenly.
  [[nodiscard]] Linear make_local(std::int64_t in) const {
    const int blocks = o_.blocks;
    if (blocks < 1) throw Error(fmt::format("{}: blocks is {}, must be >= 1", label(), blocks), rank_->id());
    if (blocks > 1 && o_.gather_output)
      throw Error(fmt::format("{}: gather_output cannot be combined with {} blocks (the gathered columns would "
                              "interleave the blocks' pieces)",
                              label(), blocks),
                  rank_->id());
    if (out_ % blocks != 0)
      throw Error(fmt::format("{}: output features {} do not split into {} blocks", label(), out_, blocks),
                  rank_->id());
    check_divisible(*mesh_, label(), blocks > 1 ? "output features per block" : "output features", out_ / blocks);
    const int tp = mesh_->tp_size(), r = mesh_->tp_rank();
    const auto w = nn::ShardSpec::split(nn::join_name(o_.name, "weight"), Shape{out_, in}, Axis::tp, 0, tp, r, blocks);
    std::optional<nn::ShardSpec> b;
    if (o_.bias) b = nn::ShardSpec::split(nn::join_name(o_.name, "bias"), Shape{out_}, Axis::tp, 0, tp, r, blocks);
    return Linear(*rank_, w, b,
                  {.bias = o_.bias, .activation = o_.activation, .init_std = o_.init_std, .seed = o_.seed,
                   .name = o_.name});
  }

  // y [..., out] on every rank from each rank's columns y_local [..., out/tp].
  [[nodiscard]] nn::TensorOf<B, T> gather_columns(nn::ViewOf<B, const T> local) {
    const int tp = mesh_->tp_size();
    const std::int64_t width = local_out_features();
    auto pieces = nn::activation<B, T>(*rank_, Shape{tp, local.numel()});
    mesh_->tp().all_gather(local.flatten(), pieces.view());
    auto y = nn::activation<B, T>(*rank_, local.shape().with(local.shape().rank() - 1, out_));
    const Shape piece{nn::as_matrix(local).shape()[0], width};
    for (int r = 0; r < tp; ++r)
      detail::copy_columns(nn::as_matrix(y.view()), r * width, pieces.cview().rows(r, r + 1).reshape(piece), 0, width);
    return y;
  }

  Mesh* mesh_;
  Rank<B>* rank_;
  ColumnParallelOptions o_;
  std::int64_t out_;
  Linear local_;
};

}  // namespace parallax::tp

namespace parallax {
using tp::ColumnParallelLinear;  // the name users write: parallax::ColumnParallelLinear
}  // namespace parallax

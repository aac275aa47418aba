// parallax/tp/row_parallel_linear.hpp — Megatron's row-parallel linear: the weight's input columns split over
// TP, the input already parallel, the partial outputs summed over TP (or reduce-scattered into sequence shards).
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

//! Options of a `RowParallelLinear`.
struct RowParallelOptions {
  bool bias = true;
  bool sequence_parallel = false;  // the output is this rank's sequence shard [T/tp, B, out]
  float init_std = 0.02f;          // weight ~ Normal(0, init_std); bias = 0
  std::uint64_t seed = 0;          // mixed with each parameter's name
  std::string name = "linear";
};

//! y = x W^T + b with W [out, in] split by input columns over the mesh's TP group: rank r holds columns
//! [r in/tp, (r+1) in/tp) of W and takes the matching features of x (the output of a column-parallel
//! layer). The bias `<name>.bias` is replicated and added once, after the reduction. Every shard equals the
//! slice of the single-rank `nn::Linear` with the same name and seed.
//!
//! forward: partial y = x_local W_local^T -> summed over TP (SP: reduce-scattered into this rank's sequence
//! shard [T/tp, B, out]; else all-reduced) -> + b. backward_input: (SP: all-gather dy) -> dx_local = dy
//! W_local. backward_weight: dW_local += dy^T x_local; db += column sums of the full dy, which every rank
//! holds (under SP it was gathered for dx), so the replicated bias gradients agree without communication.
//! `backward_input(ctx, dy, gelu_input)` also applies the backward of a GELU before this layer in the dx GEMM.
//!
//! @tparam Mesh a `DeviceMesh`.  @tparam B the backend.  @tparam T the storage type.
//! @code
//! tp::RowParallelLinear<Mesh, host::Backend, float> fc2(mesh, 4096, 1024, {.name = "h.0.mlp.c_proj"});
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class RowParallelLinear {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;
  using Linear = nn::Linear<B, T>;

  struct Ctx : nn::CtxBase {
    typename Linear::Ctx local;  // the local GEMM's: x_local, and the full dy
  };

  //! A layer from `in` to `out` features (`std::int64_t` or `fixed<N>`); `in` must divide by TP (checked
  //! at compile time for a `fixed<N>` size on a mesh with a static TP extent).
  template <SizeArg In, SizeArg Out>
  RowParallelLinear(Mesh& mesh, In in, Out out, RowParallelOptions o = {})
      : mesh_(&mesh),
        rank_(&mesh_rank<B>(mesh)),
        o_(std::move(o)),
        in_(static_cast<std::int64_t>(in)),
        local_(make_local(static_cast<std::int64_t>(out))) {
    static_assert(statically_divisible<Mesh, In>,
                  "RowParallelLinear: fixed<N> input features are not divisible by the mesh's static TP extent; "
                  "make N a multiple of TP");
    if (o_.bias)
      bias_.emplace(rank_->allocator(), nn::ShardSpec::replicated(nn::join_name(o_.name, "bias"), Shape{out_features()}));
  }

  [[nodiscard]] const std::string& name() const noexcept { return o_.name; }

  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  //! Global input and output features.
  [[nodiscard]] std::int64_t in_features() const noexcept { return in_; }
  [[nodiscard]] std::int64_t out_features() const noexcept { return local_.out_features(); }
  //! This rank's input features (in / TP).
  [[nodiscard]] std::int64_t local_in_features() const noexcept { return local_.in_features(); }
  [[nodiscard]] nn::Parameter<T, Memory>& weight() noexcept { return local_.weight(); }
  [[nodiscard]] nn::Parameter<T, Memory>* bias() noexcept { return bias_ ? &*bias_ : nullptr; }
  [[nodiscard]] nn::ParameterList<T, Memory> parameters() {
    nn::ParameterList<T, Memory> p{&local_.weight()};
    if (bias_) p.push_back(&*bias_);
    return p;
  }

  [[nodiscard]] nn::TensorOf<B, T> forward(Ctx& ctx, nn::ViewOf<B, const T> x) {
    nn::detail::advance(ctx, nn::Pass::none, nn::Pass::forward, label(), "forward", rank_->id());
    if (o_.sequence_parallel && x.shape().rank() >= 1)
      check_divisible(*mesh_, label(), "sequence positions", x.shape()[0]);
    auto partial = local_.forward(ctx.local, x);
    nn::TensorOf<B, T> y;
    if (o_.sequence_parallel) {
      y = reduce_scatter_sequence<B>(*mesh_, partial.cview());
    } else {
      mesh_->tp().all_reduce(partial.view());
      y = std::move(partial);
    }
    if (bias_) {
      B::add_bias(rank_->context(), nn::ViewOf<B, const T>(bias_->acquire_value()), nn::as_matrix(y.view()));
      bias_->release_value();
    }
    return y;
  }

  [[nodiscard]] nn::TensorOf<B, T> backward_input(Ctx& ctx, nn::ViewOf<B, const T> dy) {
    return input_grad(ctx, dy, nullptr);
  }

  //! The gradient of `gelu_input` [..., in/tp] where this layer's input was gelu(gelu_input) (a column-parallel
  //! layer's `preactivation`): dx_local * gelu'(gelu_input), formed in the local dx GEMM's epilogue
  //! (`nn::Linear::backward_input(ctx, dy, gelu_input)`).
  [[nodiscard]] nn::TensorOf<B, T> backward_input(Ctx& ctx, nn::ViewOf<B, const T> dy,
                                                  nn::ViewOf<B, const T> gelu_input) {
    return input_grad(ctx, dy, &gelu_input);
  }

  void backward_weight(Ctx& ctx) {
    nn::detail::advance(ctx, nn::Pass::backward_input, nn::Pass::none, label(), "backward_weight", rank_->id());
    if (bias_) {
      B::bias_grad(rank_->context(), nn::as_matrix(ctx.local.dy.cview()), bias_->acquire_grad());
      bias_->release_grad();
    }
    local_.backward_weight(ctx.local);
  }

 private:
  [[nodiscard]] std::string label() const { return fmt::format("RowParallelLinear '{}'", o_.name); }

  // backward_input: (SP: all-gather dy) -> the local dx, through the GELU of `gelu_input` when given.
  [[nodiscard]] nn::TensorOf<B, T> input_grad(Ctx& ctx, nn::ViewOf<B, const T> dy,
                                              const nn::ViewOf<B, const T>* gelu_input) {
    nn::detail::advance(ctx, nn::Pass::forward, nn::Pass::backward_input, label(), "backward_input", rank_->id());
    const Shape& xs = ctx.local.x.shape();
    Shape want = xs.with(xs.rank() - 1, out_features());
    if (o_.sequence_parallel) want = want.with(0, want[0] / mesh_->tp_size());
    if (dy.shape() != want)
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(), want),
                  rank_->id());
    nn::TensorOf<B, T> full;
    if (o_.sequence_parallel) {
      full = gather_sequence<B>(*mesh_, dy);
      dy = full.cview();
    }
    return gelu_input != nullptr ? local_.backward_input(ctx.local, dy, *gelu_input)
                                 : local_.backward_input(ctx.local, dy);
  }

  // The bias-free local layer on this rank's columns, after checking that they divide evenly.
  [[nodiscard]] Linear make_local(std::int64_t out) const {
    check_divisible(*mesh_, label(), "input features", in_);
    const auto w = nn::ShardSpec::split(nn::join_name(o_.name, "weight"), Shape{out, in_}, Axis::tp, 1,
                                        mesh_->tp_size(), mesh_->tp_rank());
    return Linear(*rank_, w, std::nullopt, {.bias = false, .init_std = o_.init_std, .seed = o_.seed, .name = o_.name});
  }

  Mesh* mesh_;
  Rank<B>* rank_;
  RowParallelOptions o_;
  std::int64_t in_;
  Linear local_;
  std::optional<nn::Parameter<T, Memory>> bias_;
};

}  // namespace parallax::tp

namespace parallax {
using tp::RowParallelLinear;  // the name users write: parallax::RowParallelLinear
}  // namespace parallax

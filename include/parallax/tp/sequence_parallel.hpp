// parallax/tp/sequence_parallel.hpp — sequence parallelism: activations between TP regions as sequence shards,
// moving between shard and full tensor, and the wrapper for replicated modules that run on a shard.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../mesh/device_mesh.hpp"
#include "../nn/module.hpp"
#include "divisible.hpp"

namespace parallax::tp {

namespace detail {

//! Dimension 0 of `s` (the sequence), or an error naming `op` when `s` is a scalar.
template <class Mesh>
[[nodiscard]] std::int64_t sequence_length(const Mesh& mesh, std::string_view op, const Shape& s) {
  if (s.rank() < 1) throw Error(fmt::format("{}: tensor {} has no sequence dimension", op, s), mesh.rank());
  return s[0];
}

}  // namespace detail

// Under sequence parallelism (SP) the activations between tensor-parallel regions are this rank's sequence
// shard: rows [r T/tp, (r+1) T/tp) of dimension 0 of the full [T, B, C] tensor, r the TP rank. All-gathering
// the shards over TP gives the full tensor; reduce-scattering a full tensor gives the shard of the sum.

//! The full tensor [T, ...] from every TP rank's sequence shard [T/tp, ...] (an all-gather over TP), allocated
//! from the mesh's `Rank<B>` as an activation.
//! @code
//! auto shard = tp::scatter_sequence<host::Backend>(mesh, x.cview());     // [T, B, C] -> [T/tp, B, C]
//! auto full = tp::gather_sequence<host::Backend>(mesh, shard.cview());   // back to [T, B, C]
//! @endcode
template <Backend B, class Mesh, Element T>
[[nodiscard]] nn::TensorOf<B, T> gather_sequence(Mesh& mesh, nn::ViewOf<B, const T> shard) {
  const std::int64_t t = detail::sequence_length(mesh, "gather_sequence", shard.shape());
  auto full = nn::activation<B, T>(mesh_rank<B>(mesh), shard.shape().with(0, t * mesh.tp_size()));
  mesh.tp().all_gather(shard, full.view());
  return full;
}

//! This TP rank's sequence shard [T/tp, ...] of the full tensor `full` [T, ...] (a copy; no communication).
template <Backend B, class Mesh, Element T>
[[nodiscard]] nn::TensorOf<B, T> scatter_sequence(Mesh& mesh, nn::ViewOf<B, const T> full) {
  const std::int64_t t = check_divisible(mesh, "scatter_sequence", "sequence positions",
                                         detail::sequence_length(mesh, "scatter_sequence", full.shape()));
  auto shard = nn::activation<B, T>(mesh_rank<B>(mesh), full.shape().with(0, t));
  B::copy(mesh_rank<B>(mesh).context(), full.rows(mesh.tp_rank() * t, (mesh.tp_rank() + 1) * t), shard.view());
  return shard;
}

//! This TP rank's sequence shard of the sum over TP of every rank's `partial` [T, ...] (a reduce-scatter).
template <Backend B, class Mesh, Element T>
[[nodiscard]] nn::TensorOf<B, T> reduce_scatter_sequence(Mesh& mesh, nn::ViewOf<B, const T> partial) {
  const std::int64_t t = check_divisible(mesh, "reduce_scatter_sequence", "sequence positions",
                                         detail::sequence_length(mesh, "reduce_scatter_sequence", partial.shape()));
  auto shard = nn::activation<B, T>(mesh_rank<B>(mesh), partial.shape().with(0, t));
  mesh.tp().reduce_scatter(partial, shard.view());
  return shard;
}

//! A module whose parameters are replicated over TP but which runs on this rank's sequence shard (a
//! LayerNorm between tensor-parallel regions under SP).
//!
//! forward and backward_input pass through. Each rank's gradient covers only its shard of the sequence,
//! so backward_weight runs the inner module's backward_weight on zeroed gradients, all-reduces that
//! contribution over TP and adds it to the gradients accumulated so far: the replicas stay equal and
//! equal the gradient over the whole sequence.
//! @tparam Mesh a `DeviceMesh`.  @tparam M an `nn::Layer`.
//! @code
//! tp::SequenceParallel<Mesh, nn::LayerNorm<B, float>> ln(mesh, 768, nn::LayerNormOptions{.name = "h.0.ln_1"});
//! @endcode
template <class Mesh, nn::Layer M>
class SequenceParallel {
 public:
  using backend = typename M::backend;
  using value_type = typename M::value_type;
  using Memory = typename backend::Memory;
  using Ctx = typename M::Ctx;

  //! Builds the inner module from `args`, preceded by the mesh's `Rank<B>` when `M` takes one first
  //! (`M(rank, args...)`), as they are otherwise (`M(args...)`).
  template <class... Args>
  explicit SequenceParallel(Mesh& mesh, Args&&... args)
      : mesh_(&mesh), rank_(&mesh_rank<backend>(mesh)), inner_(make(*rank_, std::forward<Args>(args)...)) {}

  [[nodiscard]] decltype(auto) name() const { return inner_.name(); }

  [[nodiscard]] Rank<backend>& rank() const noexcept { return *rank_; }
  [[nodiscard]] M& inner() noexcept { return inner_; }
  [[nodiscard]] nn::ParameterList<value_type, Memory> parameters() { return inner_.parameters(); }

  [[nodiscard]] nn::TensorOf<backend, value_type> forward(Ctx& ctx, nn::ViewOf<backend, const value_type> x) {
    return inner_.forward(ctx, x);
  }
  [[nodiscard]] nn::TensorOf<backend, value_type> backward_input(Ctx& ctx, nn::ViewOf<backend, const value_type> dy) {
    return inner_.backward_input(ctx, dy);
  }

  //! Whether the inner module runs on a sequence shard (default): when off (no sequence parallelism, every
  //! rank sees the whole sequence) the wrapper is transparent.
  void set_enabled(bool on) noexcept { enabled_ = on; }
  [[nodiscard]] bool enabled() const noexcept { return enabled_; }

  void backward_weight(Ctx& ctx) {
    if (!enabled_ || mesh_->tp_size() == 1) {
      inner_.backward_weight(ctx);
      return;
    }
    const auto params = inner_.parameters();
    // Set the gradients accumulated so far aside (a copy: binding scratch storage with bind_grad would free a
    // gradient the parameter owns), so the inner module's += leaves only this microbatch's contribution. The
    // parameters' gradient hooks are detached meanwhile: the gradient is final only after the sum over TP below.
    std::vector<nn::TensorOf<backend, value_type>> kept;
    std::vector<nn::ParameterHooks<value_type, Memory>> hooks;
    kept.reserve(params.size());
    for (auto* p : params) {
      kept.emplace_back(rank_->allocator(), p->shape(), MemoryCategory::workspace);
      backend::copy(rank_->context(), nn::ViewOf<backend, const value_type>(p->acquire_grad()), kept.back().view());
      p->zero_grad();
      auto value_only = p->hooks();
      value_only.before_grad = value_only.after_grad = nullptr;
      hooks.push_back(p->set_hooks(std::move(value_only)));
    }
    try {
      inner_.backward_weight(ctx);
    } catch (...) {
      for (std::size_t i = 0; i < params.size(); ++i) {
        backend::copy(rank_->context(), kept[i].cview(), params[i]->grad());
        params[i]->set_hooks(std::move(hooks[i]));
      }
      throw;
    }
    auto& c = rank_->context();
    for (std::size_t i = 0; i < params.size(); ++i) {
      mesh_->tp().all_reduce(params[i]->grad());
      backend::axpby(c, 1.f, kept[i].cview(), 1.f, params[i]->grad());
      params[i]->set_hooks(std::move(hooks[i]));
      params[i]->release_grad();
    }
  }

 private:
  template <class... Args>
  static M make(Rank<backend>& rank, Args&&... args) {
    if constexpr (std::is_constructible_v<M, Rank<backend>&, Args&&...>)
      return M(rank, std::forward<Args>(args)...);
    else
      return M(std::forward<Args>(args)...);
  }

  Mesh* mesh_;
  Rank<backend>* rank_;
  M inner_;
  bool enabled_ = true;
};

}  // namespace parallax::tp

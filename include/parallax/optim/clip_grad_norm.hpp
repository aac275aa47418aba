// parallax/optim/clip_grad_norm.hpp — the global gradient norm over every axis of a mesh, and clipping by it.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../comm/communicator.hpp"
#include "../core/allocator.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../mesh/device_mesh.hpp"
#include "../nn/parameter.hpp"

namespace parallax::optim {

namespace detail {

//! Whether this rank counts the gradient of `p` in a global norm: a tensor split over TP on every TP rank (each
//! holds a different piece), a tensor replicated over TP on TP rank 0 only (counted once), a shared copy of a
//! tied weight nowhere (its original is counted).
template <FloatElement T, MemorySpace Space>
[[nodiscard]] bool counts_in_norm(const nn::Parameter<T, Space>& p, int tp_rank) noexcept {
  return !p.shared_copy() && (p.spec().sharded() || tp_rank == 0);
}

//! PyTorch's clipping coefficient min(1, max_norm / (norm + 1e-6)); 1 when clipping is off (max_norm <= 0)
//! or the norm is not finite (the step is skipped then).
[[nodiscard]] inline float clip_coefficient(double norm, float max_norm) noexcept {
  if (!(max_norm > 0.f) || !std::isfinite(norm)) return 1.f;
  return static_cast<float>(std::fmin(1.0, double{max_norm} / (norm + 1e-6)));
}

//! The sum of `value` over `group`, through a one-element fp64 buffer in the group's memory space.
template <MemorySpace Space>
[[nodiscard]] double sum_over(Allocator<Space>& allocator, Communicator& group, double value) {
  Tensor<double, Space> buffer(allocator, Shape{1}, MemoryCategory::workspace);
  Space::upload(buffer.data(), &value, sizeof value);
  group.all_reduce(buffer.view(), ReduceOp::sum);
  Space::download(&value, buffer.data(), sizeof value);
  return value;
}

}  // namespace detail

//! The L2 norm of all gradients of a model laid out on `mesh`: the square root of the sum of squares over
//! every parameter of every TP shard and every PP stage, with a parameter replicated across TP counted once and
//! shared copies of tied weights (`Parameter::shared_copy`) not at all.
//! The gradients must be replicated over DP (reduced): for ZeRO-sharded gradients the `ShardedOptimizer`
//! computes the norm itself (over the DP shards too). Collective over `mesh.model_parallel()`. Sums are
//! formed in fp64; a NaN or infinite gradient gives a non-finite norm.
//! @tparam B the backend (the rank's context and allocator come from `mesh_rank<B>(mesh)`).
//! @code
//! double norm = optim::global_grad_norm<host::Backend>(mesh, model.parameters());
//! @endcode
template <Backend B, class Mesh, FloatElement T>
[[nodiscard]] double global_grad_norm(Mesh& mesh, const nn::ParameterList<T, typename B::Memory>& params) {
  using V = View<const T, typename B::Memory>;
  Rank<B>& rank = mesh_rank<B>(mesh);
  std::vector<V> grads;
  for (const auto* p : params) {
    if (p == nullptr) throw Error("global_grad_norm: a parameter is null", rank.id());
    if (detail::counts_in_norm(*p, mesh.tp_rank())) grads.push_back(V(p->grad()));
  }
  // One backend call for all of them (one host synchronization on a device backend).
  const double local = B::sum_squares(rank.context(), std::span<const V>(grads));
  return std::sqrt(detail::sum_over(rank.allocator(), mesh.model_parallel(), local));
}

//! Scales every gradient by min(1, max_norm / (norm + 1e-6)) (PyTorch's `clip_grad_norm_`) and returns
//! the norm before clipping (`global_grad_norm`). Gradients with a non-finite norm are left as they are.
//! @code
//! double norm = optim::clip_grad_norm<host::Backend>(mesh, model.parameters(), 1.0f);
//! @endcode
template <Backend B, class Mesh, FloatElement T>
double clip_grad_norm(Mesh& mesh, const nn::ParameterList<T, typename B::Memory>& params, float max_norm) {
  if (!(max_norm > 0.f) || !std::isfinite(max_norm))
    throw Error(fmt::format("clip_grad_norm: max_norm {} is not finite and > 0", max_norm), mesh.rank());
  const double norm = global_grad_norm<B>(mesh, params);
  const float c = detail::clip_coefficient(norm, max_norm);
  if (c < 1.f)
    for (auto* p : params) B::scale(mesh_rank<B>(mesh).context(), p->grad(), c);
  return norm;
}

}  // namespace parallax::optim

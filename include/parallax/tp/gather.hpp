// parallax/tp/gather.hpp — a sharded parameter's (or gradient's) full global tensor on every rank of its group.
#pragma once

#include <cstdint>
#include <vector>

#include <fmt/format.h>

#include "../core/allocator.hpp"
#include "../core/memory_stats.hpp"
#include "../core/tensor.hpp"
#include "../mesh/device_mesh.hpp"
#include "../nn/parameter.hpp"

namespace parallax::tp {

namespace detail {

//! The global tensor (host, row-major) whose shard `spec` this rank holds as `local`: all-gathered over
//! the mesh group of the spec's axis and assembled; a replicated tensor's own elements.
template <class Mesh, FloatElement T, MemorySpace Space>
[[nodiscard]] std::vector<T> gather_shards(Mesh& mesh, const nn::ShardSpec& spec, View<const T, Space> local) {
  if (!spec.sharded()) return to_vector(local);
  Communicator& group = mesh.group(*spec.axis);
  if (group.size() != spec.parts || group.rank() != spec.index)
    throw Error(fmt::format("gather '{}': shard {} of {} parts, but this rank is {} of {} on the {} axis", spec.name,
                            spec.index, spec.parts, group.rank(), group.size(), name(*spec.axis)),
                mesh.rank());
  // A short-lived buffer in the group's memory space, outside the rank's accounting.
  MemoryStats stats;
  Allocator<Space> allocator(stats, mesh.rank());
  Tensor<T, Space> all(allocator, Shape{spec.parts, local.numel()}, MemoryCategory::workspace);
  group.all_gather(local.flatten(), all.view());
  const std::vector<T> flat = to_vector(all.cview());
  std::vector<std::vector<T>> shards(static_cast<std::size_t>(spec.parts));
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const auto begin = flat.begin() + static_cast<std::ptrdiff_t>(i) * local.numel();
    shards[i].assign(begin, begin + local.numel());
  }
  return nn::assemble<T>(spec, shards);
}

}  // namespace detail

//! The full (unsharded) value of parameter `p` as a host vector, on every rank of the mesh group of its
//! axis (collective over that group); a replicated parameter's own value.
//! @code
//! std::vector<float> w = tp::gather_parameter(mesh, fc1.weight());   // [out, in], as a single rank holds it
//! @endcode
template <class Mesh, FloatElement T, MemorySpace Space>
[[nodiscard]] std::vector<T> gather_parameter(Mesh& mesh, const nn::Parameter<T, Space>& p) {
  return detail::gather_shards(mesh, p.spec(), View<const T, Space>(p.value()));
}

//! The full gradient of parameter `p`, like `gather_parameter`.
template <class Mesh, FloatElement T, MemorySpace Space>
[[nodiscard]] std::vector<T> gather_gradient(Mesh& mesh, const nn::Parameter<T, Space>& p) {
  return detail::gather_shards(mesh, p.spec(), View<const T, Space>(p.grad()));
}

}  // namespace parallax::tp

// parallax/nn/shard_spec.hpp — where a parameter's local tensor sits inside its global (unsharded) tensor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "../core/init.hpp"
#include "../core/shape.hpp"
#include "../error.hpp"
#include "../mesh/axis.hpp"

namespace parallax::nn {

//! A parameter's name, its global shape and how it is split over a mesh axis.
//!
//! Dimension `dim` of the global tensor holds `blocks` equal blocks (1 for a plain split; 3 for a fused
//! q|k|v projection) and each block is cut into `parts` equal pieces: shard `index` holds piece `index`
//! of every block, concatenated. A replicated parameter has no axis and one part.
//! @code
//! auto w = ShardSpec::split("fc1.weight", Shape{4096, 1024}, Axis::tp, 0, tp, tp_rank);   // column parallel
//! auto qkv = ShardSpec::split("attn.qkv.weight", Shape{3 * 1024, 1024}, Axis::tp, 0, tp, tp_rank, 3);
//! auto g = ShardSpec::replicated("ln_1.weight", Shape{1024});
//! @endcode
struct ShardSpec {
  std::string name;
  Shape global;
  std::optional<Axis> axis;  // the mesh axis it is split over; empty: replicated
  int dim = 0;
  int parts = 1;
  int index = 0;
  int blocks = 1;

  [[nodiscard]] static ShardSpec replicated(std::string name, Shape global) {
    return ShardSpec{std::move(name), global, std::nullopt, 0, 1, 0, 1};
  }
  //! Throws, naming the parameter and the numbers, unless dimension `dim` divides into blocks x parts.
  [[nodiscard]] static ShardSpec split(std::string name, Shape global, Axis axis, int dim, int parts, int index,
                                       int blocks = 1) {
    ShardSpec s{std::move(name), global, axis, dim, parts, index, blocks};
    if (dim < 0 || dim >= global.rank())
      throw Error(fmt::format("ShardSpec '{}': split dimension {} is outside shape {}", s.name, dim, global));
    if (parts < 1 || index < 0 || index >= parts || blocks < 1)
      throw Error(fmt::format("ShardSpec '{}': shard {} of {} parts ({} blocks) is not valid", s.name, index, parts,
                              blocks));
    if (global[dim] % (std::int64_t{blocks} * parts) != 0)
      throw Error(fmt::format("ShardSpec '{}': dimension {} of {} ({} in {} block(s)) does not divide into {} parts "
                              "over {}",
                              s.name, dim, global, global[dim], blocks, parts, parallax::name(axis)));
    if (blocks > 1 && dim != 0)
      throw Error(fmt::format("ShardSpec '{}': a blocked split must be along dimension 0, not {}", s.name, dim));
    return s;
  }

  [[nodiscard]] bool sharded() const noexcept { return axis.has_value() && parts > 1; }
  //! Length of one block along `dim`, and of this shard's piece of it.
  [[nodiscard]] std::int64_t block_length() const { return global[dim] / blocks; }
  [[nodiscard]] std::int64_t piece_length() const { return block_length() / parts; }
  //! Global offset along `dim` of this shard's piece of block `b`.
  [[nodiscard]] std::int64_t offset(int b = 0) const { return b * block_length() + index * piece_length(); }
  //! The shape of this shard.
  [[nodiscard]] Shape local_shape() const { return global.rank() == 0 ? global : global.with(dim, global[dim] / parts); }
  //! The spec of shard `i` of the same parameter.
  [[nodiscard]] ShardSpec shard(int i) const {
    ShardSpec s = *this;
    s.index = i;
    return s;
  }
};

//! Fills `local` (shaped `spec.local_shape()`) with `init` as the slice `spec` of the global tensor, so the
//! shards of every rank together equal the unsharded initialisation.
template <class Init, FloatElement T, MemorySpace Space>
void init_shard(View<T, Space> local, const ShardSpec& spec, const Init& init) {
  if (local.shape() != spec.local_shape())
    throw Error(fmt::format("init_shard '{}': local tensor {} is not the shard shape {}", spec.name, local.shape(),
                            spec.local_shape()));
  if (spec.global.rank() == 0 || spec.parts == 1) {
    init::fill(local, init, init::Slice{spec.global, 0, 0});
    return;
  }
  const std::int64_t piece = spec.piece_length();
  for (int b = 0; b < spec.blocks; ++b) {
    auto part = spec.blocks == 1 ? local : local.rows(b * piece, (b + 1) * piece);
    init::fill(part, init, init::Slice{spec.global, spec.dim, spec.offset(b)});
  }
}

namespace detail {

//! Calls f(local_index, global_index, count) for each contiguous run of shard `spec.index` inside the global
//! tensor, in the shard's element order.
template <class F>
void for_each_run(const ShardSpec& spec, F&& f) {
  if (spec.global.rank() == 0 || spec.parts == 1) {
    f(std::int64_t{0}, std::int64_t{0}, spec.global.numel());
    return;
  }
  // The shard is `outer` x `blocks` runs of piece x inner elements; run (o, b) sits at offset(b) along dim.
  const std::int64_t inner = spec.global.stride(spec.dim);
  const std::int64_t outer = spec.global.numel() / (inner * spec.global[spec.dim]);
  const std::int64_t run = spec.piece_length() * inner;
  std::int64_t n = 0;
  for (std::int64_t o = 0; o < outer; ++o)
    for (int b = 0; b < spec.blocks; ++b, n += run) f(n, (o * spec.global[spec.dim] + spec.offset(b)) * inner, run);
}

}  // namespace detail

//! Assembles the global tensor (row-major, host) from every shard's elements, `shards[i]` being shard i.
template <class T>
[[nodiscard]] std::vector<T> assemble(const ShardSpec& spec, std::span<const std::vector<T>> shards) {
  if (static_cast<int>(shards.size()) != spec.parts)
    throw Error(fmt::format("assemble '{}': {} shards given, the spec has {} parts", spec.name, shards.size(), spec.parts));
  const Shape l = spec.local_shape();
  for (const auto& s : shards)
    if (static_cast<std::int64_t>(s.size()) != l.numel())
      throw Error(fmt::format("assemble '{}': a shard has {} elements, expected {} ({})", spec.name, s.size(), l.numel(), l));
  std::vector<T> out(static_cast<std::size_t>(spec.global.numel()));
  for (int i = 0; i < spec.parts; ++i) {
    const auto& src = shards[static_cast<std::size_t>(i)];
    detail::for_each_run(spec.shard(i), [&](std::int64_t local, std::int64_t global, std::int64_t n) {
      std::copy_n(src.begin() + local, n, out.begin() + global);
    });
  }
  return out;
}

//! This shard's elements (row-major, host) of the global tensor `global`: the inverse of `assemble`, used to
//! load an unsharded checkpoint onto any mesh.
template <class T>
[[nodiscard]] std::vector<T> extract(const ShardSpec& spec, std::span<const T> global) {
  if (static_cast<std::int64_t>(global.size()) != spec.global.numel())
    throw Error(fmt::format("extract '{}': {} elements given for global shape {} ({} elements)", spec.name,
                            global.size(), spec.global, spec.global.numel()));
  std::vector<T> out(static_cast<std::size_t>(spec.local_shape().numel()));
  detail::for_each_run(spec, [&](std::int64_t local, std::int64_t g, std::int64_t n) {
    std::copy_n(global.begin() + g, n, out.begin() + local);
  });
  return out;
}

}  // namespace parallax::nn

// parallax/checkpoint/checkpoint.hpp — save and load a model's parameters as one safetensors file of full
// (unsharded) tensors, from and onto any mesh.
//
// The file holds each parameter's global tensor, whatever mesh wrote it, so a model saved on DP x PP x TP = 2 x 2 x 2
// loads on one rank or on TP = 4, and a Hugging Face GPT-2 file loads through a `TensorMap` of its names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../core/allocator.hpp"
#include "../core/dtype.hpp"
#include "../core/memory_stats.hpp"
#include "../core/tensor.hpp"
#include "../mesh/device_mesh.hpp"
#include "../nn/parameter.hpp"
#include "../tp/gather.hpp"
#include "safetensors.hpp"

namespace parallax::checkpoint {

//! Where a parameter's global tensor lives in a checkpoint file.
struct Mapping {
  std::string tensor;      // the file tensor's name
  bool transpose = false;  // the file holds the 2-D tensor transposed (Hugging Face GPT-2's Conv1D weights: [in, out])
  bool tied = false;       // shares a tensor another parameter saves (tied LM head): `save` skips it, `load` reads it
};

//! How parameter names map to file tensors. `rule(name)` gives a parameter's `Mapping`, or nothing for a parameter
//! that is not in the file (neither saved nor loaded); without a rule every parameter is the tensor of its own
//! name. `load` also accepts a file whose tensor names carry `optional_prefix` (Hugging Face's `transformer.`):
//! it reads `<optional_prefix><tensor>` when the file has no `<tensor>`. `save` writes the names the rule gives.
//! @code
//! checkpoint::TensorMap hf{
//!     .rule = [](std::string_view p) -> std::optional<checkpoint::Mapping> {
//!       if (p == "lm_head.weight") return checkpoint::Mapping{.tensor = "wte.weight", .tied = true};
//!       if (p == "h.0.attn.qkv.weight") return checkpoint::Mapping{"h.0.attn.c_attn.weight", /*transpose=*/true};
//!       return checkpoint::Mapping{std::string(p)};
//!     },
//!     .optional_prefix = "transformer."};
//! @endcode
struct TensorMap {
  std::function<std::optional<Mapping>(std::string_view)> rule{};
  std::string optional_prefix{};

  //! The mapping of parameter `name` (itself without a rule).
  [[nodiscard]] std::optional<Mapping> operator()(std::string_view name) const {
    return rule ? rule(name) : std::optional<Mapping>(Mapping{std::string(name)});
  }
};

//! Options of `save`.
struct SaveOptions {
  DType dtype = DType::f32;                        // element type of the file's tensors: f32, bf16 or f16
  std::map<std::string, std::string> metadata{};  // `__metadata__`; "format" defaults to "pt", as Hugging Face expects
};

namespace detail {

//! Moves host data through a communicator whose transport works on memory space `Space`, via short-lived
//! buffers outside any rank's accounting.
template <MemorySpace Space>
class Staging {
 public:
  explicit Staging(int rank) : allocator_(stats_, rank) {}
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  template <Element E>
  void send(Communicator& c, std::span<const E> data, int peer) {
    if (!data.empty()) c.send(upload(data).cview(), peer);
  }
  template <Element E>
  [[nodiscard]] std::vector<E> recv(Communicator& c, std::int64_t n, int peer) {
    Tensor<E, Space> t(allocator_, Shape{n}, MemoryCategory::workspace);
    if (n > 0) c.recv(t.view(), peer);
    return to_vector(t.cview());
  }
  //! `root`'s `data` on every rank (`data` has the same size everywhere).
  template <Element E>
  void broadcast(Communicator& c, std::vector<E>& data, int root) {
    if (data.empty()) return;
    auto t = upload(std::span<const E>(data));
    c.broadcast(t.view(), root);
    data = to_vector(t.cview());
  }
  template <Element E>
  [[nodiscard]] E all_reduce(Communicator& c, E value, ReduceOp op) {
    std::vector<E> v{value};
    auto t = upload(std::span<const E>(v));
    c.all_reduce(t.view(), op);
    return to_vector(t.cview())[0];
  }

 private:
  template <Element E>
  [[nodiscard]] Tensor<E, Space> upload(std::span<const E> data) {
    Tensor<E, Space> t(allocator_, Shape{static_cast<std::int64_t>(data.size())}, MemoryCategory::workspace);
    copy_from(t.view(), data);
    return t;
  }

  MemoryStats stats_;
  Allocator<Space> allocator_;
};

//! `text` packed into 64-bit words (communicators move numbers, not bytes), and back.
[[nodiscard]] inline std::vector<std::int64_t> pack(std::string_view text) {
  std::vector<std::int64_t> words((text.size() + 7) / 8, 0);
  if (!text.empty()) std::memcpy(words.data(), text.data(), text.size());
  return words;
}
[[nodiscard]] inline std::string unpack(const std::vector<std::int64_t>& words, std::size_t size) {
  std::string text(size, '\0');
  if (size > 0) std::memcpy(text.data(), words.data(), size);
  return text;
}

//! The text of exception `e` (never empty: an empty text would read as success).
[[nodiscard]] inline std::string message_of(const std::exception_ptr& e) {
  std::string text;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    text = x.what();
  } catch (...) {
  }
  return text.empty() ? std::string("checkpoint: unknown exception") : text;
}

//! Collective over `world`: returns when no rank has an `error`; otherwise every rank throws the error of the
//! lowest failing rank, with the same message everywhere, so a failure on some ranks cannot leave others hanging.
template <MemorySpace Space>
void agree(Communicator& world, Staging<Space>& staging, const std::string& error) {
  const auto size = static_cast<std::int64_t>(world.size());
  const auto first = staging.all_reduce(world, error.empty() ? size : std::int64_t{world.rank()}, ReduceOp::min);
  if (first == size) return;
  const int root = static_cast<int>(first);
  std::vector<std::int64_t> length{static_cast<std::int64_t>(error.size())};
  staging.broadcast(world, length, root);
  const auto size_of_text = static_cast<std::size_t>(length[0]);
  auto text = root == world.rank() ? pack(error) : std::vector<std::int64_t>((size_of_text + 7) / 8);
  staging.broadcast(world, text, root);
  throw Error(unpack(text, size_of_text), root);
}

//! The row-major matrix `m` [rows, cols] transposed to [cols, rows].
template <class E>
[[nodiscard]] std::vector<E> transpose(const std::vector<E>& m, std::int64_t rows, std::int64_t cols) {
  std::vector<E> out(m.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      out[static_cast<std::size_t>(c * rows + r)] = m[static_cast<std::size_t>(r * cols + c)];
  return out;
}

//! A parameter's global shape as the file holds it.
[[nodiscard]] inline Shape file_shape(const nn::ShardSpec& spec, const Mapping& m) {
  if (!m.transpose) return spec.global;
  if (spec.global.rank() != 2)
    throw Error(fmt::format("checkpoint: parameter '{}' {} is mapped transposed, but only 2-D tensors transpose",
                            spec.name, spec.global));
  return Shape{spec.global[1], spec.global[0]};
}

//! One tensor on its way to the file: what `save` moves from each pipeline stage to the writer.
struct Piece {
  std::string tensor, parameter;
  Shape shape;  // as the file holds it
  bool tied = false;
  std::vector<float> data;  // empty when tied
};

//! The pieces' names and shapes as JSON, and their data one after the other.
[[nodiscard]] inline std::string manifest(const std::vector<Piece>& pieces) {
  nlohmann::json j = nlohmann::json::array();
  for (const Piece& p : pieces) {
    std::vector<std::int64_t> dims;
    for (int i = 0; i < p.shape.rank(); ++i) dims.push_back(p.shape[i]);
    j.push_back({{"tensor", p.tensor}, {"parameter", p.parameter}, {"shape", dims}, {"tied", p.tied}});
  }
  return j.dump();
}
[[nodiscard]] inline std::vector<Piece> from_manifest(const std::string& text, const std::vector<float>& data) {
  std::vector<Piece> pieces;
  std::size_t at = 0;
  for (const auto& e : nlohmann::json::parse(text)) {
    Piece p{e["tensor"].get<std::string>(), e["parameter"].get<std::string>(),
            make_shape(e["shape"].get<std::vector<std::int64_t>>()), e["tied"].get<bool>(), {}};
    if (!p.tied) {
      const auto n = static_cast<std::size_t>(p.shape.numel());
      p.data.assign(data.begin() + static_cast<std::ptrdiff_t>(at), data.begin() + static_cast<std::ptrdiff_t>(at + n));
      at += n;
    }
    pieces.push_back(std::move(p));
  }
  return pieces;
}

//! Writes `pieces` (every stage's) to `path` as `dtype`, atomically: a temporary file beside it, then a rename.
inline void write_pieces(const std::vector<Piece>& pieces, const std::filesystem::path& path, const SaveOptions& o) {
  std::map<std::string, const Piece*> saved;
  for (const Piece& p : pieces) {
    if (p.tied) continue;
    const auto [it, fresh] = saved.emplace(p.tensor, &p);
    if (!fresh)
      throw Error(fmt::format("checkpoint::save: parameters '{}' and '{}' both map to tensor '{}' (mark one tied)",
                              it->second->parameter, p.parameter, p.tensor));
  }
  SafetensorsWriter w;
  for (const Piece& p : pieces) {
    if (p.tied) {
      const auto it = saved.find(p.tensor);
      if (it == saved.end())
        throw Error(fmt::format("checkpoint::save: parameter '{}' is tied to tensor '{}', which no parameter saves",
                                p.parameter, p.tensor));
      if (it->second->shape != p.shape)
        throw Error(fmt::format("checkpoint::save: parameter '{}' {} is tied to tensor '{}', saved by '{}' as {}",
                                p.parameter, p.shape, p.tensor, it->second->parameter, it->second->shape));
      continue;
    }
    dispatch(o.dtype, [&]<class E>(std::type_identity<E>) {
      if constexpr (FloatElement<E>) {
        std::vector<E> v;
        v.reserve(p.data.size());
        for (float x : p.data) v.push_back(E(x));
        w.add(p.tensor, v, p.shape);
      }
    });
  }
  w.metadata("format", "pt");
  for (const auto& [key, value] : o.metadata) w.metadata(key, value);
  auto temporary = path;
  temporary += ".tmp";
  try {
    w.write(temporary);
    std::filesystem::rename(temporary, path);
  } catch (const std::exception& e) {
    std::error_code ec;
    std::filesystem::remove(temporary, ec);
    throw Error(fmt::format("checkpoint::save: cannot write '{}': {}", path.string(), e.what()));
  }
}

}  // namespace detail

//! Saves the parameters of a model spread over `mesh` as one safetensors file at `path` holding each mapped
//! parameter's full tensor. Collective: every rank of the mesh calls it with its own parameters (the same
//! names in the same order on the ranks of one pipeline stage).
//!
//! Each parameter is read as a module reads it (`acquire_value`, so under a ZeRO-3 optimizer it is gathered over
//! DP first) and gathered over its sharded axis (`tp::gather_parameter`); the ranks at DP = CP = TP = 0
//! (one per pipeline stage, whose replicas hold the same values) send their stage's tensors to world rank 0,
//! which writes them converted to `o.dtype` (transposed where the map says so; tied parameters are not written,
//! their tensor must be saved by another parameter of the same shape) into a temporary file, then renames it
//! to `path`. The file exists when `save` returns on any rank. Any error (a bad mapping, two parameters
//! mapped to one tensor, an unwritable path) is thrown by every rank alike.
//! @code
//! checkpoint::save(mesh, model.parameters(), "gpt.safetensors", gpt2_names, {.dtype = DType::bf16});
//! @endcode
template <class Mesh, FloatElement T, MemorySpace Space>
void save(Mesh& mesh, const nn::ParameterList<T, Space>& params, const std::filesystem::path& path,
          const TensorMap& map = {}, const SaveOptions& o = {}) {
  detail::Staging<Space> staging(mesh.rank());
  Communicator& world = mesh.world();
  // Plan: each parameter's mapping and file shape; agreed on before any data moves.
  std::vector<std::pair<nn::Parameter<T, Space>*, Mapping>> plan;
  std::string error;
  try {
    if (o.dtype != DType::f32 && o.dtype != DType::bf16 && o.dtype != DType::f16)
      throw Error(fmt::format("checkpoint::save: file dtype {} is not f32, bf16 or f16", name(o.dtype)));
    for (auto* p : params) {
      auto m = map(p->name());
      if (!m) continue;
      if (m->tensor.empty())
        throw Error(fmt::format("checkpoint::save: parameter '{}' maps to an empty name", p->name()));
      (void)detail::file_shape(p->spec(), *m);
      if (p->spec().sharded()) {
        Communicator& group = mesh.group(*p->spec().axis);
        if (group.size() != p->spec().parts || group.rank() != p->spec().index)
          throw Error(fmt::format("checkpoint::save: parameter '{}' is shard {} of {} on the {} axis, but this rank is "
                                  "{} of {} there",
                                  p->name(), p->spec().index, p->spec().parts, name(*p->spec().axis), group.rank(),
                                  group.size()));
      }
      plan.emplace_back(p, std::move(*m));
    }
  } catch (...) {
    error = detail::message_of(std::current_exception());
  }
  detail::agree(world, staging, error);

  // Gather (collective over each parameter's group); the stage's writer keeps the full tensors.
  const Coords c = mesh.coords();
  const bool contributes = c.dp == 0 && c.cp == 0 && c.tp == 0;
  std::vector<detail::Piece> pieces;
  for (const auto& [p, m] : plan) {
    detail::Piece piece{m.tensor, p->name(), detail::file_shape(p->spec(), m), m.tied, {}};
    if (!m.tied) {
      // Read as a module reads it, so a ZeRO-3 optimizer gathers it (collective over DP, in the same order).
      const auto value = View<const T, Space>(p->acquire_value());
      const std::vector<T> full = tp::detail::gather_shards(mesh, p->spec(), value);
      p->release_value();
      if (!contributes) continue;
      piece.data.reserve(full.size());
      for (const T& x : full) piece.data.push_back(static_cast<float>(x));
      if (m.transpose) piece.data = detail::transpose(piece.data, p->spec().global[0], p->spec().global[1]);
    }
    if (contributes) pieces.push_back(std::move(piece));
  }

  // Every stage's pieces to world rank 0, which writes the file.
  if (contributes && mesh.rank() != 0) {
    const std::string text = detail::manifest(pieces);
    std::vector<float> data;
    for (const auto& piece : pieces) data.insert(data.end(), piece.data.begin(), piece.data.end());
    const std::vector<std::int64_t> sizes{static_cast<std::int64_t>(text.size()),
                                          static_cast<std::int64_t>(data.size())};
    staging.send(world, std::span<const std::int64_t>(sizes), 0);
    staging.send(world, std::span<const std::int64_t>(detail::pack(text)), 0);
    staging.send(world, std::span<const float>(data), 0);
  }
  error.clear();
  if (mesh.rank() == 0) {
    for (int stage = 1; stage < mesh.pp_size(); ++stage) {
      const int from = mesh.shape().rank_of(Coords{.dp = 0, .pp = stage, .tp = 0, .cp = 0});
      const auto sizes = staging.template recv<std::int64_t>(world, 2, from);
      const auto words = staging.template recv<std::int64_t>(world, (sizes[0] + 7) / 8, from);
      const auto data = staging.template recv<float>(world, sizes[1], from);
      for (auto& piece : detail::from_manifest(detail::unpack(words, static_cast<std::size_t>(sizes[0])), data))
        pieces.push_back(std::move(piece));
    }
    try {
      detail::write_pieces(pieces, path, o);
    } catch (...) {
      error = detail::message_of(std::current_exception());
    }
  }
  detail::agree(world, staging, error);
}

//! Loads the parameters of a model spread over `mesh` from the safetensors file at `path`: each rank reads the
//! full tensor of each of its mapped parameters (converted to T, transposed where the map says so), checks it
//! against the parameter's global shape and keeps its own shard (`nn::extract`). Tensors of the file that no
//! parameter maps to (Hugging Face's `attn.bias` buffers, say) are ignored; unmapped parameters keep their values.
//! Load before building an optimizer over the parameters: it takes its master weights (and, under ZeRO, the
//! parameters' storage and their gathers in flight) from the values as they are then.
//!
//! Collective over the world: nothing is changed unless every rank succeeded, and a missing or malformed
//! file, a missing tensor (some of the file's names are listed) or a shape mismatch throws on every rank
//! the same error, naming the tensor, the parameter, both shapes and the file.
//! @code
//! checkpoint::load(mesh, model.parameters(), "gpt2.safetensors", gpt2_names);   // any DP x PP x TP
//! @endcode
template <class Mesh, FloatElement T, MemorySpace Space>
void load(Mesh& mesh, const nn::ParameterList<T, Space>& params, const std::filesystem::path& path,
          const TensorMap& map = {}) {
  std::vector<std::optional<std::vector<T>>> shards(params.size());
  std::string error;
  try {
    const auto file = [&] {
      try {
        return SafetensorsFile::open(path);
      } catch (const Error& e) {
        throw Error(fmt::format("checkpoint::load: {}", e.what()));
      }
    }();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const nn::Parameter<T, Space>& p = *params[i];
      const auto m = map(p.name());
      if (!m) continue;
      std::string tensor = m->tensor;
      if (!file.contains(tensor) && !map.optional_prefix.empty()) tensor = map.optional_prefix + m->tensor;
      if (!file.contains(tensor)) {
        std::string listing;  // SafetensorsFile's message, listing some of the names the file has
        try {
          (void)file.info(m->tensor);
        } catch (const Error& e) {
          listing = e.what();
        }
        throw Error(fmt::format("checkpoint::load: parameter '{}' needs tensor '{}'{}: {}", p.name(), m->tensor,
                                tensor == m->tensor ? std::string() : fmt::format(" or '{}'", tensor), listing));
      }
      const Shape want = detail::file_shape(p.spec(), *m);
      if (const Shape& has = file.info(tensor).shape; has != want)
        throw Error(fmt::format("checkpoint::load: tensor '{}' in '{}' is {}, but parameter '{}' needs {}{}", tensor,
                                path.string(), has, p.name(), want,
                                m->transpose ? fmt::format(" (its {} transposed)", p.spec().global) : std::string()));
      auto full = file.template read<T>(tensor);
      if (m->transpose) full = detail::transpose(full, want[0], want[1]);
      shards[i] = nn::extract<T>(p.spec(), full);
    }
  } catch (...) {
    error = detail::message_of(std::current_exception());
  }
  detail::Staging<Space> staging(mesh.rank());
  detail::agree(mesh.world(), staging, error);
  for (std::size_t i = 0; i < params.size(); ++i)
    if (shards[i]) copy_from(params[i]->value(), std::span<const T>(*shards[i]));
}

}  // namespace parallax::checkpoint

// parallax/tp/vocab_parallel_embedding.hpp — token + position embedding, the token table split over TP by vocabulary.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "../core/extent.hpp"
#include "../core/init.hpp"
#include "../mesh/device_mesh.hpp"
#include "../nn/module.hpp"
#include "divisible.hpp"
#include "sequence_parallel.hpp"

namespace parallax::tp {

//! Options of a `VocabParallelEmbedding`.
struct VocabParallelEmbeddingOptions {
  bool sequence_parallel = false;  // output this rank's sequence shard [T/tp, B, D] instead of the whole [T, B, D]
  float init_std = 0.02f;          // both tables ~ Normal(0, init_std)
  std::uint64_t seed = 0;          // mixed with each parameter's name
  std::string name = "embedding";
};

//! The input embedding of a language model, y[t, b, :] = token[ids[t, b], :] + position[t, :], with the token
//! table [V, D] split over the mesh's TP group by vocabulary rows (rank r holds rows [r V/tp, (r+1) V/tp)) and the
//! position table [max_seq, D] replicated.
//!
//! forward: each rank looks up the ids that fall in its rows (the others give 0), the partial results are summed
//! over TP with an all-reduce (under sequence parallelism a reduce-scatter, leaving this rank's sequence rows
//! [r T/tp, (r+1) T/tp)), then the positions of those rows are added. Ids are global and have no gradient:
//! `backward_input` only keeps dy. `backward_weight` accumulates the token-shard gradient from the full dy
//! (all-gathered first under sequence parallelism) and the position gradient from the same full dy, so the
//! position gradient needs no collective of its own and is identical on every TP rank.
//!
//! Initialisation draws every shard as the matching slice of the single-rank tables (`init_shard`), so any TP
//! degree starts from the same model, and TP = 1 is a plain token + position embedding. `token_weight()` is the
//! parameter a weight-tied LM head shares.
//! @tparam Mesh a `DeviceMesh` built from a `Rank<B>`.  @tparam B the backend.  @tparam T the storage type.
//! @code
//! tp::VocabParallelEmbedding<Mesh, host::Backend, float> wte(mesh, 50304, 1024, 768, {.name = "wte"});
//! decltype(wte)::Ctx ctx;
//! auto x = wte.forward(ctx, ids);   // ids int32 [T, B] -> x [T, B, 768]
//! wte.backward_input(ctx, dx);      wte.backward_weight(ctx);
//! @endcode
template <class Mesh, Backend B, FloatElement T>
class VocabParallelEmbedding {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;
  using Options = VocabParallelEmbeddingOptions;

  struct Ctx : nn::CtxBase {
    Tensor<std::int32_t, Memory> ids;  // [T, B], from forward to backward_weight
    nn::TensorOf<B, T> dy;             // the output's gradient, from backward_input to backward_weight
  };

  //! An embedding of `vocab` tokens (`std::int64_t` or `fixed<N>`) and `max_seq` positions into `dim` features,
  //! the token table split over the TP group of `mesh` (which must outlive the module). Throws unless TP divides
  //! `vocab` (fails to compile for a `fixed<N>` vocabulary on a mesh with a static TP extent).
  template <SizeArg V>
  VocabParallelEmbedding(Mesh& mesh, V vocab, std::int64_t max_seq, std::int64_t dim, const Options& o = {})
      : mesh_(&mesh),
        rank_(&mesh_rank<B>(mesh)),
        name_(o.name),
        sequence_parallel_(o.sequence_parallel),
        token_(rank_->allocator(), token_spec(mesh, static_cast<std::int64_t>(vocab), max_seq, dim, o.name)),
        position_(rank_->allocator(), nn::ShardSpec::replicated(nn::join_name(o.name, "position.weight"),
                                                                 Shape{max_seq, dim})) {
    static_assert(statically_divisible<Mesh, V>,
                  "VocabParallelEmbedding: a fixed<N> vocabulary is not divisible by the mesh's static TP extent; "
                  "pad N to a multiple of TP");
    for (auto* p : parameters())
      nn::init_shard(p->value(), p->spec(), init::normal(o.init_std, nn::seed_for(o.seed, p->name())));
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  //! The whole vocabulary, this rank's rows of it [vocab_begin, vocab_begin + local_vocab), the longest
  //! sequence and the feature count.
  [[nodiscard]] std::int64_t vocab() const noexcept { return token_.spec().global[0]; }
  [[nodiscard]] std::int64_t local_vocab() const noexcept { return token_.shape()[0]; }
  [[nodiscard]] std::int64_t vocab_begin() const noexcept { return token_.spec().offset(); }
  [[nodiscard]] std::int64_t max_seq() const noexcept { return position_.shape()[0]; }
  [[nodiscard]] std::int64_t dim() const noexcept { return position_.shape()[1]; }
  [[nodiscard]] bool sequence_parallel() const noexcept { return sequence_parallel_; }
  //! This rank's shard [V/tp, D] of the token table (what a weight-tied LM head shares), and the position table.
  [[nodiscard]] nn::Parameter<T, Memory>& token_weight() noexcept { return token_; }
  [[nodiscard]] nn::Parameter<T, Memory>& position_weight() noexcept { return position_; }

  [[nodiscard]] nn::ParameterList<T, Memory> parameters() { return {&token_, &position_}; }

  //! ids int32 [T, B] (global token ids, the same on every TP rank) -> [T, B, D], or [T/tp, B, D] under
  //! sequence parallelism. Throws for an id outside [0, vocab) on every rank alike.
  [[nodiscard]] nn::TensorOf<B, T> forward(Ctx& ctx, nn::ViewOf<B, const std::int32_t> ids) {
    nn::detail::advance(ctx, nn::Pass::none, nn::Pass::forward, label(), "forward", rank_->id());
    const Shape ys = output_shape(ids.shape());
    auto& c = rank_->context();
    auto partial = nn::activation<B, T>(*rank_, Shape{ids.shape()[0], ids.shape()[1], dim()});
    B::embedding_forward(c, ids.flatten(), nn::ViewOf<B, const T>(token_.acquire_value()), nn::as_matrix(partial.view()),
                         vocab_begin(), vocab());
    token_.release_value();
    nn::TensorOf<B, T> y;
    if (sequence_parallel_) {
      y = reduce_scatter_sequence<B>(*mesh_, partial.cview());
      partial.reset();
    } else {
      mesh_->tp().all_reduce(partial.view());
      y = std::move(partial);
    }
    const std::int64_t first = sequence_parallel_ ? mesh_->tp_rank() * ys[0] : 0;
    auto positions = position_ids(first, ys[0], ys[1]);
    auto pos = nn::activation<B, T>(*rank_, ys);
    B::embedding_forward(c, positions.cview(), nn::ViewOf<B, const T>(position_.acquire_value()),
                         nn::as_matrix(pos.view()));
    position_.release_value();
    B::axpby(c, 1.f, pos.cview(), 1.f, y.view());
    ctx.ids = nn::save<B, std::int32_t>(*rank_, ids);
    return y;
  }

  //! Keeps dy (shaped like the forward's output) for `backward_weight`; the ids have no gradient.
  void backward_input(Ctx& ctx, nn::ViewOf<B, const T> dy) {
    nn::detail::advance(ctx, nn::Pass::forward, nn::Pass::backward_input, label(), "backward_input", rank_->id());
    if (const Shape want = output_shape(ctx.ids.shape()); dy.shape() != want)
      throw Error(fmt::format("{}: backward_input got dy {}, the forward's output was {}", label(), dy.shape(), want),
                  rank_->id());
    ctx.dy = nn::save<B, T>(*rank_, dy);
  }

  //! Accumulates the token-shard and position gradients from the full dy, then frees the context.
  void backward_weight(Ctx& ctx) {
    nn::detail::advance(ctx, nn::Pass::backward_input, nn::Pass::none, label(), "backward_weight", rank_->id());
    auto& c = rank_->context();
    const std::int64_t seq = ctx.ids.shape()[0], batch = ctx.ids.shape()[1];
    if (sequence_parallel_) ctx.dy = gather_sequence<B>(*mesh_, ctx.dy.cview());
    const auto dy = nn::as_matrix(ctx.dy.cview());
    B::embedding_backward(c, ctx.ids.cview().flatten(), dy, token_.acquire_grad(), vocab_begin());
    token_.release_grad();
    ctx.ids.reset();
    auto positions = position_ids(0, seq, batch);
    B::embedding_backward(c, positions.cview(), dy, position_.acquire_grad());
    position_.release_grad();
    ctx.dy.reset();
  }

 private:
  [[nodiscard]] static std::string label_of(std::string_view name) {
    return fmt::format("VocabParallelEmbedding '{}'", name);
  }
  [[nodiscard]] std::string label() const { return label_of(name_); }

  // The token table's spec, after checking the sizes (before any storage is allocated).
  [[nodiscard]] static nn::ShardSpec token_spec(const Mesh& mesh, std::int64_t vocab, std::int64_t max_seq,
                                                std::int64_t dim, std::string_view name) {
    constexpr std::int64_t max_vocab = std::numeric_limits<std::int32_t>::max();  // ids are int32
    if (vocab <= 0 || max_seq <= 0 || dim <= 0 || vocab > max_vocab)
      throw Error(fmt::format("{}: vocabulary {}, max_seq {} and dim {} must be positive (vocabulary at most {})",
                              label_of(name), vocab, max_seq, dim, max_vocab),
                  mesh.rank());
    (void)check_divisible(mesh, label_of(name), "vocabulary entries", vocab);
    return nn::ShardSpec::split(nn::join_name(name, "token.weight"), Shape{vocab, dim}, Axis::tp, 0, mesh.tp_size(),
                                mesh.tp_rank());
  }

  // The output's shape for ids of shape `ids`, after checking them.
  [[nodiscard]] Shape output_shape(const Shape& ids) const {
    if (ids.rank() != 2) throw Error(fmt::format("{}: ids {} are not [T, B]", label(), ids), rank_->id());
    if (ids[0] > max_seq())
      throw Error(fmt::format("{}: sequence length {} exceeds max_seq {}", label(), ids[0], max_seq()), rank_->id());
    if (!sequence_parallel_) return Shape{ids[0], ids[1], dim()};
    return Shape{check_divisible(*mesh_, label(), "sequence positions", ids[0]), ids[1], dim()};
  }

  // Position ids [rows * batch] of the sequence rows [first, first + rows), batch-minor like the activations.
  [[nodiscard]] Tensor<std::int32_t, Memory> position_ids(std::int64_t first, std::int64_t rows,
                                                          std::int64_t batch) const {
    auto ids = nn::activation<B, std::int32_t>(*rank_, Shape{rows * batch});
    B::position_ids(rank_->context(), ids.view(), first, batch);
    return ids;
  }

  Mesh* mesh_;
  Rank<B>* rank_;
  std::string name_;
  bool sequence_parallel_;
  nn::Parameter<T, Memory> token_, position_;
};

}  // namespace parallax::tp

namespace parallax {
using tp::VocabParallelEmbedding;  // the name users write: parallax::VocabParallelEmbedding
}  // namespace parallax

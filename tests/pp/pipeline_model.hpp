// tests/pp/pipeline_model.hpp — the pipeline tests' model and data: a tiny GPT cut into virtual stages (token
// embedding first, tensor-parallel transformer blocks, final LayerNorm + head + cross-entropy last), its
// single-rank reference run, and a probe stage whose saved activation bytes per microbatch are known.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/nn/cross_entropy.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/pp/pipeline_stage.hpp>
#include <parallax/pp/stage_module.hpp>
#include <parallax/tp/gather.hpp>
#include <parallax/tp/transformer_block.hpp>

namespace parallax::test::pipeline {

using B = host::Backend;
using Mem = host::Memory;
template <class T>
using CView = View<const T, Mem>;
using Microbatch = pp::Microbatch<Mem>;

//! The model: `layers` transformer blocks of `dim` features and `heads` heads over sequences of `seq` tokens of a
//! `vocab`-token vocabulary, `batch` sequences per microbatch.
struct Config {
  std::int64_t vocab = 13, seq = 4, batch = 2, dim = 16, heads = 2;
  int layers = 8;
  bool checkpoint = false;  // activation checkpointing of every block
  std::uint64_t seed = 5;
};

//! Virtual stage `stage` of a GPT cut into p x v virtual stages: the embedding `wte` on stage 0, blocks `h.<i>` for
//! its share of the layers (`pp::layers_of`), and `ln_f`, `head` and the loss on the last stage. Parameters are
//! named and seeded as in the uncut model, so any cut holds slices of the same weights.
template <class Mesh, class T>
class GptStage {
 public:
  using backend = B;
  using value_type = T;
  using Memory = Mem;
  using Block = tp::TransformerBlock<Mesh, B, T>;

  struct Ctx : nn::CtxBase {
    typename nn::Embedding<B, T>::Ctx embedding;
    std::vector<typename Block::Ctx> blocks;
    typename nn::LayerNorm<B, T>::Ctx ln;
    typename nn::Linear<B, T>::Ctx head;
    typename nn::CrossEntropyLoss<B, T>::Ctx loss;
  };

  GptStage(Mesh& mesh, const Config& c, int stage, int stages, int chunks = 1)
      : rank_(&mesh_rank<B>(mesh)), name_(fmt::format("stage {}", stage)), dim_(c.dim) {
    const pp::LayerRange layers = pp::layers_of(c.layers, stage, stages, chunks);
    if (stage == 0) embedding_.emplace(*rank_, c.vocab, c.seq, c.dim, nn::EmbeddingOptions{.seed = c.seed, .name = "wte"});
    for (int i = layers.begin; i < layers.end; ++i)
      blocks_.emplace_back(mesh, c.dim, c.heads,
                           tp::TransformerBlockOptions{.checkpoint = c.checkpoint, .seed = c.seed,
                                                       .name = fmt::format("h.{}", i)});
    if (stage + 1 == stages * chunks) {
      ln_.emplace(*rank_, c.dim, nn::LayerNormOptions{.name = "ln_f"});
      head_.emplace(*rank_, c.dim, c.vocab, nn::LinearOptions{.seed = c.seed, .name = "head"});
      loss_.emplace(*rank_);
    }
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  [[nodiscard]] Shape input_shape(const Shape& tokens) const { return Shape{tokens[0], tokens[1], dim_}; }

  [[nodiscard]] nn::ParameterList<T, Mem> parameters() {
    nn::ParameterList<T, Mem> p;
    if (embedding_) nn::append(p, embedding_->parameters());
    for (auto& b : blocks_) nn::append(p, b.parameters());
    if (ln_) nn::append(p, ln_->parameters());
    if (head_) nn::append(p, head_->parameters());
    return p;
  }

  [[nodiscard]] pp::StageOutput<T, Mem> forward(Ctx& ctx, const pp::StageInput<T, Mem>& in) {
    nn::detail::advance(ctx, nn::Pass::none, nn::Pass::forward, name_, "forward", rank_->id());
    Tensor<T, Mem> x;
    CView<T> cur = in.activation;
    if (embedding_) {
      x = embedding_->forward(ctx.embedding, in.tokens);
      cur = x.cview();
    }
    ctx.blocks.resize(blocks_.size());
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      x = blocks_[i].forward(ctx.blocks[i], cur);
      cur = x.cview();
    }
    if (!loss_) return {std::move(x), {}};
    auto h = ln_->forward(ctx.ln, cur);
    x.reset();
    auto logits = head_->forward(ctx.head, h.cview());
    return {{}, loss_->forward(ctx.loss, logits.cview(), in.targets)};
  }

  [[nodiscard]] Tensor<T, Mem> backward_input(Ctx& ctx, CView<T> dy, float loss_scale) {
    nn::detail::advance(ctx, nn::Pass::forward, nn::Pass::backward_input, name_, "backward_input", rank_->id());
    Tensor<T, Mem> g;
    CView<T> cur = dy;
    if (loss_) {
      auto dlogits = loss_->backward_input(ctx.loss, loss_scale);
      auto dh = head_->backward_input(ctx.head, dlogits.cview());
      dlogits.reset();
      g = ln_->backward_input(ctx.ln, dh.cview());
      cur = g.cview();
    }
    for (std::size_t i = blocks_.size(); i-- > 0;) {
      g = blocks_[i].backward_input(ctx.blocks[i], cur);
      cur = g.cview();
    }
    if (!embedding_) return g;
    embedding_->backward_input(ctx.embedding, cur);
    return {};
  }

  void backward_weight(Ctx& ctx) {
    nn::detail::advance(ctx, nn::Pass::backward_input, nn::Pass::none, name_, "backward_weight", rank_->id());
    if (loss_) {
      loss_->backward_weight(ctx.loss);
      head_->backward_weight(ctx.head);
      ln_->backward_weight(ctx.ln);
    }
    for (std::size_t i = blocks_.size(); i-- > 0;) blocks_[i].backward_weight(ctx.blocks[i]);
    if (embedding_) embedding_->backward_weight(ctx.embedding);
  }

 private:
  Rank<B>* rank_;
  std::string name_;
  std::int64_t dim_;
  std::optional<nn::Embedding<B, T>> embedding_;
  std::vector<Block> blocks_;
  std::optional<nn::LayerNorm<B, T>> ln_;
  std::optional<nn::Linear<B, T>> head_;
  std::optional<nn::CrossEntropyLoss<B, T>> loss_;
};

//! Host data of the global batch: `count` microbatches of tokens and targets [seq, batch]; every 5th target is
//! ignored (-100), so the loss's mean must count tokens.
struct Batch {
  std::vector<std::vector<std::int32_t>> tokens, targets;
  Shape shape;

  Batch(const Config& c, int count) : shape{c.seq, c.batch} {
    std::uint64_t state = 0x9e3779b97f4a7c15ull;
    auto next = [&] {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return static_cast<std::int32_t>((state >> 33) % static_cast<std::uint64_t>(c.vocab));
    };
    for (int i = 0; i < count; ++i) {
      auto& t = tokens.emplace_back();
      auto& y = targets.emplace_back();
      for (std::int64_t k = 0; k < shape.numel(); ++k) {
        t.push_back(next());
        y.push_back((i * shape.numel() + k) % 5 == 3 ? -100 : next());
      }
    }
  }
  //! Microbatches [first, first + count) as views.
  [[nodiscard]] std::vector<Microbatch> views(int first, int count) const {
    std::vector<Microbatch> out;
    for (int i = first; i < first + count; ++i)
      out.push_back({CView<std::int32_t>(tokens[static_cast<std::size_t>(i)].data(), shape),
                     CView<std::int32_t>(targets[static_cast<std::size_t>(i)].data(), shape)});
    return out;
  }
};

//! A run's loss and every parameter's full gradient (or value), by name.
struct Result {
  double loss = 0;
  std::map<std::string, std::vector<float>> tensors;
};

//! The full gradients of `params`, gathered over TP, into `out` (collective over each TP group).
template <class Mesh, class T>
void gather(Mesh& mesh, const nn::ParameterList<T, Mem>& params, Result& out) {
  for (auto* p : params) {
    const auto full = tp::gather_gradient(mesh, *p);
    out.tensors[p->name()] = std::vector<float>(full.begin(), full.end());
  }
}

//! The full value of `p` after `opt`'s step (its local tensor through the optimizer, which owns it under ZeRO),
//! all-gathered over TP when `p` is split there (collective over the DP and TP groups).
template <class Opt, class Mesh, class T>
std::vector<float> full_value(Opt& opt, Mesh& mesh, const nn::Parameter<T, Mem>& p) {
  const std::vector<T> local = opt.value(p);
  std::vector<T> full = local;
  if (p.spec().sharded()) {
    const auto n = static_cast<std::int64_t>(local.size());
    std::vector<T> all(local.size() * static_cast<std::size_t>(mesh.tp_size()));
    mesh.tp().all_gather(CView<T>(local.data(), Shape{n}), View<T, Mem>(all.data(), Shape{n * mesh.tp_size()}));
    std::vector<std::vector<T>> shards;
    for (std::int64_t r = 0; r < mesh.tp_size(); ++r) shards.emplace_back(all.begin() + r * n, all.begin() + (r + 1) * n);
    full = nn::assemble<T>(p.spec(), shards);
  }
  return std::vector<float>(full.begin(), full.end());
}

//! The uncut model's forwards over all `mbs`, then their backwards with the loss gradient scaled by 1 / (target
//! tokens of the batch), accumulated into the gradients; returns the mean loss.
template <class Model>
double accumulate(Model& model, const std::vector<Microbatch>& mbs) {
  std::vector<typename Model::Ctx> ctx(mbs.size());
  nn::LossValue total;
  for (std::size_t i = 0; i < mbs.size(); ++i) total += model.forward(ctx[i], {{}, mbs[i].tokens, mbs[i].targets}).loss;
  for (std::size_t i = 0; i < mbs.size(); ++i) {
    (void)model.backward_input(ctx[i], {}, static_cast<float>(1.0 / double(total.count)));
    model.backward_weight(ctx[i]);
  }
  return total.mean();
}

//! The single-rank reference of one step over `mbs`: the loss and every gradient.
template <class T>
Result reference(const Config& c, const std::vector<Microbatch>& mbs) {
  using Mesh1 = DeviceMesh<1, 1, 1>;
  Result r;
  launch<B>(1, [&](Rank<B>& rank) {
    Mesh1 mesh(rank);
    GptStage<Mesh1, T> model(mesh, c, 0, 1);
    r.loss = accumulate(model, mbs);
    gather(mesh, model.parameters(), r);
  });
  return r;
}

//! max |a - b| / max |b|, or infinity when the sizes differ.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

//! Checks that the ranks' results hold every tensor of `ref` (each within `tol`, wherever it appears) and the
//! same loss.
inline void check_against(const std::vector<Result>& ranks, const Result& ref, double tol) {
  std::map<std::string, int> seen;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    INFO("rank " << r);
    CHECK(std::abs(ranks[r].loss - ref.loss) <= tol * std::abs(ref.loss));
    for (const auto& [name, t] : ranks[r].tensors) {
      INFO(name);
      REQUIRE(ref.tensors.count(name) == 1);
      CHECK(relative_error(t, ref.tensors.at(name)) <= tol);
      ++seen[name];
    }
  }
  for (const auto& [name, t] : ref.tensors) {
    INFO(name << " is held by some rank");
    CHECK(seen[name] > 0);
  }
}

//! A stage that saves exactly `saved` floats of activations per microbatch (freed by backward_input) and passes
//! a small [T, B, 4] activation on: the tests read the schedule's activation memory off the allocator's peak.
class ProbeStage {
 public:
  using backend = B;
  using value_type = float;
  using Memory = Mem;
  struct Ctx : nn::CtxBase {
    Tensor<float, Mem> saved;
    Shape input;
  };
  static constexpr std::int64_t width = 4;

  ProbeStage(Rank<B>& rank, int stage, int stages, std::int64_t saved)
      : rank_(&rank), name_(fmt::format("probe {}", stage)), first_(stage == 0), last_(stage + 1 == stages),
        saved_(saved) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] Rank<B>& rank() const noexcept { return *rank_; }
  [[nodiscard]] Shape input_shape(const Shape& tokens) const { return Shape{tokens[0], tokens[1], width}; }
  [[nodiscard]] nn::ParameterList<float, Mem> parameters() { return {}; }

  [[nodiscard]] pp::StageOutput<float, Mem> forward(Ctx& ctx, const pp::StageInput<float, Mem>& in) {
    ctx.saved = nn::activation<B, float>(*rank_, Shape{saved_});
    ctx.input = input_shape(in.tokens.shape());
    if (last_) {
      const auto targets = to_vector(in.targets);
      const auto counted = std::count_if(targets.begin(), targets.end(), [](std::int32_t t) { return t != -100; });
      return {{}, {double(counted), counted}};
    }
    return {nn::activation<B, float>(*rank_, ctx.input), {}};
  }
  [[nodiscard]] Tensor<float, Mem> backward_input(Ctx& ctx, CView<float>, float) {
    ctx.saved.reset();
    return first_ ? Tensor<float, Mem>{} : nn::activation<B, float>(*rank_, ctx.input);
  }
  void backward_weight(Ctx&) {}

 private:
  Rank<B>* rank_;
  std::string name_;
  bool first_, last_;
  std::int64_t saved_;
};

static_assert(pp::StageModule<ProbeStage>);
static_assert(pp::StageModule<GptStage<DeviceMesh<1, dynamic, 1>, float>>);

}  // namespace parallax::test::pipeline

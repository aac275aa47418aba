// examples/05_train_gpt/gpt.hpp — the flagship's model: a GPT-2 cut into pipeline stages (pre-LayerNorm blocks,
// learned positions, a vocabulary-parallel token table tied to the LM head), its Hugging Face names, and its eval.
//
// Built only from parallax's public templates, so DP x PP x TP (with sequence parallelism), every pipeline schedule
// and every ZeRO stage compose around it. Parameter names (`Stage::parameters()`):
//   embed.token.weight [V, D], embed.position.weight [P, D]               virtual stage 0
//   h.<i>.ln_1.*, h.<i>.attn.qkv.* [3D, D], h.<i>.attn.proj.*, h.<i>.ln_2.*,
//   h.<i>.mlp.fc.* [4D, D], h.<i>.mlp.proj.* [D, 4D]                        the stage's layers (pp::layers_of)
//   ln_f.weight, ln_f.bias, lm_head.weight [V, D]                             the last virtual stage
// `lm_head.weight` is the LM head's copy of the token table: it starts equal to `embed.token.weight` and
// `TiedEmbedding` keeps the two equal by summing their gradients, and gradient norms count the table once (the head's
// copy is a `shared_copy`); `hf_names()` maps all of them to GPT-2's names.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <parallax/checkpoint/checkpoint.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/pp/pipeline_stage.hpp>
#include <parallax/pp/stage_module.hpp>
#include <parallax/tp/column_parallel_linear.hpp>
#include <parallax/tp/sequence_parallel.hpp>
#include <parallax/tp/transformer_block.hpp>
#include <parallax/tp/vocab_parallel_cross_entropy.hpp>
#include <parallax/tp/vocab_parallel_embedding.hpp>

#include "data.hpp"

namespace gpt {

namespace px = parallax;

//! The model's sizes and options: sequences of `seq` tokens, and `positions` learned positions (at least seq; 0
//! means seq), so a model with GPT-2's 1024 positions runs on shorter sequences.
struct Config {
  std::int64_t vocab = 256, seq = 64, layers = 4, heads = 4, dim = 128;
  std::int64_t positions = 0;
  bool sequence_parallel = false;  // activations between TP regions as sequence shards [T/tp, B, D]
  bool checkpoint = false;         // activation checkpointing of every block
  std::uint64_t seed = 1;          // every parameter's init: Normal(0, init_std) seeded by (seed, its name)
  float init_std = 0.02f;          // GPT-2: residual projections get init_std / sqrt(2 layers)

  //! The rows of the position table.
  [[nodiscard]] std::int64_t max_positions() const noexcept { return positions > 0 ? positions : seq; }
};

//! The parameter holding the token table, and the LM head's copy of it.
inline constexpr std::string_view token_table = "embed.token.weight";
inline constexpr std::string_view head_weight = "lm_head.weight";

//! Throws, with the same message on every rank, unless the model fits `mesh` under a schedule of `chunks` model
//! chunks per rank: layers divisible by PP x chunks, dim by heads, heads and vocab by TP, and under sequence
//! parallelism seq by TP.
template <class Mesh>
void check_fits(const Mesh& mesh, const Config& c, int chunks) {
  const int pp = mesh.pp_size(), tp = mesh.tp_size();
  const auto fail = [&](const std::string& why) { throw px::Error(fmt::format("gpt: {}", why), mesh.rank()); };
  if (c.vocab <= 0 || c.seq <= 0 || c.layers <= 0 || c.heads <= 0 || c.dim <= 0)
    fail(fmt::format("vocab {}, seq {}, layers {}, heads {} and dim {} must be positive", c.vocab, c.seq, c.layers,
                     c.heads, c.dim));
  if (c.seq > c.max_positions())
    fail(fmt::format("seq {} is longer than the model's {} learned positions", c.seq, c.max_positions()));
  if (c.layers % (std::int64_t{pp} * chunks) != 0)
    fail(fmt::format("{} layers are not divisible by PP x chunks = {} x {} = {} pipeline stages", c.layers, pp, chunks,
                     pp * chunks));
  if (c.dim % c.heads != 0) fail(fmt::format("dim {} is not divisible by {} heads", c.dim, c.heads));
  if (c.heads % tp != 0) fail(fmt::format("{} heads are not divisible by TP {}", c.heads, tp));
  if (c.vocab % tp != 0) fail(fmt::format("vocabulary {} is not divisible by TP {}", c.vocab, tp));
  if (c.sequence_parallel && c.seq % tp != 0)
    fail(fmt::format("seq {} is not divisible by TP {} (sequence parallelism)", c.seq, tp));
}

//! Evaluation statistics: the summed loss over the counted target tokens, and how many sequences (those with at
//! least one counted target) had every counted target predicted (argmax of the logits) right.
struct EvalStats {
  double loss_sum = 0;
  std::int64_t tokens = 0, sequences = 0, correct_sequences = 0;

  [[nodiscard]] double loss() const { return tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0; }
  [[nodiscard]] double accuracy() const {
    return sequences > 0 ? static_cast<double>(correct_sequences) / static_cast<double>(sequences) : 0;
  }
  EvalStats& operator+=(const EvalStats& o) {
    loss_sum += o.loss_sum;
    tokens += o.tokens;
    sequences += o.sequences;
    correct_sequences += o.correct_sequences;
    return *this;
  }
};

//! The vocabulary index of each row's largest logit (the first on ties, like torch.argmax), from this rank's
//! vocabulary-parallel shard `logits` [..., V/tp] (columns [tp_rank V/tp, (tp_rank + 1) V/tp)). Collective over TP.
template <px::Backend B, class Mesh, px::FloatElement T>
[[nodiscard]] std::vector<std::int32_t> argmax(Mesh& mesh, px::View<const T, typename B::Memory> logits) {
  using Memory = typename B::Memory;
  const auto z = px::nn::as_matrix(logits);
  const std::int64_t rows = z.shape()[0], width = z.shape()[1], first = mesh.tp_rank() * width;
  const std::vector<T> host = px::to_vector(z);
  std::vector<float> best;
  std::vector<std::int32_t> index;
  for (auto row = host.begin(); row != host.end(); row += width) {  // this shard's first largest, per row
    const auto top = std::max_element(row, row + width, [](T a, T b) { return float(a) < float(b); });
    best.push_back(float(*top));
    index.push_back(static_cast<std::int32_t>(first + (top - row)));
  }
  // The largest logit over TP; of the ranks holding it, the lowest index.
  auto& rank = px::mesh_rank<B>(mesh);
  px::Tensor<float, Memory> max(rank.allocator(), px::Shape{rows}, px::MemoryCategory::workspace);
  px::copy_from(max.view(), std::span<const float>(best));
  mesh.tp().all_reduce(max.view(), px::ReduceOp::max);
  const std::vector<float> global = px::to_vector(max.cview());
  for (std::size_t r = 0; r < index.size(); ++r)
    if (best[r] != global[r]) index[r] = std::numeric_limits<std::int32_t>::max();
  px::Tensor<std::int32_t, Memory> lowest(rank.allocator(), px::Shape{rows}, px::MemoryCategory::workspace);
  px::copy_from(lowest.view(), std::span<const std::int32_t>(index));
  mesh.tp().all_reduce(lowest.view(), px::ReduceOp::min);
  return px::to_vector(lowest.cview());
}

//! One virtual pipeline stage of the GPT (a `pp::StageModule`): virtual stage 0 embeds the tokens
//! (`tp::VocabParallelEmbedding`: token table split over TP by vocabulary, learned positions), every stage runs its
//! share of the `tp::TransformerBlock`s, and the last one applies `ln_f`, the LM head (a `tp::ColumnParallelLinear`
//! without bias over its own copy of the token table, giving vocabulary-parallel logits) and the
//! `tp::VocabParallelCrossEntropy` loss. Under sequence parallelism the activations between stages are this rank's
//! sequence shard [T/tp, B, D]; otherwise [T, B, D].
//!
//! Every parameter is initialised from (seed, its name) as the slice of the single-rank model, so every layout
//! starts from the same weights; the head's copy of the token table draws the token table's values.
//!
//! Evaluation mode (`set_eval(true)`): forwards keep nothing for a backward, and the last virtual stage adds the
//! loss and the argmax predictions to `eval_stats()`; backwards compute nothing (zero input gradients, no
//! parameter gradient, no gradient hook called). So `PipelineStage::train_step` runs an evaluation step (see
//! `gpt::evaluate`).
//! @tparam Mesh a `DeviceMesh`.  @tparam B the backend.  @tparam T the storage type (float, bf16).
//! @code
//! auto chunks = gpt::make_chunks<pp::OneFOneB, host::Backend, float>(mesh, config);
//! pp::PipelineStage<pp::OneFOneB, gpt::Stage<Mesh, host::Backend, float>> pipeline(mesh, std::move(chunks),
//!                                                                                  {.microbatches = 4});
//! @endcode
template <class Mesh, px::Backend B, px::FloatElement T>
class Stage {
 public:
  using backend = B;
  using value_type = T;
  using Memory = typename B::Memory;
  using Tensor = px::Tensor<T, Memory>;
  using View = px::View<const T, Memory>;
  using Embedding = px::tp::VocabParallelEmbedding<Mesh, B, T>;
  using Block = px::tp::TransformerBlock<Mesh, B, T>;
  using Norm = px::tp::SequenceParallel<Mesh, px::nn::LayerNorm<B, T>>;
  using Head = px::tp::ColumnParallelLinear<Mesh, B, T>;
  using Loss = px::tp::VocabParallelCrossEntropy<Mesh, B, T>;

  struct Ctx : px::nn::CtxBase {
    typename Embedding::Ctx embedding;
    std::vector<typename Block::Ctx> blocks;
    typename Norm::Ctx ln_f;
    typename Head::Ctx head;
    typename Loss::Ctx loss;
    px::Shape input;  // the activation's shape, for the zero gradient of an evaluation step
  };

  //! Virtual stage `stage` of `stages` (all ranks' chunks together). Use `make_chunks`, which checks the sizes.
  Stage(Mesh& mesh, const Config& c, int stage, int stages)
      : mesh_(&mesh), rank_(&px::mesh_rank<B>(mesh)), name_(fmt::format("gpt stage {}", stage)), config_(c) {
    const px::pp::LayerRange layers = px::pp::layers_of(static_cast<int>(c.layers), stage, stages);
    if (stage == 0)
      embedding_.emplace(mesh, c.vocab, c.max_positions(), c.dim,
                         px::tp::VocabParallelEmbeddingOptions{.sequence_parallel = c.sequence_parallel,
                                                               .init_std = c.init_std, .seed = c.seed,
                                                               .name = "embed"});
    for (int i = layers.begin; i < layers.end; ++i)
      blocks_.emplace_back(mesh, c.dim, c.heads,
                           px::tp::TransformerBlockOptions{
                               .sequence_parallel = c.sequence_parallel,
                               .checkpoint = c.checkpoint,
                               .init_std = c.init_std,
                               .proj_init_std = c.init_std / std::sqrt(2.f * static_cast<float>(c.layers)),
                               .seed = c.seed,
                               .name = fmt::format("h.{}", i)});
    if (stage + 1 == stages) {
      ln_f_.emplace(mesh, c.dim, px::nn::LayerNormOptions{.name = "ln_f"});
      ln_f_->set_enabled(c.sequence_parallel);
      head_.emplace(mesh, c.dim, c.vocab,
                    px::tp::ColumnParallelOptions{.bias = false, .sequence_parallel = c.sequence_parallel,
                                                  .init_std = c.init_std, .seed = c.seed, .name = "lm_head"});
      auto& w = head_->weight();
      px::nn::init_shard(w.value(), w.spec(), px::init::normal(c.init_std, px::nn::seed_for(c.seed, token_table)));
      w.set_shared_copy(true);  // the token table, counted once in the gradient norm (TiedEmbedding)
      loss_.emplace(mesh, c.vocab, px::tp::VocabParallelCrossEntropyOptions{.ignore_index = ignore_index});
    }
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] px::Rank<B>& rank() const noexcept { return *rank_; }
  [[nodiscard]] const Config& config() const noexcept { return config_; }
  //! The activation this stage takes for tokens [T, B]: [T, B, D], or [T/tp, B, D] under sequence parallelism.
  [[nodiscard]] px::Shape input_shape(const px::Shape& tokens) const {
    return px::Shape{config_.sequence_parallel ? tokens[0] / mesh_->tp_size() : tokens[0], tokens[1], config_.dim};
  }

  [[nodiscard]] px::nn::ParameterList<T, Memory> parameters() {
    px::nn::ParameterList<T, Memory> p;
    if (embedding_) px::nn::append(p, embedding_->parameters());
    for (auto& b : blocks_) px::nn::append(p, b.parameters());
    if (ln_f_) px::nn::append(p, ln_f_->parameters());
    if (head_) px::nn::append(p, head_->parameters());
    return p;
  }
  //! The copies of the token table this stage holds: the embedding's (virtual stage 0), the head's (the last).
  [[nodiscard]] px::nn::ParameterList<T, Memory> tied_weights() {
    px::nn::ParameterList<T, Memory> p;
    if (embedding_) p.push_back(&embedding_->token_weight());
    if (head_) p.push_back(&head_->weight());
    return p;
  }

  //! Evaluation mode on or off (see the class comment), and the statistics gathered since the last reset.
  void set_eval(bool on) noexcept { eval_ = on; }
  [[nodiscard]] bool eval() const noexcept { return eval_; }
  [[nodiscard]] const EvalStats& eval_stats() const noexcept { return stats_; }
  void reset_eval_stats() noexcept { stats_ = {}; }

  [[nodiscard]] px::pp::StageOutput<T, Memory> forward(Ctx& ctx, const px::pp::StageInput<T, Memory>& in) {
    px::nn::detail::advance(ctx, px::nn::Pass::none, px::nn::Pass::forward, name_, "forward", rank_->id());
    ctx.input = in.activation.shape();
    if (!eval_) return run(ctx, in);
    Ctx scratch;  // an evaluation step keeps nothing for a backward
    return run(scratch, in);
  }

  [[nodiscard]] Tensor backward_input(Ctx& ctx, View dy, float loss_scale) {
    px::nn::detail::advance(ctx, px::nn::Pass::forward, px::nn::Pass::backward_input, name_, "backward_input",
                            rank_->id());
    if (eval_) return embedding_ ? Tensor{} : px::nn::activation<B, T>(*rank_, ctx.input);
    Tensor g;
    View cur = dy;
    if (loss_) {
      auto dlogits = loss_->backward_input(ctx.loss, loss_scale);
      auto dh = head_->backward_input(ctx.head, dlogits.cview());
      dlogits.reset();
      g = ln_f_->backward_input(ctx.ln_f, dh.cview());
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
    px::nn::detail::advance(ctx, px::nn::Pass::backward_input, px::nn::Pass::none, name_, "backward_weight",
                            rank_->id());
    if (eval_) return;
    if (loss_) {
      loss_->backward_weight(ctx.loss);
      head_->backward_weight(ctx.head);
      ln_f_->backward_weight(ctx.ln_f);
    }
    for (std::size_t i = blocks_.size(); i-- > 0;) blocks_[i].backward_weight(ctx.blocks[i]);
    if (embedding_) embedding_->backward_weight(ctx.embedding);
  }

 private:
  // The forward of the stage's modules, saving into `ctx`.
  [[nodiscard]] px::pp::StageOutput<T, Memory> run(Ctx& ctx, const px::pp::StageInput<T, Memory>& in) {
    Tensor x;
    View cur = in.activation;
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
    auto h = ln_f_->forward(ctx.ln_f, cur);
    x.reset();
    const auto logits = head_->forward(ctx.head, h.cview());
    h.reset();
    const px::nn::LossValue loss = loss_->forward(ctx.loss, logits.cview(), in.targets);
    if (eval_) score(logits.cview(), in.targets, loss);
    return {{}, loss};
  }

  // Adds a microbatch's loss and predictions to the statistics.
  void score(View logits, px::View<const std::int32_t, Memory> targets, const px::nn::LossValue& loss) {
    const std::vector<std::int32_t> predicted = argmax<B>(*mesh_, logits);
    const std::vector<std::int32_t> y = px::to_vector(targets);
    const std::int64_t seq = targets.shape()[0], batch = targets.shape()[1];
    for (std::int64_t b = 0; b < batch; ++b) {
      bool counted = false, right = true;
      for (std::int64_t t = 0; t < seq; ++t) {
        const auto i = static_cast<std::size_t>(t * batch + b);
        if (y[i] == ignore_index) continue;
        counted = true;
        right = right && predicted[i] == y[i];
      }
      stats_.sequences += counted ? 1 : 0;
      stats_.correct_sequences += counted && right ? 1 : 0;
    }
    stats_ += EvalStats{.loss_sum = loss.sum, .tokens = loss.count};
  }

  Mesh* mesh_;
  px::Rank<B>* rank_;
  std::string name_;
  Config config_;
  std::optional<Embedding> embedding_;
  std::vector<Block> blocks_;
  std::optional<Norm> ln_f_;
  std::optional<Head> head_;
  std::optional<Loss> loss_;
  bool eval_ = false;
  EvalStats stats_;
};

//! The pipeline of schedule `S` running this rank's chunks of the GPT.
template <px::pp::Schedule S, class Mesh, px::Backend B, px::FloatElement T>
using Pipeline = px::pp::PipelineStage<S, Stage<Mesh, B, T>>;

//! This rank's chunks for schedule `S`: `S::chunks` of them, chunk k being virtual stage
//! `S::stage_of(pp_rank, k, pp)`. Throws on every rank alike when the model does not fit the mesh (`check_fits`).
//! @code
//! gpt::Pipeline<pp::OneFOneB, Mesh, B, float> pipeline(mesh, gpt::make_chunks<pp::OneFOneB, B, float>(mesh, c),
//!                                                      {.microbatches = m});
//! @endcode
template <px::pp::Schedule S, px::Backend B, px::FloatElement T, class Mesh>
[[nodiscard]] std::vector<Stage<Mesh, B, T>> make_chunks(Mesh& mesh, const Config& c) {
  check_fits(mesh, c, S::chunks);
  const int pp = mesh.pp_size();
  std::vector<Stage<Mesh, B, T>> chunks;
  for (int k = 0; k < S::chunks; ++k) chunks.emplace_back(mesh, c, S::stage_of(mesh.pp_rank(), k, pp), pp * S::chunks);
  return chunks;
}

//! Keeps the two copies of the token table (the embedding's on virtual stage 0, the LM head's on the last) equal:
//! once per step it replaces the gradient of each by their sum, over the pipeline ranks that hold them (over
//! `mesh.pp()`; a local sum when one rank holds both, as with PP = 1 or ZB-V), before the optimizer reduces them
//! over DP. The sum is formed alike on both sides, so the copies stay bitwise equal through any optimizer.
//!
//! Build it after the optimizer (so it is destroyed first): it wraps the copies' `after_grad` hooks, holding
//! their calls until `sync()`, which sums the gradients and then makes the held calls (the optimizer's gradient
//! buckets count them). Call `sync()` after each training `train_step`, before `step()`; without it the
//! optimizer reports that the token table received no gradient. Not movable (the hooks point at it).
//! @code
//! ShardedOptimizer<AdamW, Zero<1>, Mesh, B> opt(mesh, pipeline.parameters(), hyper, {.accumulation = m});
//! gpt::TiedEmbedding tie(mesh, pipeline);
//! for (...) { pipeline.train_step(mbs); tie.sync(); opt.step(); }
//! @endcode
template <class Mesh, px::Backend B, px::FloatElement T>
class TiedEmbedding {
 public:
  using Memory = typename B::Memory;
  using Parameter = px::nn::Parameter<T, Memory>;

  template <px::pp::Schedule S>
  TiedEmbedding(Mesh& mesh, px::pp::PipelineStage<S, Stage<Mesh, B, T>>& pipeline)
      : mesh_(&mesh), rank_(&px::mesh_rank<B>(mesh)) {
    for (int c = 0; c < S::chunks; ++c)
      for (Parameter* p : pipeline.chunk(c).tied_weights()) copies_.push_back({p, {}, 0});
    const int pp = mesh.pp_size();
    const int first = px::pp::placement<S>(0, pp).rank, last = px::pp::placement<S>(pp * S::chunks - 1, pp).rank;
    if (first != last) peer_ = mesh.pp_rank() == first ? last : first;
    for (std::size_t i = 0; i < copies_.size(); ++i) {
      auto hooks = copies_[i].p->hooks();
      copies_[i].after_grad = std::exchange(hooks.after_grad, [this, i](Parameter&) { ++copies_[i].held; });
      (void)copies_[i].p->set_hooks(std::move(hooks));
    }
  }
  TiedEmbedding(const TiedEmbedding&) = delete;
  TiedEmbedding& operator=(const TiedEmbedding&) = delete;
  //! Gives the copies their `after_grad` hooks back.
  ~TiedEmbedding() {
    for (Copy& c : copies_) {
      auto hooks = c.p->hooks();
      hooks.after_grad = std::move(c.after_grad);
      (void)c.p->set_hooks(std::move(hooks));
    }
  }

  //! Sums the copies' gradients and releases the held `after_grad` calls. Collective between the two ranks that
  //! hold the copies; nothing to do after an evaluation step (no gradient arrived).
  void sync() {
    if (copies_.empty()) return;
    const int held = copies_.front().held;
    if (copies_.back().held != held)
      throw px::Error(fmt::format("gpt::TiedEmbedding: '{}' received {} gradients this step but '{}' {}",
                                  copies_.front().p->name(), held, copies_.back().p->name(), copies_.back().held),
                      rank_->id());
    if (held == 0) return;
    auto& ctx = rank_->context();
    const px::View<T, Memory> mine = copies_.front().p->grad();
    if (copies_.size() == 2) {
      const px::View<T, Memory> other = copies_.back().p->grad();
      B::axpby(ctx, 1.f, px::View<const T, Memory>(other), 1.f, mine);
      B::copy(ctx, px::View<const T, Memory>(mine), other);
    } else {
      px::Tensor<T, Memory> theirs(rank_->allocator(), mine.shape(), px::MemoryCategory::communication);
      px::Communicator& pp = mesh_->pp();
      if (mesh_->pp_rank() < peer_) {
        pp.send(px::View<const T, Memory>(mine), peer_);
        pp.recv(theirs.view(), peer_);
      } else {
        pp.recv(theirs.view(), peer_);
        pp.send(px::View<const T, Memory>(mine), peer_);
      }
      B::axpby(ctx, 1.f, theirs.cview(), 1.f, mine);
    }
    for (Copy& c : copies_) {
      for (int k = 0; k < c.held; ++k)
        if (c.after_grad) c.after_grad(*c.p);
      c.held = 0;
    }
  }

 private:
  struct Copy {
    Parameter* p;
    std::function<void(Parameter&)> after_grad;  // the hook it wraps
    int held;                                    // after_grad calls held this step
  };

  Mesh* mesh_;
  px::Rank<B>* rank_;
  std::vector<Copy> copies_;  // the copies on this rank: none, one, or both
  int peer_ = -1;             // the pipeline rank holding the other copy, when another one does
};

//! Evaluates the microbatches `mbs` (this DP rank's share of a global batch, as `train_step` takes them) with every
//! chunk in evaluation mode, and returns the statistics of the whole global batch, the same on every rank.
//! Collective over the mesh; the parameters, their gradients and the optimizer are left as they are.
//! @code
//! const gpt::EvalStats s = gpt::evaluate(mesh, pipeline, mbs);   // s.loss(), s.accuracy()
//! @endcode
template <class Mesh, px::pp::Schedule S, px::Backend B, px::FloatElement T>
[[nodiscard]] EvalStats evaluate(Mesh& mesh, px::pp::PipelineStage<S, Stage<Mesh, B, T>>& pipeline,
                                 std::type_identity_t<std::span<const px::pp::Microbatch<typename B::Memory>>> mbs) {
  const auto mode = [&](bool on) {
    for (int c = 0; c < S::chunks; ++c) {
      pipeline.chunk(c).set_eval(on);
      pipeline.chunk(c).reset_eval_stats();
    }
  };
  mode(true);
  try {
    (void)pipeline.train_step(mbs);
  } catch (...) {
    mode(false);
    throw;
  }
  EvalStats local;
  for (int c = 0; c < S::chunks; ++c) local += pipeline.chunk(c).eval_stats();
  mode(false);
  // The last virtual stage's statistics (the same on its TP ranks), summed over the DP replicas.
  const std::vector<double> mine{local.loss_sum, double(local.tokens), double(local.sequences),
                                 double(local.correct_sequences)};
  px::Tensor<double, typename B::Memory> sums(px::mesh_rank<B>(mesh).allocator(), px::Shape{4},
                                               px::MemoryCategory::workspace);
  px::copy_from(sums.view(), std::span<const double>(mine));
  mesh.pp().all_reduce(sums.view());
  mesh.dp_cp().all_reduce(sums.view());
  const std::vector<double> all = px::to_vector(sums.cview());
  const auto count = [&](std::size_t i) { return static_cast<std::int64_t>(all[i]); };
  return {.loss_sum = all[0], .tokens = count(1), .sequences = count(2), .correct_sequences = count(3)};
}

//! This model's parameter names -> Hugging Face GPT-2's, for `checkpoint::save` and `checkpoint::load`: the tables
//! are `wte.weight` and `wpe.weight` (the head's copy is tied to `wte.weight`: loaded from it, not saved), the
//! projections `attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj` with weights stored [in, out] (Conv1D), the
//! LayerNorms as they are. Files may carry the `transformer.` prefix; unused tensors (`attn.bias` buffers) are
//! ignored.
//! @code
//! checkpoint::load(mesh, pipeline.parameters(), "gpt2.safetensors", gpt::hf_names());   // before the optimizer
//! @endcode
[[nodiscard]] inline px::checkpoint::TensorMap hf_names() {
  using px::checkpoint::Mapping;
  return {.rule = [](std::string_view p) -> std::optional<Mapping> {
            if (p == token_table) return Mapping{"wte.weight"};
            if (p == "embed.position.weight") return Mapping{"wpe.weight"};
            if (p == head_weight) return Mapping{.tensor = "wte.weight", .tied = true};
            std::string name(p);
            const bool weight = name.ends_with(".weight");
            for (const auto& [ours, theirs] : {std::pair{".attn.qkv.", ".attn.c_attn."},
                                               {".attn.proj.", ".attn.c_proj."},
                                               {".mlp.fc.", ".mlp.c_fc."},
                                               {".mlp.proj.", ".mlp.c_proj."}})
              if (const auto at = name.find(ours); at != std::string::npos)
                return Mapping{name.replace(at, std::string_view(ours).size(), theirs), weight};
            return Mapping{name};
          },
          .optional_prefix = "transformer."};
}

//! Which sizes the user set explicitly (a size from a weights file must then agree with them).
struct GivenFlags {
  bool vocab = false, seq = false, layers = false, dim = false;
};

//! `flags` with the sizes a GPT-2 weights file fixes, read from its tensors' shapes (Hugging Face names, with or
//! without `transformer.`): vocab and dim from `wte.weight`, the positions from `wpe.weight`, layers from the
//! blocks `h.<i>`; seq is the flag's when given (at most the positions), else all the positions. Heads and the
//! rest come from `flags`. Throws for a file that is not a GPT-2, and when a size the user gave (`given`)
//! disagrees with the file, naming both numbers.
[[nodiscard]] inline Config config_from_file(const std::string& path, Config flags, const GivenFlags& given) {
  const auto file = [&] {
    try {
      return px::checkpoint::SafetensorsFile::open(path);
    } catch (const px::Error& e) {
      throw px::Error(fmt::format("gpt::config_from_file: {}", e.what()));
    }
  }();
  const auto shape_of = [&](const std::string& name) -> std::optional<px::Shape> {
    for (const std::string& n : {name, "transformer." + name})
      if (file.contains(n)) return file.info(n).shape;
    return std::nullopt;
  };
  const auto matrix = [&](const std::string& name) {
    const auto s = shape_of(name);
    if (!s || s->rank() != 2)
      throw px::Error(fmt::format("gpt::config_from_file: '{}' has no 2-D tensor '{}' (nor 'transformer.{}'); is it "
                                  "a GPT-2?",
                                  path, name, name));
    return *s;
  };
  const px::Shape wte = matrix("wte.weight"), wpe = matrix("wpe.weight");
  if (wpe[1] != wte[1])
    throw px::Error(fmt::format("gpt::config_from_file: '{}' has wte.weight {} and wpe.weight {}, of different dims",
                                path, wte, wpe));
  std::int64_t layers = 0;
  while (shape_of(fmt::format("h.{}.ln_1.weight", layers))) ++layers;
  if (layers == 0)
    throw px::Error(fmt::format("gpt::config_from_file: '{}' has no blocks (no tensor 'h.0.ln_1.weight')", path));
  const auto take = [&](const char* flag, bool was_given, std::int64_t& value, std::int64_t fixed,
                        const std::string& source) {
    if (was_given && value != fixed)
      throw px::Error(fmt::format("gpt::config_from_file: --{} {} disagrees with '{}', whose {} makes it {}", flag,
                                  value, path, source, fixed));
    value = fixed;
  };
  take("vocab", given.vocab, flags.vocab, wte[0], fmt::format("wte.weight {}", wte));
  take("dim", given.dim, flags.dim, wte[1], fmt::format("wte.weight {}", wte));
  flags.positions = wpe[0];
  if (!given.seq) flags.seq = wpe[0];
  if (flags.seq > wpe[0])
    throw px::Error(fmt::format("gpt::config_from_file: --seq {} is longer than the {} positions of '{}' (wpe.weight "
                                "{})",
                                flags.seq, wpe[0], path, wpe));
  take("layers", given.layers, flags.layers, layers, fmt::format("blocks h.0 .. h.{}", layers - 1));
  return flags;
}

}  // namespace gpt

// tests/gpt/harness.hpp — what the GPT model tests share: the small config, random data, a DP rank's microbatches,
// a training run on any mesh / schedule / ZeRO stage, an evaluation of a weights file, and every rank's error.
#pragma once

#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sharded_optimizer.hpp>
#include <parallax/pp/gpipe.hpp>
#include <parallax/pp/interleaved_1f1b.hpp>
#include <parallax/pp/one_f_one_b.hpp>
#include <parallax/pp/zero_bubble_h1.hpp>
#include <parallax/pp/zero_bubble_v.hpp>

#include "../../examples/05_train_gpt/data.hpp"
#include "../../examples/05_train_gpt/gpt.hpp"

namespace gpt_test {

namespace px = parallax;
namespace pp = parallax::pp;
using B = px::host::Backend;
using Mem = px::host::Memory;
using Microbatch = pp::Microbatch<Mem>;

inline constexpr auto timeout = std::chrono::seconds(60);

//! The tests' model: vocab 64, seq 8, 4 layers of width 32 with 4 heads.
inline gpt::Config small_config() {
  return {.vocab = 64, .seq = 8, .layers = 4, .heads = 4, .dim = 32, .seed = 7};
}

//! `count` sequences of random tokens; every 5th target is ignored, so the loss's mean must count tokens.
inline gpt::Dataset random_sequences(const gpt::Config& c, std::int64_t count, std::uint64_t seed = 3) {
  std::vector<std::int32_t> tokens;
  for (std::int64_t i = 0; i < count * c.seq + 1; ++i)
    tokens.push_back(static_cast<std::int32_t>(gpt::detail::splitmix64(seed) % static_cast<std::uint64_t>(c.vocab)));
  gpt::Dataset d = gpt::sequences(tokens, c.seq, c.vocab);
  for (std::size_t i = 3; i < d.targets.size(); i += 5) d.targets[i] = gpt::ignore_index;
  return d;
}

//! A DP rank's m microbatches of a global batch, and views of them for `train_step`.
struct Microbatches {
  std::vector<gpt::Batch> batches;
  std::vector<Microbatch> views;

  Microbatches(const gpt::Batch& global, int dp_rank, int dp, int m) {
    for (int i = 0; i < m; ++i) batches.push_back(gpt::slice(global, dp_rank, dp, i, m));
    for (const gpt::Batch& b : batches)
      views.push_back({px::View<const std::int32_t, Mem>(b.tokens.data(), b.shape()),
                       px::View<const std::int32_t, Mem>(b.targets.data(), b.shape())});
  }
  Microbatches(const Microbatches&) = delete;
  Microbatches& operator=(const Microbatches&) = delete;
};

//! The full value of `p` (through the optimizer, which owns it under ZeRO), gathered over TP; collective over the DP
//! and TP groups.
template <class Opt, class Mesh, class T>
std::vector<float> full_value(Opt& opt, Mesh& mesh, const px::nn::Parameter<T, Mem>& p) {
  const std::vector<T> local = opt.value(p);
  std::vector<T> full = local;
  if (p.spec().sharded()) {
    const auto n = static_cast<std::int64_t>(local.size());
    std::vector<T> all(local.size() * static_cast<std::size_t>(mesh.tp_size()));
    mesh.tp().all_gather(px::View<const T, Mem>(local.data(), px::Shape{n}),
                         px::View<T, Mem>(all.data(), px::Shape{n * mesh.tp_size()}));
    std::vector<std::vector<T>> shards;
    for (std::int64_t r = 0; r < mesh.tp_size(); ++r)
      shards.emplace_back(all.begin() + r * n, all.begin() + (r + 1) * n);
    full = px::nn::assemble<T>(p.spec(), shards);
  }
  return std::vector<float>(full.begin(), full.end());
}

//! What a training run saw on one rank: each step's loss, and the final full value of each copy of the token
//! table it holds, by name.
struct RankRun {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> tied;
};

//! `steps` AdamW steps (global batch `batch` of `data`, m microbatches per DP rank, clipping at 1) of the GPT under
//! schedule S and ZeRO stage Z on `world` ranks of `Mesh`, in storage type T; what each rank saw.
template <class Mesh, pp::Schedule S, class Z, class T = float>
std::vector<RankRun> train(int world, const gpt::Config& c, const gpt::Dataset& data, int m, int steps,
                           std::int64_t batch = 8) {
  std::vector<RankRun> out(static_cast<std::size_t>(world));
  px::launch<B>(
      world,
      [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        gpt::Pipeline<S, Mesh, B, T> pipeline(mesh, gpt::make_chunks<S, B, T>(mesh, c), {.microbatches = m});
        px::optim::ShardedOptimizer<px::optim::AdamW, Z, Mesh, B> opt(mesh, pipeline.parameters(), {.lr = 1e-2f},
                                                                      {.accumulation = m, .clip_norm = 1.f});
        gpt::TiedEmbedding tie(mesh, pipeline);
        RankRun& r = out[static_cast<std::size_t>(rank.id())];
        for (int s = 0; s < steps; ++s) {
          const Microbatches mbs(gpt::train_batch(data, s, batch), mesh.dp_rank(), mesh.dp_size(), m);
          r.losses.push_back(pipeline.train_step(mbs.views).loss);
          tie.sync();
          (void)opt.step();
        }
        for (int k = 0; k < S::chunks; ++k)
          for (auto* p : pipeline.chunk(k).tied_weights()) r.tied[p->name()] = full_value(opt, mesh, *p);
      },
      {.timeout = timeout});
  return out;
}

//! The evaluation of the global batch `global` (m microbatches per DP rank) by the GPT `c` loaded from the
//! Hugging Face weights `file`, on `world` ranks of `Mesh` under schedule S; every rank's result.
template <class Mesh, pp::Schedule S = pp::OneFOneB>
std::vector<gpt::EvalStats> evaluate_file(int world, const gpt::Config& c, const std::filesystem::path& file,
                                          const gpt::Batch& global, int m) {
  std::vector<gpt::EvalStats> out(static_cast<std::size_t>(world));
  px::launch<B>(
      world,
      [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        gpt::Pipeline<S, Mesh, B, float> pipeline(mesh, gpt::make_chunks<S, B, float>(mesh, c), {.microbatches = m});
        px::checkpoint::load(mesh, pipeline.parameters(), file, gpt::hf_names());
        const Microbatches mbs(global, mesh.dp_rank(), mesh.dp_size(), m);
        out[static_cast<std::size_t>(rank.id())] = gpt::evaluate(mesh, pipeline, mbs.views);
      },
      {.timeout = timeout});
  return out;
}

//! |a - b| <= tol |b|.
inline bool close(double a, double b, double tol) { return std::abs(a - b) <= tol * std::abs(b); }

//! Runs `f` on `n` ranks; each rank's error message ("" where it threw none). A rank rethrows, so the others are
//! released at once, as in a real program.
template <class F>
std::vector<std::string> errors_on_ranks(int n, F&& f) {
  std::vector<std::string> messages(static_cast<std::size_t>(n));
  try {
    px::launch<B>(
        n,
        [&](px::Rank<B>& rank) {
          try {
            f(rank);
          } catch (const px::Error& e) {
            messages[static_cast<std::size_t>(rank.id())] = e.what();
            throw;
          }
        },
        {.timeout = timeout});
  } catch (const px::Error&) {
  }
  return messages;
}

//! Checks that every rank's message contains `text`.
inline void check_every_rank(const std::vector<std::string>& messages, const std::string& text) {
  for (std::size_t r = 0; r < messages.size(); ++r) {
    INFO("rank " << r << ": " << messages[r]);
    CHECK(messages[r].find(text) != std::string::npos);
  }
}

}  // namespace gpt_test

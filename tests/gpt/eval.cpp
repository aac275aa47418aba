// gpt evaluation: argmax over vocabulary-parallel logits (the first largest, across shards); EvalStats of a model
// whose predictions and loss are known in closed form (each token predicts itself) on 1x1x1, TP 2 with sequence
// parallelism and 2x2x2: the loss, the counted tokens, and which sequences are right (all counted targets
// predicted; sequences without counted targets do not count); evaluation leaves the gradients alone.
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <parallax/checkpoint/checkpoint.hpp>

#include "../checkpoint/temp_dir.hpp"
#include "harness.hpp"

using namespace gpt_test;
using px::dynamic;

TEST_CASE("gpt::argmax: the first largest logit of the whole vocabulary, from TP shards", "[gpt][eval]") {
  // Three rows over a vocabulary of 8: a unique maximum at 6; a tie between 1 (shard 0) and 5 (shard 1); a tie
  // inside shard 1 between 4 and 7.
  const std::vector<float> logits{0, 1, 2, 3, 4, 5, 9, 7,  //
                                  0, 8, 2, 3, 4, 8, 6, 7,  //
                                  0, 1, 2, 3, 9, 5, 6, 9};
  const std::vector<std::int32_t> want{6, 1, 4};
  for (int tp : {1, 2, 4}) {
    INFO("TP " << tp);
    std::vector<std::vector<std::int32_t>> got(static_cast<std::size_t>(tp));
    px::launch<B>(tp, [&](px::Rank<B>& rank) {
      px::DeviceMesh<1, 1, dynamic> mesh(rank);
      const std::int64_t width = 8 / tp;
      std::vector<float> shard;
      for (std::int64_t r = 0; r < 3; ++r)
        for (std::int64_t v = 0; v < width; ++v)
          shard.push_back(logits[static_cast<std::size_t>(r * 8 + mesh.tp_rank() * width + v)]);
      got[static_cast<std::size_t>(rank.id())] =
          gpt::argmax<B>(mesh, px::View<const float, Mem>(shard.data(), px::Shape{3, 1, width}));
    });
    for (const auto& g : got) CHECK(g == want);
  }
}

namespace {

constexpr std::int64_t vocab = 16, seq = 8;

//! A GPT whose blocks are the identity (every projection zero), with no positions, and whose token t has the
//! embedding e_{2t} - e_{2t+1}: after ln_f it is (e_{2t} - e_{2t+1}) r, r = 1 / sqrt(1/16 + eps), so token t's
//! logits are 2r at t and 0 elsewhere. Written to `path` under GPT-2's names.
gpt::Config write_identity_model(const std::filesystem::path& path) {
  const gpt::Config c{.vocab = vocab, .seq = seq, .layers = 4, .heads = 4, .dim = 32};
  using Mesh = px::DeviceMesh<1, dynamic, 1>;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    auto chunks = gpt::make_chunks<pp::OneFOneB, B, float>(mesh, c);
    for (auto* p : chunks[0].parameters()) {
      std::vector<float> v(static_cast<std::size_t>(p->numel()));
      if (p->name() == gpt::token_table || p->name() == gpt::head_weight) {
        for (std::int64_t t = 0; t < vocab; ++t) {
          v[static_cast<std::size_t>(t * c.dim + 2 * t)] = 1;
          v[static_cast<std::size_t>(t * c.dim + 2 * t + 1)] = -1;
        }
      } else if (p->name().find("ln_") != std::string::npos && p->name().ends_with(".weight")) {
        v.assign(v.size(), 1.f);
      }
      px::copy_from(p->value(), std::span<const float>(v));
    }
    px::checkpoint::save(mesh, chunks[0].parameters(), path, gpt::hf_names());
  });
  return c;
}

}  // namespace

TEST_CASE("gpt::evaluate: loss, tokens and right sequences of a model with known predictions, on any layout",
          "[gpt][eval]") {
  px::test::TempDir dir;
  const auto path = dir / "identity.safetensors";
  const gpt::Config c = write_identity_model(path);
  // Four sequences, [seq, 4]: 0 all right; 1 one target wrong; 2 nothing counted; 3 two targets ignored, the rest
  // right. The model predicts each token itself.
  gpt::Batch global{.seq = seq, .batch = 4};
  std::uint64_t state = 5;
  for (std::int64_t t = 0; t < seq; ++t)
    for (std::int64_t b = 0; b < 4; ++b) {
      const auto token = static_cast<std::int32_t>(gpt::detail::splitmix64(state) % vocab);
      global.tokens.push_back(token);
      const bool ignored = b == 2 || (b == 3 && t < 2);
      global.targets.push_back(ignored ? gpt::ignore_index : b == 1 && t == 5 ? (token + 1) % vocab : token);
    }
  const double z = 2 / std::sqrt(1.0 / 16 + 1e-5);  // the target's logit when right; the others are 0
  const double right = std::log(std::exp(z) + (vocab - 1)) - z, wrong = std::log(std::exp(z) + (vocab - 1));
  const double loss = (21 * right + wrong) / 22;
  gpt::Config sp = c;
  sp.sequence_parallel = true;
  const auto check = [&](const std::vector<gpt::EvalStats>& ranks) {
    for (std::size_t r = 0; r < ranks.size(); ++r) {
      INFO("rank " << r << ": loss " << ranks[r].loss() << " vs " << loss);
      CHECK(ranks[r].tokens == 22);
      CHECK(ranks[r].sequences == 3);
      CHECK(ranks[r].correct_sequences == 2);
      CHECK(ranks[r].accuracy() == Approx(2.0 / 3));
      CHECK(close(ranks[r].loss(), loss, 1e-5));
    }
  };
  check(evaluate_file<px::DeviceMesh<1, dynamic, 1>>(1, c, path, global, 1));
  check(evaluate_file<px::DeviceMesh<1, 1, dynamic>>(2, sp, path, global, 2));
  check(evaluate_file<px::DeviceMesh<2, 2, 2>, pp::Interleaved1F1B<2>>(8, c, path, global, 2));
}

TEST_CASE("gpt::evaluate: no gradient, no gradient hook, and training goes on as if it had not run", "[gpt][eval]") {
  const gpt::Config c = small_config();
  const gpt::Dataset data = random_sequences(c, 16);
  using Mesh = px::DeviceMesh<1, dynamic, 1>;
  std::vector<double> plain, with_eval;
  std::int64_t evaluated = 0;
  for (bool evaluating : {false, true}) {
    auto& losses = evaluating ? with_eval : plain;
    px::launch<B>(
        2,
        [&](px::Rank<B>& rank) {
          Mesh mesh(rank);
          gpt::Pipeline<pp::OneFOneB, Mesh, B, float> pipeline(
              mesh, gpt::make_chunks<pp::OneFOneB, B, float>(mesh, c), {.microbatches = 2});
          px::optim::ShardedOptimizer<px::optim::AdamW, px::Zero<0>, Mesh, B> opt(mesh, pipeline.parameters(),
                                                                                {.lr = 1e-2f}, {.accumulation = 2});
          gpt::TiedEmbedding tie(mesh, pipeline);
          for (int s = 0; s < 3; ++s) {
            const Microbatches mbs(gpt::train_batch(data, s, 8), 0, 1, 2);
            const double loss = pipeline.train_step(mbs.views).loss;
            if (rank.id() == 0) losses.push_back(loss);
            if (evaluating) {  // between the backward and the tie's sum: the gradients are in flight
              const Microbatches other(gpt::train_batch(data, s + 1, 8), 0, 1, 2);
              const gpt::EvalStats e = gpt::evaluate(mesh, pipeline, other.views);
              if (rank.id() == 0) evaluated += e.tokens;
            }
            tie.sync();
            (void)opt.step();
          }
        },
        {.timeout = timeout});
  }
  std::int64_t counted = 0;
  for (int s = 1; s <= 3; ++s)
    for (std::int32_t t : gpt::train_batch(data, s, 8).targets) counted += t != gpt::ignore_index ? 1 : 0;
  CHECK(evaluated == counted);
  CHECK(with_eval == plain);
}

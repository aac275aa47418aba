// gpt::TiedEmbedding: after sync() both copies of the token table hold the sum of their two gradients, bitwise
// equal, whether one rank holds both (PP = 1, ZB-V) or two pipeline ranks do (1F1B, interleaved, with TP); that sum
// is the gradient of the tied model (a central difference of the loss along it); and without sync() the optimizer
// says the token table received no gradient.
#include <cmath>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <parallax/optim/sgd.hpp>
#include <parallax/tp/gather.hpp>

#include "../support/support.hpp"
#include "harness.hpp"

using namespace gpt_test;
using px::dynamic;

namespace {

//! The full gradients of the token table's copies, by name.
using Grads = std::map<std::string, std::vector<float>>;

template <class Mesh, class Stage>
void gather_tied(Mesh& mesh, Stage& chunk, Grads& out) {
  for (auto* p : chunk.tied_weights()) out[p->name()] = px::tp::gather_gradient(mesh, *p);
}

//! One step's gradients of the copies, without and with the tie, on `world` ranks of `Mesh` under schedule S.
template <class Mesh, pp::Schedule S>
void check_sum(int world, const gpt::Config& c, int m) {
  const gpt::Dataset data = random_sequences(c, 8);
  std::vector<Grads> raw(static_cast<std::size_t>(world)), tied(static_cast<std::size_t>(world));
  px::launch<B>(
      world,
      [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        gpt::Pipeline<S, Mesh, B, float> pipeline(mesh, gpt::make_chunks<S, B, float>(mesh, c), {.microbatches = m});
        const Microbatches mbs(gpt::train_batch(data, 0, 8), mesh.dp_rank(), mesh.dp_size(), m);
        const auto r = static_cast<std::size_t>(rank.id());
        (void)pipeline.train_step(mbs.views);
        for (int k = 0; k < S::chunks; ++k) gather_tied(mesh, pipeline.chunk(k), raw[r]);
        for (auto* p : pipeline.parameters()) p->zero_grad();
        gpt::TiedEmbedding tie(mesh, pipeline);
        (void)pipeline.train_step(mbs.views);
        tie.sync();
        for (int k = 0; k < S::chunks; ++k) gather_tied(mesh, pipeline.chunk(k), tied[r]);
      },
      {.timeout = timeout});
  const auto find = [](const std::vector<Grads>& ranks, std::string_view name) {
    for (const Grads& g : ranks)
      if (const auto it = g.find(std::string(name)); it != g.end()) return it->second;
    FAIL("no rank holds " << name);
    return std::vector<float>{};
  };
  const auto token = find(raw, gpt::token_table), head = find(raw, gpt::head_weight);
  const auto tied_token = find(tied, gpt::token_table), tied_head = find(tied, gpt::head_weight);
  REQUIRE(token.size() == static_cast<std::size_t>(c.vocab * c.dim));
  REQUIRE(head.size() == token.size());
  REQUIRE(tied_token.size() == token.size());
  REQUIRE(tied_head.size() == token.size());
  std::size_t not_sum = 0, differ = 0, nonzero = 0;
  for (std::size_t i = 0; i < token.size(); ++i) {
    not_sum += px::test::bits_of(tied_token[i]) != px::test::bits_of(token[i] + head[i]) ? 1 : 0;
    differ += px::test::bits_of(tied_token[i]) != px::test::bits_of(tied_head[i]) ? 1 : 0;
    nonzero += token[i] != 0 && head[i] != 0 ? 1 : 0;
  }
  CHECK(nonzero > 0);  // both copies have gradients of their own
  CHECK(not_sum == 0);
  CHECK(differ == 0);
}

}  // namespace

TEST_CASE("gpt::TiedEmbedding: both copies get the sum of their gradients, on one rank or two",
          "[gpt][tied]") {
  const gpt::Config c = small_config();
  SECTION("1x1x1") { check_sum<px::DeviceMesh<1, dynamic, 1>, pp::OneFOneB>(1, c, 1); }
  SECTION("PP 2, ZB-V: both copies on pipeline rank 0") {
    check_sum<px::DeviceMesh<1, dynamic, 1>, pp::ZeroBubbleV>(2, c, 4);
  }
  SECTION("PP 2, Interleaved1F1B<2>: the copies on pipeline ranks 0 and 1") {
    check_sum<px::DeviceMesh<1, dynamic, 1>, pp::Interleaved1F1B<2>>(2, c, 2);
  }
  SECTION("2x2x2, 1F1B") { check_sum<px::DeviceMesh<2, 2, 2>, pp::OneFOneB>(8, c, 2); }
}

TEST_CASE("gpt::TiedEmbedding: the summed gradient is the tied model's (central difference along it)",
          "[gpt][tied]") {
  gpt::Config c = small_config();
  c.init_std = 0.1f;
  const gpt::Dataset data = random_sequences(c, 8);
  using Mesh = px::DeviceMesh<1, dynamic, 1>;
  double along = 0, difference = 0, head_only = 0;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    gpt::Pipeline<pp::OneFOneB, Mesh, B, float> pipeline(mesh, gpt::make_chunks<pp::OneFOneB, B, float>(mesh, c),
                                                         {.microbatches = 1});
    const Microbatches mbs(gpt::train_batch(data, 0, 8), 0, 1, 1);
    const auto copies = pipeline.chunk(0).tied_weights();
    REQUIRE(copies.size() == 2);
    (void)pipeline.train_step(mbs.views);
    const std::vector<float> g_head = px::to_vector(copies[1]->grad());
    {
      gpt::TiedEmbedding tie(mesh, pipeline);
      for (auto* p : pipeline.parameters()) p->zero_grad();
      (void)pipeline.train_step(mbs.views);
      tie.sync();
    }
    // d: the unit vector along the tied gradient; move both copies along it.
    const std::vector<float> g = px::to_vector(copies[0]->grad()), w = px::to_vector(copies[0]->value());
    double norm = 0;
    for (float x : g) norm += double(x) * x;
    norm = std::sqrt(norm);
    const auto loss_at = [&](double step) {
      std::vector<float> moved(w.size());
      for (std::size_t i = 0; i < w.size(); ++i) moved[i] = static_cast<float>(w[i] + step * g[i] / norm);
      for (auto* p : copies) px::copy_from(p->value(), std::span<const float>(moved));
      return gpt::evaluate(mesh, pipeline, mbs.views).loss();
    };
    constexpr double eps = 1e-2;
    difference = (loss_at(eps) - loss_at(-eps)) / (2 * eps);
    along = norm;
    for (std::size_t i = 0; i < g.size(); ++i) head_only += double(g_head[i]) * g[i] / norm;
  });
  INFO("central difference " << difference << ", |g| " << along << ", head's gradient alone " << head_only);
  CHECK(close(difference, along, 5e-4));  // measured: 2e-5
  CHECK_FALSE(close(difference, head_only, 5e-2));  // the test would see a missing half of the sum
}

TEST_CASE("gpt::TiedEmbedding: without sync() the optimizer names the token table", "[gpt][tied][errors]") {
  const gpt::Config c = small_config();
  const gpt::Dataset data = random_sequences(c, 8);
  using Mesh = px::DeviceMesh<1, dynamic, 1>;
  check_every_rank(errors_on_ranks(2,
                                   [&](px::Rank<B>& rank) {
                                     Mesh mesh(rank);
                                     gpt::Pipeline<pp::OneFOneB, Mesh, B, float> pipeline(
                                         mesh, gpt::make_chunks<pp::OneFOneB, B, float>(mesh, c), {.microbatches = 2});
                                     px::optim::ShardedOptimizer<px::optim::SGD, px::Zero<0>, Mesh, B> opt(
                                         mesh, pipeline.parameters(), {.lr = 0.1f}, {.accumulation = 2});
                                     gpt::TiedEmbedding tie(mesh, pipeline);
                                     const Microbatches mbs(gpt::train_batch(data, 0, 8), 0, 1, 2);
                                     (void)pipeline.train_step(mbs.views);
                                     (void)opt.step();
                                   }),
                   "received 0 gradient(s) this step, expected accumulation = 2");
}

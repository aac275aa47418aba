// Sequence parallelism: scatter/gather/reduce-scatter of sequence shards, the SequenceParallel wrapper
// (pass-through, TP 1, errors). Its gradient parity is tested in the MLP chain (row_parallel_linear.cpp).
#include <catch2/catch.hpp>

#include <parallax/nn/linear.hpp>
#include <parallax/tp/sequence_parallel.hpp>

#include "parity.hpp"

namespace px = parallax;
using namespace px::test::tp;

static_assert(px::nn::Layer<px::tp::SequenceParallel<Mesh, px::nn::Linear<B, float>>>);

TEST_CASE("scatter_sequence and gather_sequence move between the full tensor and the sequence shards", "[tp][sp]") {
  for (int tp : {1, 2, 3, 4}) {
    INFO("TP " << tp);
    const auto full = values<float>(seq * batch * 5, 3);
    std::vector<std::vector<float>> shards(static_cast<std::size_t>(tp)), gathered(shards.size()), summed(shards.size());
    std::vector<px::Shape> shapes(shards.size());
    px::launch<B>(tp, [&](px::Rank<B>& rank) {
      Mesh mesh(rank);
      auto shard = px::tp::scatter_sequence<B>(mesh, CView<float>(full.data(), px::Shape{seq, batch, 5}));
      auto back = px::tp::gather_sequence<B>(mesh, shard.cview());
      // Every rank contributes (rank + 1) x full: the shard of the sum is (1 + ... + tp) x its rows.
      auto mine = values<float>(seq * batch * 5, 3);
      for (auto& v : mine) v *= float(rank.id() + 1);
      auto reduced = px::tp::reduce_scatter_sequence<B>(mesh, CView<float>(mine.data(), px::Shape{seq, batch, 5}));
      const auto r = static_cast<std::size_t>(rank.id());
      shapes[r] = shard.shape();
      shards[r] = floats(shard.cview());
      gathered[r] = floats(back.cview());
      summed[r] = floats(reduced.cview());
    });
    const std::int64_t t = seq / tp;
    const float total = float(tp * (tp + 1) / 2);
    for (int r = 0; r < tp; ++r) {
      const auto i = static_cast<std::size_t>(r);
      CHECK(shapes[i] == px::Shape{t, batch, 5});
      CHECK(shards[i] == rows(full, batch * 5, r * t, t));
      CHECK(gathered[i] == full);
      auto want = rows(full, batch * 5, r * t, t);
      for (auto& v : want) v *= total;
      CHECK(relative_error(summed[i], want) <= 1e-6);
    }
  }
}

TEST_CASE("sequence shards need a sequence length divisible by TP", "[tp][sp][errors]") {
  std::vector<std::vector<std::string>> msgs(2);
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    std::vector<float> x(7 * 3, 1.f);
    auto& m = msgs[static_cast<std::size_t>(rank.id())];
    m.push_back(message_of([&] { (void)px::tp::scatter_sequence<B>(mesh, CView<float>(x.data(), px::Shape{7, 3})); }));
    m.push_back(
        message_of([&] { (void)px::tp::reduce_scatter_sequence<B>(mesh, CView<float>(x.data(), px::Shape{7, 3})); }));
    m.push_back(message_of([&] { (void)px::tp::gather_sequence<B>(mesh, CView<float>(x.data(), px::Shape{})); }));
  });
  for (const auto& m : msgs) {
    REQUIRE(m.size() == 3);
    CHECK_THAT(m[0], Catch::Contains("scatter_sequence: sequence positions 7 are not divisible by TP 2"));
    CHECK_THAT(m[1], Catch::Contains("reduce_scatter_sequence: sequence positions 7 are not divisible by TP 2"));
    CHECK_THAT(m[2], Catch::Contains("gather_sequence: tensor [] has no sequence dimension"));
  }
}

TEST_CASE("SequenceParallel passes the inner module through and needs nothing from TP 1", "[tp][sp]") {
  std::vector<float> got_y, got_grad, want_y, want_grad;
  std::string name, error;
  std::size_t count = 0;
  const auto x = values<float>(4 * 2 * 3, 5);
  auto run = [&](auto& m, std::vector<float>& y_out, std::vector<float>& grad_out) {
    typename std::remove_reference_t<decltype(m)>::Ctx ctx;
    auto y = m.forward(ctx, CView<float>(x.data(), px::Shape{4, 2, 3}));
    (void)m.backward_input(ctx, y.cview());
    m.backward_weight(ctx);
    y_out = floats(y.cview());
    grad_out = floats(CView<float>(m.parameters()[0]->grad()));
  };
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    px::tp::SequenceParallel<Mesh, px::nn::Linear<B, float>> ln(mesh, 3, 3, px::nn::LinearOptions{.name = "ln"});
    px::nn::Linear<B, float> ref(rank, 3, 3, {.name = "ln"});
    run(ln, got_y, got_grad);
    run(ref, want_y, want_grad);
    name = ln.name();
    count = ln.parameters().size();
    typename decltype(ln)::Ctx ctx;
    error = message_of([&] { ln.backward_weight(ctx); });
  });
  CHECK(name == "ln");
  CHECK(count == 2);
  CHECK(got_y == want_y);
  CHECK(got_grad == want_grad);
  CHECK_THAT(error, Catch::Contains("Linear 'ln': backward_weight called on a context whose backward_input has not run"));
}

TEST_CASE("SequenceParallel keeps the accumulated gradients when the inner module rejects a pass", "[tp][sp][errors]") {
  std::vector<std::vector<float>> before(2), after(2);
  std::vector<std::string> errors(2);
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    px::tp::SequenceParallel<Mesh, px::nn::Linear<B, float>> ln(mesh, 3, 3, px::nn::LinearOptions{.name = "ln"});
    auto g = values<float>(9, 8);
    px::copy_from(ln.parameters()[0]->grad(), std::span<const float>(g));
    const auto r = static_cast<std::size_t>(rank.id());
    before[r] = floats(CView<float>(ln.parameters()[0]->grad()));
    typename decltype(ln)::Ctx ctx;
    errors[r] = message_of([&] { ln.backward_weight(ctx); });
    after[r] = floats(CView<float>(ln.parameters()[0]->grad()));
  });
  for (std::size_t r = 0; r < 2; ++r) {
    CHECK_THAT(errors[r], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
    CHECK(after[r] == before[r]);
  }
}

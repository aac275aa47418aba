// Embedding: forward against a loop, both tables' gradients against a double loop and central differences
// (repeated ids summed, accumulation), initialisation, bf16 against fp32, memory, errors.
#include <catch2/catch.hpp>

#include <parallax/nn/embedding.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"
#include "nn_ops.hpp"

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace px = parallax;
using px::Shape;
using px::test::error_of;
using px::test::HostBackend;
using px::test::HostView;
using i32 = std::int32_t;
using i64 = std::int64_t;
template <class T>
using Emb = px::nn::Embedding<HostBackend, T>;

static_assert(px::nn::Module<Emb<float>>);
static_assert(!px::nn::Layer<Emb<float>>);  // its input is token ids

namespace {

constexpr i64 vocab = 7, max_seq = 6, dim = 5, nt = 4, nb = 3;
// Token ids [T, B], with repeats inside a sequence and across the batch (id 2 five times, id 6 never).
const std::vector<i32> ids{2, 0, 2,  //
                           5, 2, 1,  //
                           2, 3, 4,  //
                           0, 2, 5};
const HostView<i32> ids_view(ids.data(), Shape{nt, nb});

// sum over tokens of y[t, b] . w[t, b]: a loss whose dy is w.
template <class T>
double weighted_sum(const px::Tensor<T, px::host::Memory>& y, const std::vector<float>& w) {
  double s = 0;
  for (i64 i = 0; i < y.numel(); ++i) s += double(float(y.data()[i])) * double(w[static_cast<std::size_t>(i)]);
  return s;
}

}  // namespace

TEST_CASE("Embedding forward adds the token row and the position row", "[nn_ops][embedding]") {
  std::vector<float> got, token, position;
  Shape ys;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Emb<float> emb(rank, vocab, max_seq, dim, {.init_std = 1.f, .seed = 3});
    Emb<float>::Ctx ctx;
    auto y = emb.forward(ctx, ids_view);
    ys = y.shape();
    got = px::test::floats(y.cview());
    token = px::test::floats(HostView<float>(emb.token().value()));
    position = px::test::floats(HostView<float>(emb.position().value()));
  });
  CHECK(ys == Shape{nt, nb, dim});
  bool all = true;
  for (i64 t = 0; t < nt; ++t)
    for (i64 b = 0; b < nb; ++b)
      for (i64 j = 0; j < dim; ++j)
        all = all && got[static_cast<std::size_t>((t * nb + b) * dim + j)] ==
                         token[static_cast<std::size_t>(ids[static_cast<std::size_t>(t * nb + b)] * dim + j)] +
                             position[static_cast<std::size_t>(t * dim + j)];
  CHECK(all);
}

TEST_CASE("Embedding initialises both tables from their names and the seed", "[nn_ops][embedding][init]") {
  std::vector<std::string> names;
  std::vector<float> a, b, c;
  double token_std = 0;
  bool position_is_token_prefix = true;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Emb<float> e1(rank, 1000, max_seq, 16, {.seed = 9, .name = "wte"});
    Emb<float> e2(rank, 1000, max_seq, 16, {.seed = 9, .name = "wte"});
    Emb<float> e3(rank, 1000, max_seq, 16, {.seed = 10, .name = "wte"});
    for (auto* p : e1.parameters()) names.push_back(p->name());
    a = px::test::floats(HostView<float>(e1.token().value()));
    b = px::test::floats(HostView<float>(e2.token().value()));
    c = px::test::floats(HostView<float>(e3.token().value()));
    double ss = 0;
    for (float v : a) ss += double(v) * double(v);
    token_std = std::sqrt(ss / double(a.size()));
    position_is_token_prefix = px::test::floats(HostView<float>(e1.position().value())) ==
                               std::vector<float>(a.begin(), a.begin() + max_seq * 16);
  });
  CHECK_FALSE(position_is_token_prefix);  // the position table draws its own stream
  CHECK(names == std::vector<std::string>{"wte.token.weight", "wte.position.weight"});
  CHECK(a == b);
  CHECK_FALSE(a == c);
  CHECK(token_std == Approx(0.02).epsilon(0.05));
}

TEST_CASE("Embedding gradients sum repeated ids and match a double loop and finite differences",
          "[nn_ops][embedding][gradcheck]") {
  const auto w = px::test::random_values(nt * nb * dim, 11);
  std::vector<float> dtoken, dposition, dtoken_twice;
  px::test::GradError token_err, position_err;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Emb<float> emb(rank, vocab, max_seq, dim, {.init_std = 0.5f});
    const auto backward = [&] {
      Emb<float>::Ctx ctx;
      auto y = emb.forward(ctx, ids_view);
      emb.backward_input(ctx, HostView<float>(w.data(), y.shape()));
      emb.backward_weight(ctx);
    };
    backward();
    dtoken = px::test::floats(HostView<float>(emb.token().grad()));
    dposition = px::test::floats(HostView<float>(emb.position().grad()));
    backward();  // gradients accumulate
    dtoken_twice = px::test::floats(HostView<float>(emb.token().grad()));

    const auto loss = [&] {
      Emb<float>::Ctx ctx;
      return weighted_sum(emb.forward(ctx, ids_view), w);
    };
    const px::test::GradCheckOptions o;
    const auto at_token = px::test::sample_points(vocab * dim, o.max_points);
    token_err = px::test::compare("token", dtoken,
                                  px::test::numeric_grad(loss, emb.token().value().data(), at_token, o.eps), at_token, o);
    const auto at_position = px::test::sample_points(max_seq * dim, o.max_points);
    position_err = px::test::compare("position", dposition,
                                     px::test::numeric_grad(loss, emb.position().value().data(), at_position, o.eps),
                                     at_position, o);
  });
  std::vector<double> want_token(static_cast<std::size_t>(vocab * dim));
  std::vector<double> want_position(static_cast<std::size_t>(max_seq * dim));
  for (i64 t = 0; t < nt; ++t)
    for (i64 b = 0; b < nb; ++b)
      for (i64 j = 0; j < dim; ++j) {
        const double g = w[static_cast<std::size_t>((t * nb + b) * dim + j)];
        want_token[static_cast<std::size_t>(ids[static_cast<std::size_t>(t * nb + b)] * dim + j)] += g;
        want_position[static_cast<std::size_t>(t * dim + j)] += g;
      }
  for (std::size_t i = 0; i < want_token.size(); ++i) {
    CHECK(dtoken[i] == Approx(want_token[i]).margin(1e-6));
    CHECK(dtoken_twice[i] == Approx(2 * want_token[i]).margin(1e-6));
  }
  for (std::size_t i = 0; i < want_position.size(); ++i) CHECK(dposition[i] == Approx(want_position[i]).margin(1e-6));
  // Id 6 never occurs and positions >= T are unused: their rows stay zero.
  for (i64 j = 0; j < dim; ++j) {
    CHECK(dtoken[static_cast<std::size_t>(6 * dim + j)] == 0.f);
    CHECK(dposition[static_cast<std::size_t>((max_seq - 1) * dim + j)] == 0.f);
  }
  INFO(token_err.str() << "; " << position_err.str());
  CHECK(token_err.ok());
  CHECK(position_err.ok());
}

TEST_CASE("Embedding in bf16 is within 1e-2 of fp32", "[nn_ops][embedding][bf16]") {
  const auto w = px::test::rounded<px::bf16>(px::test::random_values(nt * nb * dim, 12));
  std::vector<float> y32, y16, g32, g16, p32, p16;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    const auto run = [&]<class T>(T, std::vector<float>& y, std::vector<float>& dtoken, std::vector<float>& dposition) {
      Emb<T> emb(rank, vocab, max_seq, dim, {.init_std = 1.f, .seed = 4});
      const auto dy = px::test::stored<T>(w);
      typename Emb<T>::Ctx ctx;
      auto out = emb.forward(ctx, ids_view);
      emb.backward_input(ctx, HostView<T>(dy.data(), out.shape()));
      emb.backward_weight(ctx);
      y = px::test::floats(out.cview());
      dtoken = px::test::floats(HostView<T>(emb.token().grad()));
      dposition = px::test::floats(HostView<T>(emb.position().grad()));
    };
    run(float{}, y32, g32, p32);
    run(px::bf16{}, y16, g16, p16);
  });
  CHECK(px::test::relative_diff(y16, y32) < 1e-2);
  CHECK(px::test::relative_diff(g16, g32) < 1e-2);
  CHECK(px::test::relative_diff(p16, p32) < 1e-2);
}

TEST_CASE("Embedding frees the ids and dy once backward_weight is done", "[nn_ops][embedding][memory]") {
  std::int64_t after_forward = -1, after_backward = -1, after_weight = -1, workspace = -1;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Emb<float> emb(rank, vocab, max_seq, dim);
    Emb<float>::Ctx ctx;
    auto y = emb.forward(ctx, ids_view);
    after_forward = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    emb.backward_input(ctx, y.cview());
    y.reset();
    after_backward = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    emb.backward_weight(ctx);
    after_weight = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    workspace = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::workspace));
  });
  CHECK(workspace == 0);
  CHECK(after_forward == nt * nb * 4 + nt * nb * dim * 4);  // saved ids, and y
  CHECK(after_backward == nt * nb * 4 + nt * nb * dim * 4);  // ids and dy
  CHECK(after_weight == 0);
}

TEST_CASE("Embedding rejects bad ids, long sequences, bad shapes and passes out of order",
          "[nn_ops][embedding][errors]") {
  std::vector<std::string> msgs;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    msgs.push_back(error_of([&] { Emb<float>(rank, vocab, 0, dim, {.name = "wte"}); }));
    Emb<float> emb(rank, vocab, max_seq, dim, {.name = "wte"});
    std::vector<i32> long_ids(static_cast<std::size_t>((max_seq + 1) * 2), 0), bad_ids = ids;
    bad_ids[4] = vocab;
    std::vector<float> dy(static_cast<std::size_t>(nt * nb * dim));
    Emb<float>::Ctx c1, c2, c3, c4, ok;
    msgs.push_back(error_of([&] { (void)emb.forward(c1, HostView<i32>(long_ids.data(), Shape{max_seq + 1, 2})); }));
    msgs.push_back(error_of([&] { (void)emb.forward(c2, HostView<i32>(bad_ids.data(), Shape{nt, nb})); }));
    msgs.push_back(error_of([&] { (void)emb.forward(c3, HostView<i32>(ids.data(), Shape{nt * nb})); }));
    msgs.push_back(error_of([&] { emb.backward_input(c4, HostView<float>(dy.data(), Shape{nt, nb, dim})); }));
    msgs.push_back(error_of([&] { emb.backward_weight(c4); }));
    (void)emb.forward(ok, ids_view);
    msgs.push_back(error_of([&] { emb.backward_input(ok, HostView<float>(dy.data(), Shape{nb, nt, dim})); }));
    msgs.push_back(error_of([&] { (void)emb.forward(ok, ids_view); }));
  });
  REQUIRE(msgs.size() == 8);
  CHECK_THAT(msgs[0], Catch::Contains("Embedding 'wte': vocab 7, max_seq 0 and dim 5 must all be positive"));
  CHECK_THAT(msgs[1], Catch::Contains("Embedding 'wte': sequence length 7 exceeds max_seq 6"));
  CHECK_THAT(msgs[2], Catch::Contains("embedding_forward: id 7 at position 4 is outside [0, 7)"));
  CHECK_THAT(msgs[3], Catch::Contains("Embedding 'wte': ids [12] are not [T, B]"));
  CHECK_THAT(msgs[4], Catch::Contains("backward_input called on a context whose forward has not run"));
  CHECK_THAT(msgs[5], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[6], Catch::Contains("backward_input got dy [3, 4, 5], the forward's output was [4, 3, 5]"));
  CHECK_THAT(msgs[7], Catch::Contains("forward already ran"));
}

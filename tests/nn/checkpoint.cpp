// Checkpoint: bitwise the same results as the plain block, only the input kept after forward, several
// microbatches in flight, enabling and disabling, errors.
#include <catch2/catch.hpp>

#include <cstdint>

#include <parallax/comm/launch.hpp>
#include <parallax/nn/checkpoint.hpp>
#include <parallax/nn/gelu.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace px = parallax;
using Backend = px::host::Backend;
using px::test::error_of;
using px::test::random_values;
using CView = px::View<const float, px::host::Memory>;

namespace {

using LN = px::nn::LayerNorm<Backend, float>;
using Fc = px::nn::Linear<Backend, float>;
using Act = px::nn::GELU<Backend, float>;
using Mlp = px::nn::Sequential<LN, Fc, Act, Fc>;
using Block = px::nn::Residual<Mlp>;
using Checkpointed = px::nn::Checkpoint<Block>;

constexpr std::int64_t T = 4, Bsz = 3, D = 8, F = 32, N = T * Bsz;
const px::Shape shape{T, Bsz, D};

// Bytes of activations the plain block keeps per microbatch after forward: LayerNorm's x, mean and rstd,
// the first Linear's x [N, D], GELU's x [N, F] and the second Linear's x [N, F].
constexpr std::int64_t plain_saved = (N * D + 2 * N + N * D + N * F + N * F) * 4;
// The checkpointed block keeps its input only.
constexpr std::int64_t checkpoint_saved = N * D * 4;

// Both blocks are built from the same names and seeds, so their parameters start equal.
Mlp make_mlp(px::Rank<Backend>& rank) {
  return Mlp("mlp", LN(rank, D, {.name = "ln"}), Fc(rank, D, F, {.init_std = 0.3f, .seed = 9, .name = "fc1"}),
             Act(rank, "act"), Fc(rank, F, D, {.init_std = 0.3f, .seed = 9, .name = "fc2"}));
}

std::int64_t live_activations(px::Rank<Backend>& rank) {
  return static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
}

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> out;
  for (float f : v) out.push_back(px::test::bits_of(f));
  return out;
}

// What one microbatch produced, as bit patterns, and the activation bytes live right after its forward
// (its output released).
struct Result {
  std::vector<std::uint32_t> y, dx;
  std::int64_t saved = -1;
};

// The parameters' gradients, concatenated in order, as bit patterns.
std::vector<std::uint32_t> grad_bits(auto& m) {
  std::vector<float> g;
  for (auto* p : m.parameters()) {
    const auto v = px::to_vector(p->grad());
    g.insert(g.end(), v.begin(), v.end());
  }
  return bits(g);
}

// One microbatch through `m`: forward, then backward_input and backward_weight.
template <class M>
Result run(px::Rank<Backend>& rank, M& m, const std::vector<float>& x, const std::vector<float>& dy) {
  typename M::Ctx ctx;
  Result r;
  auto y = m.forward(ctx, CView(x.data(), shape));
  r.y = bits(px::to_vector(y.cview()));
  y.reset();
  r.saved = live_activations(rank);
  r.dx = bits(px::to_vector(m.backward_input(ctx, CView(dy.data(), shape)).cview()));
  m.backward_weight(ctx);
  return r;
}

}  // namespace

TEST_CASE("Checkpoint gives bitwise the plain block's results and keeps only its input",
          "[nn][checkpoint][memory]") {
  const auto x = random_values(shape.numel(), 1), dy = random_values(shape.numel(), 2);
  Result plain, ck;
  std::vector<std::uint32_t> plain_grads, ck_grads;
  std::int64_t plain_after = -1, ck_after = -1;
  bool enabled_by_default = false;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    Block block(make_mlp(rank));
    plain = run(rank, block, x, dy);
    plain_after = live_activations(rank);
    plain_grads = grad_bits(block);

    Checkpointed cblock(make_mlp(rank));
    enabled_by_default = cblock.enabled();
    ck = run(rank, cblock, x, dy);
    ck_after = live_activations(rank);
    ck_grads = grad_bits(cblock);
  });
  CHECK(enabled_by_default);
  CHECK(plain.saved == plain_saved);
  CHECK(ck.saved == checkpoint_saved);
  CHECK(ck.y == plain.y);
  CHECK(ck.dx == plain.dx);
  CHECK(ck_grads == plain_grads);
  CHECK(plain_after == 0);
  CHECK(ck_after == 0);
}

TEST_CASE("Checkpoint runs two microbatches in flight independently", "[nn][checkpoint]") {
  const auto xa = random_values(shape.numel(), 3), dya = random_values(shape.numel(), 4);
  const auto xb = random_values(shape.numel(), 5), dyb = random_values(shape.numel(), 6);
  Result plain_a, plain_b, ck_a, ck_b;
  std::vector<std::uint32_t> plain_grads, ck_grads;
  std::int64_t both_in_flight = -1, after = -1;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    Block block(make_mlp(rank));
    plain_a = run(rank, block, xa, dya);
    plain_b = run(rank, block, xb, dyb);
    plain_grads = grad_bits(block);

    // Both forwards first, backwards in the other order; backward_weight in the plain run's order.
    Checkpointed cblock(make_mlp(rank));
    Checkpointed::Ctx a, b;
    ck_a.y = bits(px::to_vector(cblock.forward(a, CView(xa.data(), shape)).cview()));
    ck_b.y = bits(px::to_vector(cblock.forward(b, CView(xb.data(), shape)).cview()));
    both_in_flight = live_activations(rank);
    ck_b.dx = bits(px::to_vector(cblock.backward_input(b, CView(dyb.data(), shape)).cview()));
    ck_a.dx = bits(px::to_vector(cblock.backward_input(a, CView(dya.data(), shape)).cview()));
    cblock.backward_weight(a);
    cblock.backward_weight(b);
    ck_grads = grad_bits(cblock);
    after = live_activations(rank);
  });
  CHECK(both_in_flight == 2 * checkpoint_saved);
  CHECK(ck_a.y == plain_a.y);
  CHECK(ck_b.y == plain_b.y);
  CHECK(ck_a.dx == plain_a.dx);
  CHECK(ck_b.dx == plain_b.dx);
  CHECK(ck_grads == plain_grads);
  CHECK(after == 0);
}

TEST_CASE("Checkpoint disabled is transparent, and a context keeps the mode its forward ran in", "[nn][checkpoint]") {
  const auto x = random_values(shape.numel(), 7), dy = random_values(shape.numel(), 8);
  Result plain, off, toggled;
  std::vector<std::uint32_t> plain_grads, off_grads, toggled_grads;
  std::int64_t toggled_saved = -1;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    Block block(make_mlp(rank));
    plain = run(rank, block, x, dy);
    plain_grads = grad_bits(block);

    Checkpointed cblock(make_mlp(rank));
    cblock.set_enabled(false);
    off = run(rank, cblock, x, dy);
    off_grads = grad_bits(cblock);
    for (auto* p : cblock.parameters()) p->zero_grad();

    // Checkpointed forward, then disabled before the backward: the backward still recomputes.
    cblock.set_enabled(true);
    Checkpointed::Ctx ctx;
    toggled.y = bits(px::to_vector(cblock.forward(ctx, CView(x.data(), shape)).cview()));
    toggled_saved = live_activations(rank);
    cblock.set_enabled(false);
    toggled.dx = bits(px::to_vector(cblock.backward_input(ctx, CView(dy.data(), shape)).cview()));
    cblock.backward_weight(ctx);
    toggled_grads = grad_bits(cblock);
  });
  CHECK(off.saved == plain_saved);
  CHECK(off.y == plain.y);
  CHECK(off.dx == plain.dx);
  CHECK(off_grads == plain_grads);
  CHECK(toggled_saved == checkpoint_saved);
  CHECK(toggled.y == plain.y);
  CHECK(toggled.dx == plain.dx);
  CHECK(toggled_grads == plain_grads);
}

TEST_CASE("Checkpoint gradients match finite differences", "[nn][checkpoint][gradcheck]") {
  std::vector<px::test::GradError> errs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    px::nn::Checkpoint<Mlp> mlp(make_mlp(rank));
    errs = px::test::gradcheck(mlp, random_values(2 * 2 * D, 10), px::Shape{2, 2, D});
  });
  REQUIRE(errs.size() == 7);  // dx and 6 parameters
  for (const auto& e : errs) {
    INFO(e.str());
    CHECK(e.ok());
  }
}

TEST_CASE("Checkpoint rejects passes out of order", "[nn][checkpoint][errors]") {
  std::vector<std::string> msgs;
  px::launch<Backend>(1, [&](px::Rank<Backend>& rank) {
    const auto x = random_values(shape.numel(), 1);
    Checkpointed cblock(make_mlp(rank));
    Checkpointed::Ctx ctx;
    msgs.push_back(error_of([&] { (void)cblock.backward_input(ctx, CView(x.data(), shape)); }));
    msgs.push_back(error_of([&] { cblock.backward_weight(ctx); }));
    (void)cblock.forward(ctx, CView(x.data(), shape));
    msgs.push_back(error_of([&] { (void)cblock.forward(ctx, CView(x.data(), shape)); }));
    msgs.push_back(error_of([&] { cblock.backward_weight(ctx); }));
  });
  REQUIRE(msgs.size() == 4);
  CHECK_THAT(msgs[0], Catch::Contains("Checkpoint 'mlp': backward_input called on a context whose forward has not run"));
  CHECK_THAT(msgs[1], Catch::Contains("Checkpoint 'mlp': backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[2], Catch::Contains("Checkpoint 'mlp': forward called on a context whose forward already ran"));
  CHECK_THAT(msgs[3], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
}

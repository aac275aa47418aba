// CrossEntropyLoss: sum, count and mean against a double loop with ignored tokens, dlogits against central
// differences, stability for large logits, bf16 against fp32, memory, errors.
#include <catch2/catch.hpp>

#include <parallax/nn/cross_entropy.hpp>

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
using Loss = px::nn::CrossEntropyLoss<HostBackend, T>;

static_assert(px::nn::Module<Loss<float>>);
static_assert(!px::nn::Layer<Loss<float>>);  // its output is a loss

namespace {

constexpr i64 nt = 3, nb = 2, vocab = 6;
const Shape logits_shape{nt, nb, vocab};
// Targets [T, B]: two ignored tokens (-100), the others spread over the vocabulary.
const std::vector<i32> targets{0, 5, -100, 2, 3, -100};
const HostView<i32> targets_view(targets.data(), Shape{nt, nb});

// Per-token losses in double (0 for ignored tokens).
std::vector<double> reference(const std::vector<float>& z, const std::vector<i32>& y, i32 ignore) {
  std::vector<double> out;
  for (std::size_t n = 0; n < y.size(); ++n) {
    if (y[n] == ignore) {
      out.push_back(0);
      continue;
    }
    double m = -1e300, s = 0;
    for (i64 j = 0; j < vocab; ++j) m = std::max(m, double(z[n * vocab + static_cast<std::size_t>(j)]));
    for (i64 j = 0; j < vocab; ++j) s += std::exp(double(z[n * vocab + static_cast<std::size_t>(j)]) - m);
    out.push_back(m + std::log(s) - double(z[n * vocab + static_cast<std::size_t>(y[n])]));
  }
  return out;
}

}  // namespace

TEST_CASE("CrossEntropyLoss sum, count and mean match a double loop; ignored tokens do not count",
          "[nn_ops][cross_entropy]") {
  const auto z = px::test::random_values(logits_shape.numel(), 1, 4.f);
  px::nn::LossValue got;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Loss<float> ce(rank);
    Loss<float>::Ctx ctx;
    got = ce.forward(ctx, HostView<float>(z.data(), logits_shape), targets_view);
  });
  const auto per_token = reference(z, targets, -100);
  double sum = 0;
  for (double l : per_token) sum += l;
  CHECK(got.count == 4);
  CHECK(got.sum == Approx(sum).epsilon(1e-6));
  CHECK(got.mean() == Approx(sum / 4).epsilon(1e-6));
}

TEST_CASE("CrossEntropyLoss dlogits is the gradient of scale * sum, zero for ignored tokens",
          "[nn_ops][cross_entropy][gradcheck]") {
  auto z = px::test::random_values(logits_shape.numel(), 2, 3.f);
  constexpr float scale = 0.25f;
  std::vector<float> dz;
  Shape dz_shape;
  px::test::GradError err;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Loss<float> ce(rank, {.name = "lm_loss"});
    Loss<float>::Ctx ctx;
    (void)ce.forward(ctx, HostView<float>(z.data(), logits_shape), targets_view);
    auto d = ce.backward_input(ctx, scale);
    ce.backward_weight(ctx);
    dz_shape = d.shape();
    dz = px::test::floats(d.cview());
    const auto loss = [&] {
      Loss<float>::Ctx c;
      return scale * ce.forward(c, HostView<float>(z.data(), logits_shape), targets_view).sum;
    };
    const px::test::GradCheckOptions o;
    const auto at = px::test::sample_points(logits_shape.numel(), 100);
    err = px::test::compare("dlogits", dz, px::test::numeric_grad(loss, z.data(), at, o.eps), at, o);
  });
  CHECK(dz_shape == logits_shape);
  INFO(err.str());
  CHECK(err.ok());
  bool ignored_zero = true;
  for (std::size_t n = 0; n < targets.size(); ++n)
    for (i64 j = 0; j < vocab; ++j)
      if (targets[n] == -100) ignored_zero = ignored_zero && dz[n * vocab + static_cast<std::size_t>(j)] == 0.f;
  CHECK(ignored_zero);
}

TEST_CASE("CrossEntropyLoss honours a custom ignore_index and is stable for large logits", "[nn_ops][cross_entropy]") {
  // Logits around 1e4 (exp would overflow without the max shift); ignore_index 0 drops the first token.
  auto z = px::test::random_values(logits_shape.numel(), 3);
  const auto small = z;
  for (float& v : z) v += 1e4f;
  const std::vector<i32> y{0, 1, 2, 3, 4, 5};
  px::nn::LossValue big_loss, small_loss;
  bool finite = true;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Loss<float> ce(rank, {.ignore_index = 0});
    Loss<float>::Ctx c1, c2;
    big_loss = ce.forward(c1, HostView<float>(z.data(), logits_shape), HostView<i32>(y.data(), Shape{nt, nb}));
    const auto d = ce.backward_input(c1, 1.f);
    for (i64 i = 0; i < d.numel(); ++i) finite = finite && std::isfinite(d.data()[i]);
    small_loss = ce.forward(c2, HostView<float>(small.data(), logits_shape), HostView<i32>(y.data(), Shape{nt, nb}));
  });
  const auto per_token = reference(small, y, 0);
  double sum = 0;
  for (double l : per_token) sum += l;
  CHECK(big_loss.count == 5);
  CHECK(std::isfinite(big_loss.sum));
  CHECK(finite);
  CHECK(small_loss.sum == Approx(sum).epsilon(1e-5));
  CHECK(big_loss.sum == Approx(sum).epsilon(1e-2));  // fp32 spacing at 1e4 is ~1e-3
}

TEST_CASE("CrossEntropyLoss in bf16 is within 1e-2 of fp32", "[nn_ops][cross_entropy][bf16]") {
  const auto z = px::test::rounded<px::bf16>(px::test::random_values(logits_shape.numel(), 4, 4.f));
  px::nn::LossValue l32, l16;
  std::vector<float> d32, d16;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    const auto run = [&]<class T>(T, px::nn::LossValue& l, std::vector<float>& dz) {
      Loss<T> ce(rank);
      const auto x = px::test::stored<T>(z);
      typename Loss<T>::Ctx ctx;
      l = ce.forward(ctx, HostView<T>(x.data(), logits_shape), targets_view);
      dz = px::test::floats(ce.backward_input(ctx, 1.f / float(l.count)).cview());
      ce.backward_weight(ctx);
    };
    run(float{}, l32, d32);
    run(px::bf16{}, l16, d16);
  });
  CHECK(l16.count == l32.count);
  CHECK(std::abs(l16.sum - l32.sum) < 1e-2 * std::abs(l32.sum));
  CHECK(px::test::relative_diff(d16, d32) < 1e-2);
}

TEST_CASE("CrossEntropyLoss frees what it saved", "[nn_ops][cross_entropy][memory]") {
  std::int64_t after_forward = -1, after_backward = -1, after_weight = -1, workspace = -1;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Loss<float> ce(rank);
    const auto z = px::test::random_values(logits_shape.numel(), 5);
    Loss<float>::Ctx ctx;
    (void)ce.forward(ctx, HostView<float>(z.data(), logits_shape), targets_view);
    after_forward = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    auto dz = ce.backward_input(ctx, 1.f);
    after_backward = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    ce.backward_weight(ctx);
    dz.reset();
    after_weight = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::activations));
    workspace = static_cast<std::int64_t>(rank.memory().live(px::MemoryCategory::workspace));
  });
  const i64 rows = nt * nb;
  CHECK(after_forward == rows * vocab * 4 + rows * 4 + rows * 4);  // logits, targets, lse
  CHECK(after_backward == rows * vocab * 4);                       // dlogits, written over the saved logits
  CHECK(after_weight == 0);
  CHECK(workspace == 0);
}

TEST_CASE("CrossEntropyLoss rejects bad targets, mismatched shapes and passes out of order",
          "[nn_ops][cross_entropy][errors]") {
  std::vector<std::string> msgs;
  px::test::on_one_rank([&](px::Rank<HostBackend>& rank) {
    Loss<float> ce(rank, {.name = "lm"});
    const auto z = px::test::random_values(logits_shape.numel(), 6);
    const HostView<float> logits(z.data(), logits_shape);
    std::vector<i32> too_big = targets, negative = targets;
    too_big[3] = vocab;
    negative[1] = -1;
    Loss<float>::Ctx c1, c2, c3, c4, c5, ok;
    msgs.push_back(error_of([&] { (void)ce.forward(c1, logits, HostView<i32>(too_big.data(), Shape{nt, nb})); }));
    msgs.push_back(error_of([&] { (void)ce.forward(c2, logits, HostView<i32>(negative.data(), Shape{nt, nb})); }));
    msgs.push_back(error_of([&] { (void)ce.forward(c3, logits, HostView<i32>(targets.data(), Shape{nb, nt})); }));
    msgs.push_back(error_of([&] { (void)ce.forward(c4, logits, HostView<i32>(targets.data(), Shape{nt, nb, 1})); }));
    msgs.push_back(error_of([&] { (void)ce.backward_input(c5, 1.f); }));
    msgs.push_back(error_of([&] { ce.backward_weight(c5); }));
    (void)ce.forward(ok, logits, targets_view);
    msgs.push_back(error_of([&] { (void)ce.forward(ok, logits, targets_view); }));
  });
  REQUIRE(msgs.size() == 7);
  CHECK_THAT(msgs[0],
             Catch::Contains("cross_entropy_forward: target 6 at row 3 is outside [0, 6) and is not ignore_index -100"));
  CHECK_THAT(msgs[1], Catch::Contains("target -1 at row 1 is outside [0, 6)"));
  CHECK_THAT(msgs[2],
             Catch::Contains("CrossEntropyLoss 'lm': targets [2, 3] are not the leading shape of logits [3, 2, 6]"));
  CHECK_THAT(msgs[3], Catch::Contains("targets [3, 2, 1] are not the leading shape of logits [3, 2, 6]"));
  CHECK_THAT(msgs[4],
             Catch::Contains("CrossEntropyLoss 'lm': backward_input called on a context whose forward has not run"));
  CHECK_THAT(msgs[5], Catch::Contains("backward_weight called on a context whose backward_input has not run"));
  CHECK_THAT(msgs[6], Catch::Contains("forward already ran"));
}

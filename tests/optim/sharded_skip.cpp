// Overflow: a step with an infinite gradient on one rank is skipped on every rank, with the same pattern
// and the same weights on every mesh; dynamic loss scaling backs off, counts the skips and trains on.
#include "sharded.hpp"

namespace px = parallax;
using namespace parallax::test::sharded;

TEMPLATE_TEST_CASE("An injected inf skips the step on every rank of every mesh", "[optim][sharded][skip]", px::Zero<0>,
                   px::Zero<1>, px::Zero<2>, px::Zero<3>) {
  const px::optim::AdamW::Hyper hyper{.lr = 1e-2f};
  const std::pair poison{2, 1};  // step 2, global microbatch 1: on rank 0 of 1 or 2 DP ranks, rank 1 of 4
  const auto ref = reference<px::optim::AdamW, float>({.dp = 1, .accumulation = 4, .poison = poison}, hyper);
  const std::vector<bool> pattern{false, false, true, false, false};
  REQUIRE(ref.skipped == pattern);
  for (int dp : {1, 2, 4}) {
    INFO("DP " << dp);
    const auto got =
        train<px::optim::AdamW, TestType, float>({.dp = dp, .accumulation = 4 / dp, .poison = poison}, hyper);
    for (const auto& o : got) {
      CHECK(o.skipped == pattern);
      CHECK_FALSE(std::isfinite(o.norms[2]));
    }
    check_values(got, ref, 1e-6);
  }
}

TEST_CASE("Dynamic loss scaling skips overflowing fp16 steps and backs off", "[optim][sharded][skip][fp16]") {
  struct Trace {
    std::vector<float> scales;
    std::vector<bool> skipped;
    std::int64_t counted = 0, steps = 0;
    std::vector<std::vector<float>> values;
  };
  auto run = [](int dp) {
    std::vector<Trace> traces(static_cast<std::size_t>(dp));
    px::launch<B>(dp, [&](px::Rank<B>& rank) {
      Mesh mesh(rank);
      auto model = make_mlp<px::fp16>(rank);
      px::optim::ShardedOptimizer<px::optim::AdamW, px::Zero<1>, Mesh, B> opt(
          mesh, model.parameters(), {.lr = 1e-2f},
          {.accumulation = 4 / dp,
           .bucket_bytes = bucket_bytes<px::fp16>,
           .loss_scaler = px::optim::LossScalerOptions{.initial_scale = 0x1p24f, .hysteresis = 1}});
      auto& t = traces[static_cast<std::size_t>(rank.id())];
      for (int s = 0; s < 10; ++s) {
        t.scales.push_back(opt.loss_scale());
        for (int k = 0; k < 4 / dp; ++k)
          run_microbatch(model, s, mesh.dp_rank() * (4 / dp) + k, 4, false, opt.loss_scale());
        t.skipped.push_back(opt.step().skipped);
      }
      t.counted = opt.skipped_steps();
      t.steps = opt.steps();
      for (auto* p : model.parameters()) t.values.push_back(floats(opt.value(*p)));
    });
    return traces;
  };
  const auto one = run(1), two = run(2);
  const auto& t = one[0];
  const auto skipped = static_cast<std::int64_t>(std::count(t.skipped.begin(), t.skipped.end(), true));
  CHECK(skipped >= 2);
  CHECK(t.skipped.front());
  CHECK_FALSE(t.skipped.back());
  CHECK(t.counted == skipped);
  CHECK(t.steps == 10 - skipped);
  for (std::size_t s = 1; s < t.scales.size(); ++s)
    CHECK(t.scales[s] == (t.skipped[s - 1] ? t.scales[s - 1] / 2 : t.scales[s - 1]));
  for (const auto& other : two) {
    CHECK(other.skipped == t.skipped);
    CHECK(other.scales == t.scales);
    for (std::size_t i = 0; i < t.values.size(); ++i) CHECK(relative_error(other.values[i], t.values[i]) <= 1e-2);
  }
}

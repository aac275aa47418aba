// FlatParameters: replicas start from rank 0's values; ZeRO-3 gathers each bucket around its use, prefetches
// the next one from the second pass on, keeps at most two gathered, frees them; bad use.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include <parallax/comm/launch.hpp>
#include <parallax/dp/flat_parameters.hpp>
#include <parallax/dp/gradient_buckets.hpp>
#include <parallax/nn/gelu.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/sequential.hpp>

#include "../support/gradcheck.hpp"

namespace px = parallax;
using B = px::host::Backend;
using Mem = px::host::Memory;
using Fc = px::nn::Linear<B, float>;
using Mlp = px::nn::Sequential<Fc, px::nn::GELU<B, float>, Fc, px::nn::GELU<B, float>, Fc>;

namespace {

// fc1 5 -> 6 (36), fc2 6 -> 6 (42), fc3 6 -> 2 (14): with 42-float buckets one bucket per layer.
constexpr std::size_t bucket_bytes = 42 * sizeof(float);

Mlp make(px::Rank<B>& rank) {
  return Mlp("mlp", Fc(rank, 5, 6, {.init_std = 0.5f, .name = "fc1"}), px::nn::GELU<B, float>(rank),
             Fc(rank, 6, 6, {.init_std = 0.5f, .name = "fc2"}), px::nn::GELU<B, float>(rank),
             Fc(rank, 6, 2, {.init_std = 0.5f, .name = "fc3"}));
}

//! Forward and backward of one microbatch; returns the output.
std::vector<float> step(Mlp& mlp) {
  const auto x = px::test::random_values(3 * 5, 7);
  Mlp::Ctx ctx;
  auto y = mlp.forward(ctx, px::View<const float, Mem>(x.data(), px::Shape{3, 5}));
  auto out = px::to_vector(y.cview());
  (void)mlp.backward_input(ctx, y.cview());
  mlp.backward_weight(ctx);
  return out;
}

}  // namespace

TEST_CASE("ZeRO-3 parameters compute what whole parameters do, gathered one bucket ahead", "[dp][zero3]") {
  std::vector<float> want;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    auto mlp = make(rank);
    want = step(mlp);
  });
  struct Seen {
    std::vector<std::vector<float>> outputs;
    std::size_t gathered_peak = 0, gathered_after = 0, params_live = 0;
    px::dp::GatherStats first, second;
    std::int64_t largest = 0, shard = 0;
    std::vector<float> value;
  };
  std::vector<Seen> seen(3);
  px::launch<B>(3, [&](px::Rank<B>& rank) {
    auto mlp = make(rank);
    const auto params = mlp.parameters();
    px::dp::GradientBuckets<B, float> grads(rank, rank.world(), params, {.bucket_bytes = bucket_bytes, .shard = true});
    px::dp::FlatParameters<B, float> values(rank, rank.world(), params, grads.layout(), /*sharded=*/true);
    auto& s = seen[static_cast<std::size_t>(rank.id())];
    rank.memory().reset_peaks();
    for (int pass = 0; pass < 2; ++pass) {
      s.outputs.push_back(step(mlp));
      grads.finish();
      values.release();
      grads.reset();
      (pass == 0 ? s.first : s.second) = values.stats();
    }
    s.gathered_peak = rank.memory().peak(px::MemoryCategory::gathered_parameters);
    s.gathered_after = rank.memory().live(px::MemoryCategory::gathered_parameters);
    s.params_live = rank.memory().live(px::MemoryCategory::parameters);
    for (const auto& k : grads.layout().buckets()) s.largest = std::max(s.largest, k.padded);
    s.shard = grads.layout().shard_numel();
    s.value = values.gather(*params[2]);  // fc2.weight, collective
  });
  std::vector<float> fc2;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    auto mlp = make(rank);
    fc2 = px::to_vector(px::View<const float, Mem>(mlp.get<2>().weight().value()));
  });
  for (const auto& s : seen) {
    for (const auto& y : s.outputs) CHECK(y == want);
    CHECK(s.params_live == static_cast<std::size_t>(s.shard) * sizeof(float));
    CHECK(s.gathered_after == 0);
    CHECK(s.gathered_peak <= 2 * static_cast<std::size_t>(s.largest) * sizeof(float));
    // Forward fc1 fc2 fc3, backward fc3 fc2 fc1 (fc3's bucket stays gathered): 5 gathers a pass. The second
    // pass prefetches: each bucket after the first is found gathered (or in flight) when its use begins.
    CHECK(s.first.gathers == 5);
    CHECK(s.first.prefetched == 0);
    CHECK(s.second.gathers - s.first.gathers == 5);
    CHECK(s.second.prefetched - s.first.prefetched == 4);
    CHECK(s.value == fc2);
  }
}

TEST_CASE("Replicated FlatParameters start every replica from rank 0's values", "[dp][broadcast]") {
  std::vector<std::vector<float>> got(2);
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    auto mlp = make(rank);
    const auto params = mlp.parameters();
    if (rank.id() == 1) params[0]->value().data()[0] = 42.f;  // a replica that drifted
    px::dp::GradientBuckets<B, float> grads(rank, rank.world(), params, {.bucket_bytes = bucket_bytes});
    px::dp::FlatParameters<B, float> values(rank, rank.world(), params, grads.layout(), /*sharded=*/false);
    got[static_cast<std::size_t>(rank.id())] = px::to_vector(px::View<const float, Mem>(params[0]->value()));
  });
  CHECK(got[1] == got[0]);
  CHECK(got[1][0] != 42.f);
}

TEST_CASE("FlatParameters reject a release during a read and unbalanced reads", "[dp][zero3][errors]") {
  std::vector<std::string> msgs;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Fc fc(rank, 4, 2, {.name = "fc"});
    px::dp::GradientBuckets<B, float> grads(rank, rank.world(), fc.parameters(), {.shard = true});
    px::dp::FlatParameters<B, float> values(rank, rank.world(), fc.parameters(), grads.layout(), true);
    auto msg = [&](auto&& f) {
      try {
        f();
        msgs.push_back("(no error)");
      } catch (const px::Error& e) {
        msgs.push_back(e.what());
      }
    };
    (void)fc.weight().acquire_value();
    msg([&] { values.release(); });
    fc.weight().release_value();
    msg([&] { fc.weight().release_value(); });
    msg([&] { px::dp::FlatParameters<B, float>(rank, rank.world(), fc.parameters(), grads.layout(), true); });
  });
  REQUIRE(msgs.size() == 3);
  CHECK_THAT(msgs[0], Catch::Contains("bucket 0 is released while 1 read(s) of its parameters are open"));
  CHECK_THAT(msgs[1], Catch::Contains("release_value of 'fc.weight' without a matching acquire_value"));
  CHECK_THAT(msgs[2], Catch::Contains("parameter 'fc.weight' already has value hooks"));
}

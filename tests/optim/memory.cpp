// ZeRO memory: each rank's allocator figures for bf16 parameters and gradients with fp32 Adam state match
// 16P, 4P + 12P/N, 2P + 14P/N and 16P/N (on the padded P), the padding is reported, transient buffers are
// their own categories and bounded.
#include "sharded.hpp"

namespace px = parallax;
using namespace parallax::test::sharded;
using px::MemoryCategory;

namespace {

//! Bytes per rank the ZeRO paper gives for `p` parameters on `n` ranks (2-byte parameters and gradients,
//! 12 bytes of fp32 master weight and Adam moments per parameter).
double formula(int stage, double p, int n) {
  switch (stage) {
    case 0:
      return 16 * p;
    case 1:
      return 4 * p + 12 * p / n;
    case 2:
      return 2 * p + 14 * p / n;
    default:
      return 16 * p / n;
  }
}

struct Figures {
  std::size_t parameters = 0, gradients = 0, optimizer = 0, communication = 0, gathered = 0, activations = 0;
  std::size_t communication_peak = 0, gathered_peak = 0;
  px::optim::ShardedFootprint footprint;
};

}  // namespace

TEMPLATE_TEST_CASE("ZeRO memory per rank matches the formulas (bf16 + Adam)", "[optim][sharded][memory]", px::Zero<0>,
                   px::Zero<1>, px::Zero<2>, px::Zero<3>) {
  constexpr int stage = TestType::stage;
  for (int n : {1, 2, 3, 4}) {
    INFO("Zero<" << stage << "> on " << n << " ranks");
    Figures f;
    px::launch<B>(n, [&](px::Rank<B>& rank) {
      Mesh mesh(rank);
      auto model = make_mlp<px::bf16>(rank);
      px::optim::ShardedOptimizer<px::optim::Adam, TestType, Mesh, B> opt(mesh, model.parameters(), {.lr = 1e-3f},
                                                                          {.bucket_bytes = bucket_bytes<px::bf16>});
      rank.memory().reset_peaks();
      for (int s = 0; s < 2; ++s) {
        run_microbatch(model, s, mesh.dp_rank(), n);
        (void)opt.step();
      }
      if (rank.id() != n - 1) return;
      const auto& m = rank.memory();
      f = {m.live(MemoryCategory::parameters),
           m.live(MemoryCategory::gradients),
           m.live(MemoryCategory::optimizer),
           m.live(MemoryCategory::communication),
           m.live(MemoryCategory::gathered_parameters),
           m.live(MemoryCategory::activations),
           m.peak(MemoryCategory::communication),
           m.peak(MemoryCategory::gathered_parameters),
           opt.footprint()};
    });
    const auto padded = static_cast<std::size_t>(f.footprint.padded),
               shard = static_cast<std::size_t>(f.footprint.shard);
    CHECK(f.footprint.parameters == parameter_count);
    CHECK(f.footprint.padding == f.footprint.padded - parameter_count);
    CHECK(shard * static_cast<std::size_t>(n) == padded);
    CHECK(f.parameters == 2 * (stage == 3 ? shard : padded));
    CHECK(f.gradients == 2 * (stage >= 2 ? shard : padded));
    CHECK(f.optimizer == 12 * (stage >= 1 ? shard : padded));
    const std::size_t total = f.parameters + f.gradients + f.optimizer;
    CHECK(double(total) == formula(stage, double(padded), n));
    CHECK(double(total) >= formula(stage, double(parameter_count), n));
    CHECK(double(total) - formula(stage, double(parameter_count), n) <= 16.0 * double(f.footprint.padding));
    // Nothing transient survives a step; bucket buffers exist only when gradients are sharded, gathered
    // buckets only under ZeRO-3, two of the largest (36 elements) at most.
    CHECK(f.communication == 0);
    CHECK(f.gathered == 0);
    CHECK(f.activations == 0);
    CHECK((f.communication_peak > 0) == (stage >= 2));
    CHECK(f.communication_peak <= 2 * padded);
    CHECK((f.gathered_peak > 0) == (stage == 3));
    CHECK(f.gathered_peak <= 2 * 2 * 36);
  }
}

TEST_CASE("With fp32 parameters the master weights are the parameters", "[optim][sharded][memory]") {
  std::size_t optimizer = 0, parameters = 0;
  std::int64_t padded = 0;
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    auto model = make_mlp<float>(rank);
    px::optim::ShardedOptimizer<px::optim::AdamW, px::Zero<0>, Mesh, B> opt(mesh, model.parameters(), {},
                                                                            {.bucket_bytes = bucket_bytes<float>});
    if (rank.id() != 0) return;
    optimizer = rank.memory().live(MemoryCategory::optimizer);
    parameters = rank.memory().live(MemoryCategory::parameters);
    padded = opt.footprint().padded;
  });
  CHECK(parameters == 4 * static_cast<std::size_t>(padded));
  CHECK(optimizer == 8 * static_cast<std::size_t>(padded));  // m and v only: 4 + 4 + 8 = 16 bytes per parameter
}

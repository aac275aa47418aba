// GradientBuckets: the reduced gradients are the sum (or mean) over the replicas, replicated or sharded;
// buckets start reducing during backward, after the last microbatch only; accounting; bad use.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <parallax/comm/launch.hpp>
#include <parallax/dp/gradient_buckets.hpp>
#include <parallax/nn/linear.hpp>

#include "../support/gradcheck.hpp"
#include "../support/support.hpp"

namespace px = parallax;
using B = px::host::Backend;
using Mem = px::host::Memory;
using Fc = px::nn::Linear<B, float>;
using px::dp::BucketOptions;
using px::dp::GradientBuckets;

namespace {

// Two layers fc1 (5 -> 6) and fc2 (6 -> 3): 36 + 21 = 57 parameters; 40-float buckets: {fc1.*} and {fc2.*}.
constexpr std::size_t bucket_bytes = 40 * sizeof(float);

struct Net {
  Fc fc1, fc2;
  explicit Net(px::Rank<B>& rank)
      : fc1(rank, 5, 6, {.init_std = 0.5f, .name = "fc1"}), fc2(rank, 6, 3, {.init_std = 0.5f, .name = "fc2"}) {}
  px::nn::ParameterList<float, Mem> parameters() {
    auto p = fc1.parameters();
    px::nn::append(p, fc2.parameters());
    return p;
  }
  //! Forward and backward of microbatch `m`; `between` runs after fc2's backward_weight, before fc1's.
  template <class F>
  void run(int m, F&& between) {
    const auto x = px::test::random_values(4 * 5, 100 + static_cast<std::uint64_t>(m));
    const auto dy = px::test::random_values(4 * 3, 200 + static_cast<std::uint64_t>(m));
    Fc::Ctx c1, c2;
    auto h = fc1.forward(c1, px::View<const float, Mem>(x.data(), px::Shape{4, 5}));
    auto y = fc2.forward(c2, h.cview());
    auto dh = fc2.backward_input(c2, px::View<const float, Mem>(dy.data(), y.shape()));
    (void)fc1.backward_input(c1, dh.cview());
    fc2.backward_weight(c2);
    between();
    fc1.backward_weight(c1);
  }
  void run(int m) {
    run(m, [] {});
  }
};

//! The gradients of one rank that ran microbatches 0 .. n-1, flattened in parameter order.
std::vector<float> reference_grads(int n) {
  std::vector<float> g;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Net net(rank);
    for (int m = 0; m < n; ++m) net.run(m);
    for (auto* p : net.parameters()) {
      const auto v = px::to_vector(px::View<const float, Mem>(p->grad()));
      g.insert(g.end(), v.begin(), v.end());
    }
  });
  return g;
}

//! Each rank's reduced gradient of its slice (sharded) or of everything (replicated), by full-layout index.
struct Reduced {
  std::vector<std::vector<std::pair<std::int64_t, float>>> ranks;
};

Reduced reduce_over(int n, int accumulation, BucketOptions o) {
  Reduced out;
  out.ranks.resize(static_cast<std::size_t>(n));
  o.bucket_bytes = bucket_bytes;
  o.accumulation = accumulation;
  px::launch<B>(n, [&](px::Rank<B>& rank) {
    Net net(rank);
    GradientBuckets<B, float> buckets(rank, rank.world(), net.parameters(), o);
    for (int k = 0; k < accumulation; ++k) net.run(rank.id() * accumulation + k);
    buckets.finish();
    const auto& l = buckets.layout();
    auto& mine = out.ranks[static_cast<std::size_t>(rank.id())];
    for (std::size_t b = 0; b < l.buckets().size(); ++b) {
      const auto g = px::to_vector(px::View<const float, Mem>(buckets.reduced(b)));
      const std::int64_t at = o.shard ? l.slice_offset(b, rank.id()) : l.bucket(b).offset;
      l.for_each_piece(b, at, at + static_cast<std::int64_t>(g.size()),
                       [&](std::size_t i, std::int64_t off, std::int64_t full, std::int64_t len) {
                         std::int64_t flat = off;  // index in the reference's concatenation
                         for (std::size_t j = 0; j < i; ++j) flat += l.slot(j).numel;
                         for (std::int64_t e = 0; e < len; ++e)
                           mine.emplace_back(flat + e, g[static_cast<std::size_t>(full - at + e)]);
                       });
    }
  });
  return out;
}

}  // namespace

TEST_CASE("GradientBuckets sum the replicas' gradients, replicated or sharded", "[dp][buckets]") {
  for (bool shard : {false, true})
    for (int n : {1, 2, 3})
      for (int accumulation : {1, 2}) {
        INFO((shard ? "sharded" : "replicated") << ", " << n << " ranks, accumulation " << accumulation);
        const auto want = reference_grads(n * accumulation);
        const auto got = reduce_over(n, accumulation, {.shard = shard});
        std::vector<int> seen(want.size(), 0);
        for (const auto& rank : got.ranks)
          for (const auto& [i, v] : rank) {
            ++seen[static_cast<std::size_t>(i)];
            CHECK(v == Approx(want[static_cast<std::size_t>(i)]).epsilon(1e-6).margin(1e-7));
          }
        // Replicated: every rank has every element; sharded: exactly one rank does.
        for (int s : seen) CHECK(s == (shard ? 1 : n));
      }
}

TEST_CASE("GradientBuckets with Reduction::mean average over the group", "[dp][buckets]") {
  const auto want = reference_grads(2);
  const auto got = reduce_over(2, 1, {.reduction = px::dp::Reduction::mean});
  for (const auto& [i, v] : got.ranks[0]) CHECK(v == Approx(want[static_cast<std::size_t>(i)] / 2).epsilon(1e-6));
}

TEST_CASE("A bucket starts reducing as soon as its last gradient is in, after the last microbatch", "[dp][buckets]") {
  std::vector<std::int64_t> started;  // reductions started at the points below (rank 0)
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Net net(rank);
    GradientBuckets<B, float> buckets(rank, rank.world(), net.parameters(),
                                      {.accumulation = 2, .bucket_bytes = bucket_bytes});
    auto note = [&] {
      if (rank.id() == 0) started.push_back(buckets.reductions());
    };
    net.run(rank.id() * 2, note);  // microbatch 1 of 2: nothing reduces
    note();
    net.run(rank.id() * 2 + 1, note);  // microbatch 2: fc2's bucket starts before fc1's backward_weight
    note();
    buckets.finish();
    buckets.reset();
    net.run(rank.id() * 2, note);  // the next step starts from zero
  });
  CHECK(started == std::vector<std::int64_t>{0, 0, 1, 2, 2});
}

TEST_CASE("GradientBuckets account the gradients they keep and the buckets in flight", "[dp][buckets][memory]") {
  struct Figures {
    std::size_t grads = 0, comm_live = 0, comm_peak = 0;
    std::int64_t padded = 0, shard = 0;
  };
  std::vector<Figures> figs(2);
  for (bool shard : {false, true}) {
    px::launch<B>(2, [&](px::Rank<B>& rank) {
      Net net(rank);
      GradientBuckets<B, float> buckets(rank, rank.world(), net.parameters(),
                                        {.bucket_bytes = bucket_bytes, .shard = shard});
      net.run(rank.id());
      buckets.finish();
      if (rank.id() != 0) return;
      auto& f = figs[shard ? 1 : 0];
      f.grads = rank.memory().live(px::MemoryCategory::gradients);
      f.comm_live = rank.memory().live(px::MemoryCategory::communication);
      f.comm_peak = rank.memory().peak(px::MemoryCategory::communication);
      f.padded = buckets.layout().padded_numel();
      f.shard = buckets.layout().shard_numel();
    });
  }
  // 36 | 21 elements padded to 36 | 22 over 2 ranks: replicated keeps 58 floats, sharded 29 and frees its buckets.
  CHECK(figs[0].padded == 58);
  CHECK(figs[0].grads == 58 * sizeof(float));
  CHECK(figs[0].comm_peak == 0);
  CHECK(figs[1].grads == 29 * sizeof(float));
  CHECK(figs[1].comm_live == 0);
  CHECK(figs[1].comm_peak > 0);
  CHECK(figs[1].comm_peak <= 58 * sizeof(float));
}

TEST_CASE("GradientBuckets reject a wrong number of gradients, an empty list and a second owner",
          "[dp][buckets][errors]") {
  std::vector<std::string> msgs;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Net net(rank);
    auto msg = [&](auto&& f) {
      try {
        f();
        msgs.push_back("(no error)");
      } catch (const px::Error& e) {
        msgs.push_back(e.what());
      }
    };
    msg([&] { GradientBuckets<B, float>(rank, rank.world(), {}, {}); });
    msg([&] { GradientBuckets<B, float>(rank, rank.world(), net.parameters(), {.accumulation = 0}); });
    {
      GradientBuckets<B, float> buckets(rank, rank.world(), net.parameters(), {.accumulation = 2});
      msg([&] { GradientBuckets<B, float>(rank, rank.world(), net.fc2.parameters(), {}); });
      net.run(0);
      msg([&] { buckets.finish(); });  // one microbatch of two
      net.run(1);
      msg([&] { net.run(2); });  // a third
    }
  });
  REQUIRE(msgs.size() == 5);
  CHECK_THAT(msgs[0], Catch::Contains("GradientBuckets: the parameter list is empty"));
  CHECK_THAT(msgs[1], Catch::Contains("accumulation 0 is not a positive number of microbatches"));
  CHECK_THAT(msgs[2], Catch::Contains("parameter 'fc2.weight' already has gradient hooks"));
  CHECK_THAT(msgs[3],
             Catch::Contains("parameter 'fc1.weight' received 1 gradient(s) this step, expected accumulation = 2"));
  CHECK_THAT(msgs[4], Catch::Contains("parameter 'fc2.weight' receives gradient 3 of a step whose accumulation is 2"));
}

TEST_CASE("Sharded buckets in flight are bounded by max_in_flight", "[dp][buckets][memory]") {
  std::vector<std::size_t> peaks;
  for (int in_flight : {1, 2}) {
    px::launch<B>(2, [&](px::Rank<B>& rank) {
      std::vector<Fc> layers;
      layers.reserve(4);
      for (int l = 0; l < 4; ++l)
        layers.emplace_back(rank, 6, 6, px::nn::LinearOptions{.name = fmt::format("fc{}", l)});
      px::nn::ParameterList<float, Mem> params;
      for (auto& l : layers) px::nn::append(params, l.parameters());
      // One bucket of 42 floats per layer.
      GradientBuckets<B, float> buckets(
          rank, rank.world(), params, {.bucket_bytes = 42 * sizeof(float), .shard = true, .max_in_flight = in_flight});
      const auto x = px::test::random_values(3 * 6, 5);
      std::vector<Fc::Ctx> ctx(4);
      px::Tensor<float, Mem> h;
      for (std::size_t l = 0; l < 4; ++l)
        h = layers[l].forward(ctx[l], l == 0 ? px::View<const float, Mem>(x.data(), px::Shape{3, 6}) : h.cview());
      for (std::size_t l = 4; l-- > 0;) {
        h = layers[l].backward_input(ctx[l], h.cview());
        layers[l].backward_weight(ctx[l]);
      }
      buckets.finish();
      if (rank.id() == 0) peaks.push_back(rank.memory().peak(px::MemoryCategory::communication));
    });
  }
  CHECK(peaks[0] <= 2 * 42 * sizeof(float));
  CHECK(peaks[1] <= 3 * 42 * sizeof(float));
}

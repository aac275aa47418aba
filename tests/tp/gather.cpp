// gather_parameter / gather_gradient: shards over the parameter's own axis group, replicated parameters,
// and a spec that does not match the mesh.
#include <catch2/catch.hpp>

#include <parallax/nn/parameter.hpp>
#include <parallax/tp/gather.hpp>

#include "parity.hpp"

namespace px = parallax;
using namespace px::test::tp;

TEST_CASE("gather_parameter assembles the shards of the parameter's axis group", "[tp][gather]") {
  using Grid = px::DeviceMesh<2, 1, 2>;  // 4 ranks: dp x tp
  const px::Shape global{6, 4};
  std::vector<float> want(static_cast<std::size_t>(global.numel()));
  px::init::fill(px::View<float, Mem>(want.data(), global), px::init::uniform(-1.f, 1.f, 3), {global, 0, 0});
  std::vector<std::vector<float>> by_dp(4), by_tp(4), grads(4), replicated(4);
  px::launch<B>(4, [&](px::Rank<B>& rank) {
    Grid mesh(rank);
    auto init = [&](px::nn::Parameter<float, Mem>& p) {
      px::nn::init_shard(p.value(), p.spec(), px::init::uniform(-1.f, 1.f, 3));
      px::nn::init_shard(p.grad(), p.spec(), px::init::uniform(-1.f, 1.f, 3));
    };
    // Split by rows over DP, by columns over TP, and not at all.
    px::nn::Parameter<float, Mem> a(rank.allocator(), px::nn::ShardSpec::split("a", global, px::Axis::dp, 0, 2, mesh.dp_rank()));
    px::nn::Parameter<float, Mem> b(rank.allocator(), px::nn::ShardSpec::split("b", global, px::Axis::tp, 1, 2, mesh.tp_rank()));
    px::nn::Parameter<float, Mem> c(rank.allocator(), px::nn::ShardSpec::replicated("c", global));
    for (auto* p : {&a, &b, &c}) init(*p);
    const auto r = static_cast<std::size_t>(rank.id());
    by_dp[r] = px::tp::gather_parameter(mesh, a);
    by_tp[r] = px::tp::gather_parameter(mesh, b);
    grads[r] = px::tp::gather_gradient(mesh, b);
    replicated[r] = px::tp::gather_parameter(mesh, c);
  });
  for (std::size_t r = 0; r < 4; ++r) {
    INFO("rank " << r);
    CHECK(by_dp[r] == want);
    CHECK(by_tp[r] == want);
    CHECK(grads[r] == want);
    CHECK(replicated[r] == want);
  }
}

TEST_CASE("gather_parameter rejects a spec whose parts are not the mesh group", "[tp][gather][errors]") {
  std::vector<std::string> msgs(4);
  px::launch<B>(4, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    px::nn::Parameter<float, Mem> p(rank.allocator(),
                                    px::nn::ShardSpec::split("w", px::Shape{8, 4}, px::Axis::tp, 0, 2, rank.id() % 2));
    msgs[static_cast<std::size_t>(rank.id())] = message_of([&] { (void)px::tp::gather_parameter(mesh, p); });
  });
  CHECK_THAT(msgs[3], Catch::Contains("gather 'w': shard 1 of 2 parts, but this rank is 3 of 4 on the tp axis (rank 3)"));
}

// Global-norm clipping: the norm over DP shards, TP shards (TP-replicated tensors counted once, shared copies of
// tied weights not at all) equals the single-rank norm; clipped training matches one rank.
#include <parallax/optim/clip_grad_norm.hpp>
#include <parallax/tp/parallel_mlp.hpp>

#include "sharded.hpp"

namespace px = parallax;
using namespace parallax::test::sharded;

TEMPLATE_TEST_CASE("Clipped training on DP ranks matches one rank", "[optim][sharded][clip]", px::Zero<0>, px::Zero<1>,
                   px::Zero<2>, px::Zero<3>) {
  const px::optim::AdamW::Hyper hyper{.lr = 1e-2f};
  for (int dp : {2, 4}) {
    const Run run{.dp = dp, .accumulation = 2, .clip_norm = 0.05f};
    INFO("DP " << dp);
    const auto ref = reference<px::optim::AdamW, float>(run, hyper);
    for (double n : ref.norms) REQUIRE(n > run.clip_norm);  // clipping is active at every step
    const auto got = train<px::optim::AdamW, TestType, float>(run, hyper);
    check_values(got, ref, 1e-6);
  }
}

namespace {

template <class M>
using TpMlp = px::tp::ParallelMLP<M, B, float>;
constexpr std::int64_t dim = 4, tp_hidden = 8;

//! Forward and backward of microbatch `m` ([3, 2, dim], dy = w / 12) on a TP MLP.
template <class M>
void run_tp(TpMlp<M>& mlp, int m) {
  const auto x = px::test::random_values(3 * 2 * dim, 300 + static_cast<std::uint64_t>(m));
  const auto dy = px::test::random_values(3 * 2 * dim, 400 + static_cast<std::uint64_t>(m), 1.f / 12);
  typename TpMlp<M>::Ctx ctx;
  auto y = mlp.forward(ctx, px::View<const float, Mem>(x.data(), px::Shape{3, 2, dim}));
  (void)mlp.backward_input(ctx, px::View<const float, Mem>(dy.data(), y.shape()));
  mlp.backward_weight(ctx);
}

//! The norm one rank sees for microbatches 0 .. n-1.
double single_rank_norm(int n) {
  double norm = 0;
  using One = px::DeviceMesh<1, 1, 1>;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    One mesh(rank);
    TpMlp<One> mlp(mesh, dim, tp_hidden, {.init_std = 0.5f, .proj_init_std = 0.5f});
    for (int m = 0; m < n; ++m) run_tp(mlp, m);
    double sq = 0;
    for (auto* p : mlp.parameters()) sq += B::sum_squares(rank.context(), px::View<const float, Mem>(p->grad()));
    norm = std::sqrt(sq);
  });
  return norm;
}

}  // namespace

TEST_CASE("The global norm counts TP shards and TP-replicated tensors once", "[optim][clip][tp]") {
  using Tp2 = px::DeviceMesh<1, 1, 2>;
  const double want = single_rank_norm(1);
  std::vector<double> norms(2), clipped(2);
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Tp2 mesh(rank);
    TpMlp<Tp2> mlp(mesh, dim, tp_hidden, {.init_std = 0.5f, .proj_init_std = 0.5f});
    run_tp(mlp, 0);
    const auto params = mlp.parameters();
    norms[static_cast<std::size_t>(rank.id())] = px::optim::clip_grad_norm<B>(mesh, params, float(want / 2));
    clipped[static_cast<std::size_t>(rank.id())] = px::optim::global_grad_norm<B>(mesh, params);
  });
  for (int r = 0; r < 2; ++r) {
    CHECK(norms[r] == Approx(want).epsilon(1e-6));
    CHECK(clipped[r] == Approx(want / 2).epsilon(1e-5));
  }
}

TEMPLATE_TEST_CASE("ShardedOptimizer's norm over DP x TP shards equals the single-rank norm",
                   "[optim][sharded][clip][tp]", px::Zero<0>, px::Zero<2>, px::Zero<3>) {
  using Dp2Tp2 = px::DeviceMesh<2, 1, 2>;
  const double want = single_rank_norm(2);
  std::vector<double> norms(4);
  px::launch<B>(4, [&](px::Rank<B>& rank) {
    Dp2Tp2 mesh(rank);
    TpMlp<Dp2Tp2> mlp(mesh, dim, tp_hidden, {.init_std = 0.5f, .proj_init_std = 0.5f});
    px::optim::ShardedOptimizer<px::optim::AdamW, TestType, Dp2Tp2, B> opt(mesh, mlp.parameters(), {},
                                                                           {.bucket_bytes = 24 * sizeof(float)});
    run_tp(mlp, mesh.dp_rank());
    norms[static_cast<std::size_t>(rank.id())] = opt.step().grad_norm;
  });
  for (double n : norms) CHECK(n == Approx(want).epsilon(1e-6));
}

TEMPLATE_TEST_CASE("A shared copy of a tied weight is left out of the global norm", "[optim][sharded][clip][tied]",
                   px::Zero<0>, px::Zero<1>, px::Zero<2>, px::Zero<3>) {
  // One rank: the norm without the squares of the parameter marked as a shared copy.
  double want = 0, plain = 0, without_copy = 0;
  using One = px::DeviceMesh<1, 1, 1>;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    One mesh(rank);
    TpMlp<One> mlp(mesh, dim, tp_hidden, {.init_std = 0.5f, .proj_init_std = 0.5f});
    run_tp(mlp, 0);
    run_tp(mlp, 1);
    const auto params = mlp.parameters();
    plain = px::optim::global_grad_norm<B>(mesh, params);
    double sq = 0;
    for (auto* p : params)
      if (p != params.front()) sq += B::sum_squares(rank.context(), px::View<const float, Mem>(p->grad()));
    want = std::sqrt(sq);
    params.front()->set_shared_copy(true);
    without_copy = px::optim::global_grad_norm<B>(mesh, params);
  });
  CHECK(without_copy == Approx(want).epsilon(1e-12));
  REQUIRE(plain > want * 1.01);  // the copy's gradient is not negligible, so leaving it out shows
  // DP 2 x TP 2 under every ZeRO stage: the optimizer's norm leaves the copy out too.
  using Dp2Tp2 = px::DeviceMesh<2, 1, 2>;
  std::vector<double> norms(4);
  px::launch<B>(4, [&](px::Rank<B>& rank) {
    Dp2Tp2 mesh(rank);
    TpMlp<Dp2Tp2> mlp(mesh, dim, tp_hidden, {.init_std = 0.5f, .proj_init_std = 0.5f});
    mlp.parameters().front()->set_shared_copy(true);
    px::optim::ShardedOptimizer<px::optim::AdamW, TestType, Dp2Tp2, B> opt(mesh, mlp.parameters(), {},
                                                                           {.bucket_bytes = 24 * sizeof(float)});
    run_tp(mlp, mesh.dp_rank());
    norms[static_cast<std::size_t>(rank.id())] = opt.step().grad_norm;
  });
  for (double n : norms) CHECK(n == Approx(want).epsilon(1e-6));
}

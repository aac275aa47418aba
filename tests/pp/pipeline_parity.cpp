// PipelineStage parity: PP {1, 2, 4} x every schedule x m in {1, p, 2p, 2p + 1} (where the schedule allows m) gives
// the single-rank loss and gradients (fp32, 1e-5 relative); with activation checkpointing too; and PP x TP x DP =
// 2 x 2 x 2 with ZeRO-1, 2 and 3 optimizer steps (gradient clipping on) gives the single-rank parameters.
#include <type_traits>

#include <parallax/optim/sgd.hpp>
#include <parallax/optim/sharded_optimizer.hpp>
#include <parallax/pp/gpipe.hpp>
#include <parallax/pp/interleaved_1f1b.hpp>
#include <parallax/pp/one_f_one_b.hpp>
#include <parallax/pp/simulate.hpp>
#include <parallax/pp/zero_bubble_h1.hpp>
#include <parallax/pp/zero_bubble_v.hpp>

#include "pipeline_model.hpp"

namespace px = parallax;
namespace pp = parallax::pp;
using namespace parallax::test::pipeline;

namespace {

constexpr double tolerance = 1e-5;

//! The stages of this rank under schedule S: chunk c is virtual stage S::stage_of(pp_rank, c, p).
template <class S, class Mesh>
std::vector<GptStage<Mesh, float>> chunks_of(Mesh& mesh, const Config& c) {
  std::vector<GptStage<Mesh, float>> chunks;
  for (int k = 0; k < S::chunks; ++k)
    chunks.emplace_back(mesh, c, S::stage_of(mesh.pp_rank(), k, mesh.pp_size()), mesh.pp_size(), S::chunks);
  return chunks;
}

//! One step of schedule S on p pipeline ranks and m microbatches; each rank's loss and gradients. `in_order`: each
//! group's calls run one at a time, as NCCL runs them on a stream (`LaunchOptions::in_order`).
template <class S>
std::vector<Result> run_pipeline(const Config& c, int p, const Batch& batch, int m, bool in_order = false) {
  using Mesh = px::DeviceMesh<1, px::dynamic, 1>;
  std::vector<Result> out(static_cast<std::size_t>(p));
  px::launch<B>(
      p,
      [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        pp::PipelineStage<S, GptStage<Mesh, float>> stage(mesh, chunks_of<S>(mesh, c), {.microbatches = m});
        const auto mbs = batch.views(0, m);
        const pp::StepResult r = stage.train_step(mbs);
        auto& res = out[static_cast<std::size_t>(rank.id())];
        res.loss = r.loss;
        gather(mesh, stage.parameters(), res);
      },
      {.timeout = std::chrono::seconds(20), .in_order = in_order});
  return out;
}

template <class S>
void check_schedule(const Config& c, bool in_order = false) {
  for (int p : {1, 2, 4})
    for (int m : {1, p, 2 * p, 2 * p + 1}) {
      if (!pp::check<S>(p, m)) continue;
      INFO(S::type_name() << " p " << p << " m " << m << (c.checkpoint ? " checkpoint" : "")
                          << (in_order ? " in order" : ""));
      const Batch batch(c, m);
      const Result ref = reference<float>(c, batch.views(0, m));
      check_against(run_pipeline<S>(c, p, batch, m, in_order), ref, tolerance);
    }
}

}  // namespace

TEMPLATE_TEST_CASE("PipelineStage: loss and gradients equal the single-rank model's, PP {1, 2, 4} x m",
                   "[pp][pipeline][parity]", pp::GPipe, pp::OneFOneB, pp::Interleaved1F1B<2>, pp::ZeroBubbleH1,
                   pp::ZeroBubbleV) {
  check_schedule<TestType>(Config{});
  // ZB-V's neighbours send each other activations and gradients in another order than they consume them: the
  // stage takes messages in the sender's order and holds early ones.
  if constexpr (std::is_same_v<TestType, pp::ZeroBubbleV>) CHECK_FALSE(pp::simulate<TestType>({2, 4, 2}).messages_in_order);
}

// NCCL runs a group's sends and receives one after another on its stream: a rank whose receive is posted before a
// send its peer waits for deadlocks. Every rank issues the step's messages in one order (by simulated time, then
// sender), so the step completes when calls cannot overlap.
TEMPLATE_TEST_CASE("PipelineStage: every schedule runs when a group's calls complete one at a time (NCCL's order)",
                   "[pp][pipeline][parity][in_order]", pp::GPipe, pp::OneFOneB, pp::Interleaved1F1B<2>,
                   pp::ZeroBubbleH1, pp::ZeroBubbleV) {
  check_schedule<TestType>(Config{}, /*in_order=*/true);
}

TEST_CASE("PipelineStage: activation checkpointing inside the stages changes nothing", "[pp][pipeline][parity]") {
  Config c;
  c.checkpoint = true;
  check_schedule<pp::OneFOneB>(c);
}

TEMPLATE_TEST_CASE("PipelineStage: PP x TP x DP = 2 x 2 x 2 with a ZeRO optimizer equals one rank",
                   "[pp][pipeline][parity][zero]", px::Zero<1>, px::Zero<2>, px::Zero<3>) {
  using Mesh = px::DeviceMesh<2, 2, 2>;
  using Mesh1 = px::DeviceMesh<1, 1, 1>;
  using Sgd = px::optim::SGD;
  const Config c;
  constexpr int m = 3, dp = 2, steps = 2;
  const Batch batch(c, dp * m * steps);
  const Sgd::Hyper hyper{.lr = 0.5f, .momentum = 0.9f};
  const px::optim::ShardedOptions options{.clip_norm = 0.5f};
  // The reference: both DP replicas' microbatches on one rank, the same optimizer, the same steps.
  Result ref;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh1 mesh(rank);
    GptStage<Mesh1, float> model(mesh, c, 0, 1);
    auto o = options;
    o.accumulation = dp * m;
    px::optim::ShardedOptimizer<Sgd, px::Zero<0>, Mesh1, B> opt(mesh, model.parameters(), hyper, o);
    for (int s = 0; s < steps; ++s) {
      ref.loss = accumulate(model, batch.views(s * dp * m, dp * m));  // the last step's loss
      (void)opt.step();
    }
    for (auto* p : model.parameters()) ref.tensors[p->name()] = full_value(opt, mesh, *p);
  });
  std::vector<Result> got(8);
  px::launch<B>(
      8,
      [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        pp::PipelineStage<pp::OneFOneB, GptStage<Mesh, float>> stage(
            mesh, GptStage<Mesh, float>(mesh, c, mesh.pp_rank(), 2), {.microbatches = m});
        auto o = options;
        o.accumulation = m;  // the DP reduction of a bucket starts after its parameters' m-th gradient
        px::optim::ShardedOptimizer<Sgd, TestType, Mesh, B> opt(mesh, stage.parameters(), hyper, o);
        auto& res = got[static_cast<std::size_t>(rank.id())];
        for (int s = 0; s < steps; ++s) {
          res.loss = stage.train_step(batch.views((s * dp + mesh.dp_rank()) * m, m)).loss;
          (void)opt.step();
        }
        for (auto* p : stage.parameters()) res.tensors[p->name()] = full_value(opt, mesh, *p);
      },
      {.timeout = std::chrono::seconds(20)});
  check_against(got, ref, tolerance);
}

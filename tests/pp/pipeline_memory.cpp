// PipelineStage keeps each schedule's activation-memory promise, read off the allocator: with stages that save a
// known number of bytes per microbatch, every rank's peak of the activations category holds exactly as many
// microbatches as the simulation says (1F1B: p on the first stage; GPipe: m).
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
using Mesh = px::DeviceMesh<1, px::dynamic, 1>;

namespace {

constexpr std::int64_t saved = 16384;  // floats saved per (microbatch, chunk): 64 KiB
constexpr std::size_t saved_bytes = saved * sizeof(float);

//! What each rank of a step of S on p stages and m microbatches measured.
struct Peak {
  std::size_t bytes = 0;  // the activations category's peak during the step
  int in_flight = 0;      // StepResult::peak_in_flight
  std::size_t after = 0;  // live after the step
};

template <class S>
std::vector<Peak> peaks(int p, int m) {
  const Batch batch(Config{}, m);
  std::vector<Peak> out(static_cast<std::size_t>(p));
  px::launch<B>(
      p,
      [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        std::vector<ProbeStage> chunks;
        for (int c = 0; c < S::chunks; ++c) chunks.emplace_back(rank, S::stage_of(mesh.pp_rank(), c, p), p * S::chunks, saved);
        pp::PipelineStage<S, ProbeStage> stage(mesh, std::move(chunks), {.microbatches = m});
        rank.memory().reset_peaks();
        const auto r = stage.train_step(batch.views(0, m));
        out[static_cast<std::size_t>(rank.id())] = {rank.memory().peak(px::MemoryCategory::activations),
                                                    r.peak_in_flight,
                                                    rank.memory().live(px::MemoryCategory::activations)};
      },
      {.timeout = std::chrono::seconds(20)});
  return out;
}

template <class S>
void check_promise(int p, int m) {
  INFO(S::type_name() << " p " << p << " m " << m);
  const pp::Simulation sim = pp::simulate<S>({p, m, S::chunks});
  const auto got = peaks<S>(p, m);
  for (int r = 0; r < p; ++r) {
    INFO("rank " << r);
    const Peak& k = got[static_cast<std::size_t>(r)];
    const int want = sim.peak_in_flight[static_cast<std::size_t>(r)];
    CHECK(k.in_flight == want);
    CHECK(k.after == 0);  // every context was freed after its backward
    CHECK(want <= S::max_in_flight(r, sim.shape));
    // The saved bytes of `want` microbatches, plus a few small activations in transit (under one microbatch's).
    CHECK(k.bytes >= want * saved_bytes);
    CHECK(k.bytes < (want + 1) * saved_bytes);
  }
}

}  // namespace

TEST_CASE("PipelineStage: 1F1B's first stage holds p microbatches, GPipe's every stage m", "[pp][pipeline][memory]") {
  for (int p : {2, 4}) {
    const int m = 2 * p + 1;
    const auto one_f_one_b = peaks<pp::OneFOneB>(p, m);
    const auto gpipe = peaks<pp::GPipe>(p, m);
    for (int r = 0; r < p; ++r) {
      INFO("p " << p << " rank " << r);
      CHECK(one_f_one_b[static_cast<std::size_t>(r)].bytes / saved_bytes == static_cast<std::size_t>(p - r));
      CHECK(gpipe[static_cast<std::size_t>(r)].bytes / saved_bytes == static_cast<std::size_t>(m));
    }
  }
}

TEMPLATE_TEST_CASE("PipelineStage: every rank's peak activations are the schedule's in-flight count",
                   "[pp][pipeline][memory]", pp::GPipe, pp::OneFOneB, pp::Interleaved1F1B<2>, pp::ZeroBubbleH1,
                   pp::ZeroBubbleV) {
  for (int p : {2, 4})
    for (int m : {p, 2 * p, 2 * p + 1})
      if (pp::check<TestType>(p, m)) check_promise<TestType>(p, m);
}

// PipelineStage: bad input is a clear error on every rank, never a hang: m too small for the schedule, layers not
// divisible by p x v, activations or gradients of the wrong shape between stages (the error names both stages),
// the wrong number of chunks or microbatches, and an ignore_index that is not the loss module's.
#include <parallax/pp/gpipe.hpp>
#include <parallax/pp/interleaved_1f1b.hpp>
#include <parallax/pp/one_f_one_b.hpp>
#include <parallax/pp/zero_bubble_v.hpp>

#include "../support/support.hpp"
#include "pipeline_model.hpp"

namespace px = parallax;
namespace pp = parallax::pp;
using namespace parallax::test::pipeline;
using Mesh = px::DeviceMesh<1, px::dynamic, 1>;

namespace {

//! Runs `f` on `n` ranks; returns each rank's error message ("" where it threw none). Ranks rethrow, so the
//! others are released at once, as in a real program.
template <class F>
std::vector<std::string> errors_on_ranks(int n, F&& f) {
  std::vector<std::string> messages(static_cast<std::size_t>(n));
  try {
    px::launch<B>(
        n,
        [&](px::Rank<B>& rank) {
          try {
            f(rank);
          } catch (const px::Error& e) {
            messages[static_cast<std::size_t>(rank.id())] = e.what();
            throw;
          }
        },
        {.timeout = std::chrono::seconds(20)});
  } catch (const px::Error&) {
  }
  return messages;
}

//! Checks that every rank's message contains `text`.
void check_every_rank(const std::vector<std::string>& messages, const std::string& text) {
  for (std::size_t r = 0; r < messages.size(); ++r) {
    INFO("rank " << r << ": " << messages[r]);
    CHECK(messages[r].find(text) != std::string::npos);
  }
}

//! A step of schedule S with GPT stages built from `config_of(stage)`, m microbatches and `o`.
template <class S, class ConfigOf>
void gpt_step(px::Rank<B>& rank, int m, ConfigOf&& config_of, pp::PipelineOptions o = {}) {
  Mesh mesh(rank);
  const int p = mesh.pp_size();
  std::vector<GptStage<Mesh, float>> chunks;
  for (int c = 0; c < S::chunks; ++c) {
    const int s = S::stage_of(mesh.pp_rank(), c, p);
    chunks.emplace_back(mesh, config_of(s), s, p, S::chunks);
  }
  o.microbatches = m;
  pp::PipelineStage<S, GptStage<Mesh, float>> stage(mesh, std::move(chunks), o);
  const Batch batch(config_of(0), m);
  (void)stage.train_step(batch.views(0, m));
}

//! A probe stage whose backward_input returns a gradient one feature too wide on virtual stage `bad`.
class WideGradientStage : public ProbeStage {
 public:
  WideGradientStage(px::Rank<B>& rank, int stage, int stages, int bad)
      : ProbeStage(rank, stage, stages, 1), wide_(stage == bad) {}
  [[nodiscard]] px::Tensor<float, Mem> backward_input(Ctx& ctx, CView<float> dy, float scale) {
    auto dx = ProbeStage::backward_input(ctx, dy, scale);
    if (!wide_) return dx;
    const px::Shape s = dx.shape();
    return px::nn::activation<B, float>(rank(), px::Shape{s[0], s[1], s[2] + 1});
  }

 private:
  bool wide_;
};

}  // namespace

TEST_CASE("PipelineStage: m too small for the schedule throws on every rank before any communication",
          "[pp][pipeline][errors]") {
  const Config c;
  check_every_rank(errors_on_ranks(2, [&](auto& rank) { gpt_step<pp::ZeroBubbleV>(rank, 2, [&](int) { return c; }); }),
                   "PipelineStage<ZeroBubbleV>: ZeroBubbleV: 2 microbatches are fewer than the 3 it needs on 2 stages");
  check_every_rank(
      errors_on_ranks(2, [&](auto& rank) { gpt_step<pp::Interleaved1F1B<2>>(rank, 3, [&](int) { return c; }); }),
      "PipelineStage<Interleaved1F1B<2>>: Interleaved1F1B<2>: 3 microbatches are not a multiple of 2 stages");
}

TEST_CASE("PipelineStage: layers not divisible by p x v throw on every rank", "[pp][pipeline][errors]") {
  Config c;
  c.layers = 6;
  check_every_rank(errors_on_ranks(4, [&](auto& rank) { gpt_step<pp::OneFOneB>(rank, 4, [&](int) { return c; }); }),
                   "pp::layers_of: 6 layers are not divisible by p x v = 4 x 1 = 4 virtual stages");
  check_every_rank(
      errors_on_ranks(2, [&](auto& rank) { gpt_step<pp::Interleaved1F1B<2>>(rank, 2, [&](int) { return c; }); }),
      "pp::layers_of: 6 layers are not divisible by p x v = 2 x 2 = 4 virtual stages");
  CHECK(pp::layers_of(8, 3, 2, 2) == pp::LayerRange{6, 8});
  CHECK(parallax::test::error_of([] { (void)pp::layers_of(8, 4, 2, 2); }) ==
        "pp::layers_of: virtual stage 4 is outside 0..3");
}

TEST_CASE("PipelineStage: an activation of the wrong shape names both stages, on every rank", "[pp][pipeline][errors]") {
  Config narrow;
  narrow.dim = 8;
  const Config wide;
  for (int p : {2, 4}) {
    INFO("p " << p);
    // Virtual stage 0 is built with 8 features, the others with 16.
    check_every_rank(errors_on_ranks(p,
                                     [&](auto& rank) {
                                       gpt_step<pp::OneFOneB>(rank, p, [&](int s) { return s == 0 ? narrow : wide; });
                                     }),
                     "pipeline stage 1 expects activations [4, 2, 16] but stage 0 sent [4, 2, 8]");
  }
  // Interleaved: virtual stage 1 is rank 1's chunk 0, stage 2 rank 0's chunk 1.
  check_every_rank(errors_on_ranks(2,
                                   [&](auto& rank) {
                                     gpt_step<pp::Interleaved1F1B<2>>(rank, 2,
                                                                      [&](int s) { return s == 0 ? narrow : wide; });
                                   }),
                   "pipeline stage 1 expects activations [4, 2, 16] but stage 0 sent [4, 2, 8]");
}

TEST_CASE("PipelineStage: a gradient of the wrong shape names both stages, on every rank, also between chunks of one "
          "rank",
          "[pp][pipeline][errors]") {
  const Batch batch(Config{}, 4);
  const auto run = [&](auto schedule, int p, int bad) {
    using S = decltype(schedule);
    return errors_on_ranks(p, [&](px::Rank<B>& rank) {
      Mesh mesh(rank);
      std::vector<WideGradientStage> chunks;
      for (int c = 0; c < S::chunks; ++c)
        chunks.emplace_back(rank, S::stage_of(mesh.pp_rank(), c, p), p * S::chunks, bad);
      pp::PipelineStage<S, WideGradientStage> stage(mesh, std::move(chunks), {.microbatches = 4});
      (void)stage.train_step(batch.views(0, 4));
    });
  };
  check_every_rank(run(pp::GPipe{}, 2, 1), "pipeline stage 0 expects gradients [4, 2, 4] but stage 1 sent [4, 2, 5]");
  // ZB-V: virtual stages 1 and 2 are rank 1's two chunks, so the bad gradient never leaves rank 1.
  check_every_rank(run(pp::ZeroBubbleV{}, 2, 2), "pipeline stage 1 expects gradients [4, 2, 4] but stage 2 sent [4, 2, 5]");
}

TEST_CASE("PipelineStage: wrong chunk count, microbatch count, target shapes or ignore_index throw on every rank",
          "[pp][pipeline][errors]") {
  const Config c;
  check_every_rank(errors_on_ranks(2,
                                   [&](px::Rank<B>& rank) {
                                     Mesh mesh(rank);
                                     std::vector<GptStage<Mesh, float>> one;
                                     one.emplace_back(mesh, c, mesh.pp_rank(), 4, 2);
                                     pp::PipelineStage<pp::Interleaved1F1B<2>, GptStage<Mesh, float>> stage(
                                         mesh, std::move(one), {.microbatches = 2});
                                   }),
                   "PipelineStage<Interleaved1F1B<2>>: 1 model chunks given, the schedule runs 2 per rank");
  const Batch batch(c, 3);
  check_every_rank(errors_on_ranks(2,
                                   [&](px::Rank<B>& rank) {
                                     Mesh mesh(rank);
                                     pp::PipelineStage<pp::OneFOneB, GptStage<Mesh, float>> stage(
                                         mesh, GptStage<Mesh, float>(mesh, c, mesh.pp_rank(), 2), {.microbatches = 2});
                                     (void)stage.train_step(batch.views(0, 3));
                                   }),
                   "PipelineStage<OneFOneB>: train_step got 3 microbatches, the stage was built for 2");
  check_every_rank(errors_on_ranks(2,
                                   [&](px::Rank<B>& rank) {
                                     Mesh mesh(rank);
                                     pp::PipelineStage<pp::OneFOneB, GptStage<Mesh, float>> stage(
                                         mesh, GptStage<Mesh, float>(mesh, c, mesh.pp_rank(), 2), {.microbatches = 2});
                                     auto mbs = batch.views(0, 2);
                                     mbs[1].targets = mbs[1].targets.reshape(px::Shape{8});
                                     (void)stage.train_step(mbs);
                                   }),
                   "PipelineStage<OneFOneB>: microbatch 1 has tokens [4, 2] and targets [8]; both must be [T, B]");
  check_every_rank(
      errors_on_ranks(2, [&](auto& rank) { gpt_step<pp::OneFOneB>(rank, 2, [&](int) { return c; }, {.ignore_index = 0}); }),
      "PipelineStage<OneFOneB>: the loss counted 13 target tokens, but 15 targets differ from ignore_index 0; give "
      "PipelineOptions the loss module's ignore_index");
}

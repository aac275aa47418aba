// PipelineStage's recording: every rank's actions in schedule order with times that respect the data flow; the
// ASCII timeline (one line per rank, the simulation's picture for equal-cost actions) and the Chrome trace (valid
// JSON, one track per rank).
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include <parallax/pp/interleaved_1f1b.hpp>
#include <parallax/pp/one_f_one_b.hpp>
#include <parallax/pp/simulate.hpp>
#include <parallax/pp/trace.hpp>
#include <parallax/pp/zero_bubble_h1.hpp>
#include <parallax/pp/zero_bubble_v.hpp>

#include "../support/support.hpp"
#include "pipeline_model.hpp"

namespace px = parallax;
namespace pp = parallax::pp;
using namespace parallax::test::pipeline;
using Mesh = px::DeviceMesh<1, px::dynamic, 1>;

namespace {

//! A recorded step of S with probe stages on p ranks; also rank 0's `timeline()` and whether every rank gathered
//! the same recording.
template <class S>
pp::Recording recorded(int p, int m, std::string* timeline = nullptr, bool* same = nullptr) {
  const Batch batch(Config{}, m);
  std::vector<pp::Recording> recs(static_cast<std::size_t>(p));
  px::launch<B>(
      p,
      [&](px::Rank<B>& rank) {
        Mesh mesh(rank);
        std::vector<ProbeStage> chunks;
        for (int c = 0; c < S::chunks; ++c) chunks.emplace_back(rank, S::stage_of(mesh.pp_rank(), c, p), p * S::chunks, 64);
        pp::PipelineStage<S, ProbeStage> stage(mesh, std::move(chunks), {.microbatches = m});
        (void)stage.train_step(batch.views(0, m));
        recs[static_cast<std::size_t>(rank.id())] = stage.recording();
        if (timeline != nullptr && rank.id() == 0) *timeline = stage.timeline();
      },
      {.timeout = std::chrono::seconds(20)});
  if (same != nullptr) {
    *same = true;
    for (const auto& r : recs) *same = *same && r.ranks == recs[0].ranks;
  }
  return recs[0];
}

//! The end of `op` of `microbatch` at virtual stage `stage` in `rec`.
template <class S>
std::int64_t end_of(const pp::Recording& rec, pp::Op op, int microbatch, int stage) {
  const pp::Placement at = pp::placement<S>(stage, rec.shape.stages);
  for (const auto& a : rec.ranks[static_cast<std::size_t>(at.rank)])
    if (a.action == pp::Action{op, microbatch, at.chunk}) return a.end_ns;
  return -1;
}

template <class S>
void check_recording(int p, int m) {
  INFO(S::type_name() << " p " << p << " m " << m);
  bool same = false;
  const pp::Recording rec = recorded<S>(p, m, nullptr, &same);
  CHECK(same);
  CHECK(rec.schedule == S::type_name());
  CHECK(rec.shape == pp::ScheduleShape{p, m, S::chunks});
  REQUIRE(static_cast<int>(rec.ranks.size()) == p);
  const int last = p * S::chunks - 1;
  for (int r = 0; r < p; ++r) {
    INFO("rank " << r);
    const auto& mine = rec.ranks[static_cast<std::size_t>(r)];
    const auto want = S::actions(r, rec.shape);
    REQUIRE(mine.size() == want.size());
    std::int64_t previous = 0;
    for (std::size_t i = 0; i < mine.size(); ++i) {
      const pp::ActionRecord& a = mine[i];
      CHECK(a.action == want[i]);
      CHECK(previous <= a.start_ns);
      CHECK(a.start_ns <= a.end_ns);
      previous = a.end_ns;
      // Each action starts after the one it takes its input from ended (one clock for every rank thread).
      const int s = S::stage_of(r, a.action.chunk, p);
      const int mb = a.action.microbatch;
      const pp::Op backward = S::split_backward ? pp::Op::backward_input : pp::Op::backward;
      if (a.action.op == pp::Op::forward && s > 0) CHECK(end_of<S>(rec, pp::Op::forward, mb, s - 1) <= a.start_ns);
      if (a.action.op == backward && s < last) CHECK(end_of<S>(rec, backward, mb, s + 1) <= a.start_ns);
    }
  }
}

}  // namespace

TEST_CASE("PipelineStage records every rank's actions in order, after their inputs, the same on every rank",
          "[pp][pipeline][trace]") {
  check_recording<pp::OneFOneB>(4, 6);
  check_recording<pp::Interleaved1F1B<2>>(2, 4);
  check_recording<pp::ZeroBubbleV>(2, 4);
}

TEST_CASE("PipelineStage: the ASCII timeline has one line per rank", "[pp][pipeline][trace]") {
  std::string text;
  (void)recorded<pp::ZeroBubbleV>(4, 8, &text);
  INFO(text);
  int lines = 0;
  for (std::size_t at = 0; (at = text.find('\n', at)) != std::string::npos; ++at) ++lines;
  CHECK(lines == 4);
  for (int r = 0; r < 4; ++r) CHECK(text.find(fmt::format("rank {} |", r)) != std::string::npos);
  CHECK(text.find("F7b") != std::string::npos);
}

TEST_CASE("Recording: equal-cost actions draw the simulation's timeline and have its bubble", "[pp][trace]") {
  const pp::Simulation sim = pp::simulate<pp::ZeroBubbleH1>({4, 6, 1});
  pp::Recording rec{"ZeroBubbleH1", sim.shape, {}};
  for (const auto& rank : sim.ranks) {
    auto& out = rec.ranks.emplace_back();
    for (const pp::TimedAction& t : rank)  // 5 ms a unit, each action ending 40 us late
      out.push_back({t.action, t.start * 5'000'000, t.end * 5'000'000 + 40'000});
  }
  CHECK(pp::timeline(rec) == pp::timeline(sim));
  CHECK(std::abs(rec.bubble() - sim.bubble()) < 0.01);
  CHECK(pp::Recording{}.bubble() == 0);
}

TEST_CASE("PipelineStage: the Chrome trace is JSON with one track per rank", "[pp][pipeline][trace]") {
  const pp::Recording rec = recorded<pp::Interleaved1F1B<2>>(2, 4);
  const auto path = std::filesystem::temp_directory_path() / "parallax_pipeline_trace_test.json";
  pp::write_chrome_trace(path.string(), rec);
  std::ifstream file(path);
  const auto json = nlohmann::json::parse(file);
  file.close();
  std::filesystem::remove(path);
  std::set<int> tracks, named;
  std::size_t complete = 0;
  for (const auto& e : json.at("traceEvents")) {
    if (e.at("ph") == "M" && e.at("name") == "thread_name") named.insert(e.at("tid").get<int>());
    if (e.at("ph") != "X") continue;
    ++complete;
    tracks.insert(e.at("tid").get<int>());
    CHECK(e.at("pid") == 0);
    CHECK(e.at("dur").get<double>() >= 0);
    const std::string name = e.at("name");
    CHECK((name[0] == 'F' || name[0] == 'B'));
    CHECK((name.back() == 'a' || name.back() == 'b'));
  }
  CHECK(complete == 2 * 2 * 4 * 2);  // ranks x (F, B) x microbatches x chunks
  CHECK(tracks == std::set<int>{0, 1});
  CHECK(named == tracks);
  CHECK(parallax::test::error_of([&] { pp::write_chrome_trace("/nonexistent-dir/trace.json", rec); }) ==
        "pp::write_chrome_trace: cannot write '/nonexistent-dir/trace.json'");
}

TEST_CASE("PipelineStage: nothing is recorded when record is off", "[pp][pipeline][trace]") {
  const Batch batch(Config{}, 2);
  std::vector<std::size_t> sizes(2);
  px::launch<B>(2, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    pp::PipelineStage<pp::OneFOneB, ProbeStage> stage(mesh, ProbeStage(rank, mesh.pp_rank(), 2, 8),
                                                      {.microbatches = 2, .record = false});
    (void)stage.train_step(batch.views(0, 2));
    sizes[static_cast<std::size_t>(rank.id())] = stage.recording().ranks.size();
  });
  CHECK(sizes == std::vector<std::size_t>{0, 0});
}

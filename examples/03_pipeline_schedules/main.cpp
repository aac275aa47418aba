// 03_pipeline_schedules — every pipeline schedule on p CPU-thread ranks, m microbatches and v chunks per rank:
// its timeline and bubble in theory (pp::simulate) and measured by PipelineStage on synthetic stages whose every
// action takes a fixed wall time (so the figures do not depend on the machine's cores), and the peak activation
// memory each one holds. A forward takes one unit, a backward two (input and weight gradient one each), split
// over a rank's chunks, so every schedule does the same work.
// Run: ./build/examples/03_pipeline_schedules/pipeline_schedules [--p 4] [--m 8] [--v 2] [--unit-ms 20]
//        [--json FILE] [--trace DIR]   (--trace writes DIR/<schedule>.trace.json for ui.perfetto.dev)
#include <parallax/parallax.hpp>
#include <parallax/pp/pipeline_stage.hpp>
#include <parallax/pp/trace.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace px = parallax;
namespace pp = parallax::pp;
using B = px::host::Backend;
using Mem = B::Memory;
using Mesh = px::DeviceMesh<1, px::dynamic, 1>;  // PP = the number of ranks
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::int64_t seq = 4, batch = 2;
constexpr double mib = 1024.0 * 1024.0;

//! A virtual stage that only takes time: each action sleeps `action` (forward, backward_input, backward_weight
//! alike; a fused backward runs the last two), the forward saves `saved` floats until its backward_input, and a
//! [T, B, 1] activation travels between stages.
class SyntheticStage {
 public:
  using backend = B;
  using value_type = float;
  using Memory = Mem;
  struct Ctx : px::nn::CtxBase {
    px::Tensor<float, Mem> saved;
    px::Shape input;
  };

  SyntheticStage(px::Rank<B>& rank, int stage, int stages, Clock::duration action, std::int64_t saved)
      : rank_(&rank), name_(fmt::format("synthetic {}", stage)), first_(stage == 0), last_(stage + 1 == stages),
        action_(action), saved_(saved) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] px::Rank<B>& rank() const noexcept { return *rank_; }
  [[nodiscard]] px::Shape input_shape(const px::Shape& tokens) const { return px::Shape{tokens[0], tokens[1], 1}; }
  [[nodiscard]] px::nn::ParameterList<float, Mem> parameters() { return {}; }

  [[nodiscard]] pp::StageOutput<float, Mem> forward(Ctx& ctx, const pp::StageInput<float, Mem>& in) {
    work();
    ctx.saved = px::nn::activation<B, float>(*rank_, px::Shape{saved_});
    ctx.input = input_shape(in.tokens.shape());
    if (last_) return {{}, {0.0, in.targets.numel()}};
    return {px::nn::activation<B, float>(*rank_, ctx.input), {}};
  }
  [[nodiscard]] px::Tensor<float, Mem> backward_input(Ctx& ctx, px::View<const float, Mem>, float) {
    work();
    ctx.saved.reset();
    if (first_) return {};
    return px::nn::activation<B, float>(*rank_, ctx.input);
  }
  void backward_weight(Ctx&) { work(); }

 private:
  void work() const { std::this_thread::sleep_until(Clock::now() + action_); }

  px::Rank<B>* rank_;
  std::string name_;
  bool first_, last_;
  Clock::duration action_;
  std::int64_t saved_;
};

struct Args {
  int p = 4, m = 8, v = 2;
  double unit_ms = 20;
  std::string json, trace;
};

//! One schedule's figures.
struct Row {
  std::string name;
  int v = 1;
  double theory = 0, measured = 0, peak_mib = 0;
  std::string theory_timeline, measured_timeline, skipped;
};

//! Schedule S in theory and as PipelineStage runs it.
template <class S>
Row run(const Args& a) {
  Row row;
  row.name = S::name;
  row.v = S::chunks;
  const pp::ScheduleShape shape{a.p, a.m, S::chunks};
  try {
    const pp::Simulation sim = pp::simulate<S>(shape);
    row.theory = sim.bubble();
    row.theory_timeline = pp::timeline(sim);
  } catch (const px::Error& e) {  // e.g. interleaved with m not a multiple of p
    row.skipped = e.what();
    return row;
  }
  const auto action = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double, std::milli>(a.unit_ms / S::chunks));
  const auto saved = static_cast<std::int64_t>(mib / sizeof(float)) / S::chunks;  // 1 MiB per stage and microbatch
  std::vector<std::int32_t> ids(seq * batch, 1);
  const px::View<const std::int32_t, Mem> tokens(ids.data(), px::Shape{seq, batch});
  const std::vector<pp::Microbatch<Mem>> mbs(static_cast<std::size_t>(a.m), {tokens, tokens});
  std::vector<double> peaks(static_cast<std::size_t>(a.p));
  pp::Recording rec;
  px::launch<B>(a.p, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    std::vector<SyntheticStage> chunks;
    for (int c = 0; c < S::chunks; ++c)
      chunks.emplace_back(rank, S::stage_of(mesh.pp_rank(), c, a.p), a.p * S::chunks, action, saved);
    pp::PipelineStage<S, SyntheticStage> stage(mesh, std::move(chunks), {.microbatches = a.m});
    rank.memory().reset_peaks();
    (void)stage.train_step(mbs);
    peaks[static_cast<std::size_t>(rank.id())] = double(rank.memory().peak(px::MemoryCategory::activations)) / mib;
    if (rank.id() == 0) rec = stage.recording();
  });
  row.measured = rec.bubble();
  row.measured_timeline = pp::timeline(rec);
  row.peak_mib = *std::max_element(peaks.begin(), peaks.end());
  if (!a.trace.empty()) pp::write_chrome_trace(fmt::format("{}/{}.trace.json", a.trace, S::name), rec);
  return row;
}

//! Interleaved1F1B<V> for the run-time v.
template <int V = 1>
Row run_interleaved(const Args& a) {
  if constexpr (V < 8) {
    if (a.v != V) return run_interleaved<V + 1>(a);
  }
  return run<pp::Interleaved1F1B<V>>(a);
}

bool parse(int argc, char** argv, Args& a) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], value = argv[i + 1];
    if (k == "--p") a.p = std::atoi(value.c_str());
    else if (k == "--m") a.m = std::atoi(value.c_str());
    else if (k == "--v") a.v = std::atoi(value.c_str());
    else if (k == "--unit-ms") a.unit_ms = std::atof(value.c_str());
    else if (k == "--json") a.json = value;
    else if (k == "--trace") a.trace = value;
    else return false;
  }
  return argc % 2 == 1 && a.p >= 1 && a.m >= 1 && a.v >= 1 && a.v <= 8 && a.unit_ms > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!parse(argc, argv, a)) {
    std::fprintf(stderr, "usage: %s [--p N] [--m N] [--v 1..8] [--unit-ms X] [--json FILE] [--trace DIR]\n", argv[0]);
    return 2;
  }
  std::printf("p = %d pipeline ranks (CPU threads), m = %d microbatches, v = %d chunks per rank (interleaved); a stage's "
              "forward takes %g ms, its backward twice that\n\n",
              a.p, a.m, a.v, a.unit_ms);
  std::vector<Row> rows;
  try {
    rows.push_back(run<pp::GPipe>(a));
    rows.push_back(run<pp::OneFOneB>(a));
    rows.push_back(run_interleaved(a));
    rows.push_back(run<pp::ZeroBubbleH1>(a));
    rows.push_back(run<pp::ZeroBubbleV>(a));
  } catch (const px::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  for (const Row& r : rows) {
    if (!r.skipped.empty()) {
      std::printf("== %s (v = %d): skipped: %s\n\n", r.name.c_str(), r.v, r.skipped.c_str());
      continue;
    }
    std::printf("== %s (v = %d): bubble %.3f in theory, %.3f measured; peak activations %.1f MiB\n", r.name.c_str(),
                r.v, r.theory, r.measured, r.peak_mib);
    std::printf("theory\n%smeasured\n%s\n", r.theory_timeline.c_str(), r.measured_timeline.c_str());
  }
  std::printf("%-12s %4s %13s %15s %9s %22s\n", "schedule", "v", "bubble theory", "bubble measured", "ratio",
              "peak activations MiB");
  std::string json = "{\"schedules\":[";
  for (const Row& r : rows) {
    if (!r.skipped.empty()) continue;
    std::printf("%-12s %4d %13.3f %15.3f %9.2f %22.1f\n", r.name.c_str(), r.v, r.theory, r.measured,
                r.theory > 0 ? r.measured / r.theory : 0.0, r.peak_mib);
    json += fmt::format("{}{{\"name\":\"{}\",\"p\":{},\"m\":{},\"v\":{},\"bubble_theory\":{:.6f},\"bubble_measured\":"
                        "{:.6f},\"peak_activations_mb\":{:.3f}}}",
                        json.back() == '[' ? "" : ",", r.name, a.p, a.m, r.v, r.theory, r.measured, r.peak_mib);
  }
  json += "]}\n";
  if (!a.json.empty()) {
    std::ofstream out(a.json);
    out << json;
    if (!out.flush()) {
      std::fprintf(stderr, "cannot write %s\n", a.json.c_str());
      return 1;
    }
    std::printf("\nwrote %s\n", a.json.c_str());
  }
  return 0;
}

// examples/05_train_gpt/train_gpt.hpp — what train_gpt's translation units share: the options, the run's plan, what
// the ranks report, the mesh shapes this binary runs, and the entry points of the rank loop (trainer.hpp).
//
// The program is split so that its templates compile in parallel: main.cpp (the command line and the output) and
// train_ranks.cpp, compiled once per (mesh type, storage type) pair with `run_ranks` instantiated for that pair.
#pragma once

#include <parallax/parallax.hpp>
#include <parallax/pp/pipeline_stage.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "data.hpp"
#include "gpt.hpp"

namespace train_gpt {

namespace px = parallax;
namespace pp = parallax::pp;

#if defined(__CUDACC__)
using Backend = px::cuda::Backend;
#else
using Backend = px::host::Backend;
#endif

inline constexpr std::string_view program =
    std::string_view(Backend::name) == "cuda" ? "train_gpt_cuda" : "train_gpt";

// -----------------------------------------------------------------------------------------------------------------
// The command line's options and the run's plan (main.cpp parses and checks them).

//! Everything the command line sets.
struct Options {
  int dp = 1, pp = 1, tp = 1, zero = 0;
  std::string schedule = "1f1b";
  std::int64_t batch = 128;
  std::int64_t microbatches = 0;  // 0: 1 without PP, 2 x pp with it
  // seq 0: from the data
  gpt::Config model{.vocab = 256, .seq = 0, .layers = 2, .heads = 4, .dim = 128};
  int steps = 800;
  int warmup = -1;    // -1: 30, at most steps / 10
  int log_every = 0;  // 0: automatic
  float lr = 3e-3f, weight_decay = 0.1f, clip = 1.0f;
  std::string precision = "fp32", backend = Backend::name;
  std::string data, load, save, json, trace;
  bool eval_only = false, timeline = false;
  bool in_order = false;  // LaunchOptions::in_order
  gpt::GivenFlags given;
};

//! What the ranks run: the options resolved, the model's sizes and the data.
struct Plan {
  Options options;
  gpt::Config model;
  px::MeshShape mesh;
  int microbatches = 1, warmup = 0;
  gpt::Dataset train, eval;  // eval: the held-out problems, or the data file's sequences
  std::string data_name, eval_name;
  std::int64_t log_every = 1;

  [[nodiscard]] int ranks() const { return mesh.size(); }
  [[nodiscard]] bool record() const { return options.timeline || !options.trace.empty(); }
};

//! Calls `f.template operator()<S>()` with the schedule named `name`.
template <class F>
void with_schedule(std::string_view name, F&& f) {
  if (name == "gpipe") return f.template operator()<px::GPipe>();
  if (name == "1f1b") return f.template operator()<px::OneFOneB>();
  if (name == "interleaved") return f.template operator()<px::Interleaved1F1B<2>>();
  if (name == "zb") return f.template operator()<px::ZeroBubbleH1>();
  throw px::Error(fmt::format("--schedule {}: not gpipe, 1f1b, interleaved or zb", name));
}

//! The DP x PP x TP meshes this binary runs: the demo's 2 x 2 x 2, instantiated with its static `DeviceMesh` type
//! (every module sees the compile-time extents), and any DP with the PP and TP extents below through `DynamicMesh`
//! views of `DeviceMesh<dynamic, PP, TP>` (per shape, only the mesh's constructor is instantiated).
inline constexpr px::MeshShape static_shape{2, 2, 2};
inline constexpr std::array pp_extents{1, 2, 3, 4, 6, 8};
inline constexpr std::array tp_extents{1, 2, 4, 8};

//! Whether this binary runs shape `s`.
inline bool runs(const px::MeshShape& s) {
  return std::ranges::find(pp_extents, s.pp) != pp_extents.end() &&
         std::ranges::find(tp_extents, s.tp) != tp_extents.end() && s.cp == 1;
}

// -----------------------------------------------------------------------------------------------------------------
// What the ranks report. Each rank writes only its own slots; rank 0 reads them after a barrier.

//! What rank 0 records of a training step.
struct StepFigures {
  double loss = 0, ms = 0, tokens_per_s = 0, grad_norm = 0;
  float lr = 0;
  bool skipped = false;
};

//! Bytes per `px::MemoryCategory`.
using CategoryBytes = std::array<std::size_t, px::memory_category_count>;

//! What the run measured.
struct Report {
  explicit Report(const Plan& plan)
      : step_peak(static_cast<std::size_t>(std::max(plan.options.steps, 1)),
                  std::vector<std::size_t>(static_cast<std::size_t>(plan.ranks()))),
        peak(static_cast<std::size_t>(plan.ranks())),
        peak_by_category(static_cast<std::size_t>(plan.ranks())),
        parameters(static_cast<std::size_t>(plan.ranks())) {}

  std::vector<StepFigures> steps;                   // written by rank 0
  std::vector<std::vector<std::size_t>> step_peak;  // [step][rank]: peak bytes during the step
  std::vector<std::size_t> peak;                    // [rank]: peak bytes during the run
  std::vector<CategoryBytes> peak_by_category;      // [rank][category]
  std::vector<std::int64_t> parameters;             // [rank]: parameters of its pipeline stage (TP/DP rank 0 only)
  std::optional<gpt::EvalStats> eval;
  std::optional<pp::Recording> recording;  // the last training step's pipeline, seen from rank 0
  std::string mesh_type;                   // "DeviceMesh<2, 2, 2, 1>"
  double seconds = 0;
};

//! Folds rank `id`'s peaks since the last reset into the run's, and restarts them; returns the peak total.
std::size_t take_peaks(px::MemoryStats& m, Report& report, int id);
//! Prints the model, the mesh and the run, before the first step (rank 0).
void print_header(const Plan& plan, const Report& report, std::int64_t parameters);
//! Prints step `step` (0-based) as a log line, or redraws the progress bar on a terminal (rank 0).
void print_step(const Plan& plan, const Report& report, int step, double elapsed);

// -----------------------------------------------------------------------------------------------------------------
// The rank loop (trainer.hpp), instantiated in train_ranks.cpp.

//! The mesh types: the static DeviceMesh of `static_shape` (fp32 only: the demo's run), or `DynamicMesh` views.
enum class MeshType { fixed, dynamic };

//! Runs `plan` on its ranks, with mesh type `M` and storage type `T`, filling `report`. Defined in trainer.hpp and
//! instantiated by train_ranks.cpp for (fixed, float), (dynamic, float) and (dynamic, bf16), each in its own
//! translation unit.
template <MeshType M, class T>
void run_ranks(const Plan& plan, Report& report);

}  // namespace train_gpt

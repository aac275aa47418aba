// examples/05_train_gpt/main.cpp — train_gpt, the flagship: a GPT-2 trained on DP x PP x TP ranks with ZeRO, any
// pipeline schedule, fp32 or bf16, on a built-in addition task or a data file; one line per step (loss, speed,
// memory), the held-out loss and accuracy, and optionally a JSON report, a pipeline timeline and a Chrome trace.
//
// Run:  ./build/examples/05_train_gpt/train_gpt --dp 2 --pp 2 --tp 2 --zero 1 --schedule 1f1b   (./scripts/demo)
//       ./build/examples/05_train_gpt/train_gpt --help
//
// Compiled as C++ this is `train_gpt`, whose ranks are CPU threads (host::Backend). Compiled as CUDA (target
// `train_gpt_cuda`, from this same file, when CMake enables the CUDA language) the ranks are threads driving the
// GPUs (cuda::Backend, rank r on GPU r % device count).
//
// Mesh types (see `with_mesh`): the demo's 2 x 2 x 2 runs on the static DeviceMesh<2, 2, 2>; every other shape
// (any DP; PP 1, 2, 3, 4, 6 or 8; TP 1, 2, 4 or 8) on a `DynamicMesh`, a run-time view of DeviceMesh<dynamic, PP, TP>.
// The trainer is instantiated per mesh type, storage type (fp32, bf16) and schedule, which is what its build time
// pays for; so two mesh types, not one per shape.
#include <parallax/parallax.hpp>
#include <parallax/pp/pipeline_stage.hpp>
#include <parallax/pp/trace.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "data.hpp"
#include "gpt.hpp"

namespace px = parallax;
namespace pp = parallax::pp;
using Clock = std::chrono::steady_clock;

#if defined(__CUDACC__)
using Backend = px::cuda::Backend;
#else
using Backend = px::host::Backend;
#endif

namespace {

constexpr std::string_view program = std::string_view(Backend::name) == "cuda" ? "train_gpt_cuda" : "train_gpt";
constexpr int addition_digits = 2;  // the built-in task: two-digit additions
constexpr std::int64_t heldout_problems = 1000;
constexpr double mib = 1024.0 * 1024.0;

// -----------------------------------------------------------------------------------------------------------------
// Options.

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
  gpt::GivenFlags given;
};

//! A command-line flag: its name, what its value looks like (empty for a switch), what it does, and how it is set.
struct Flag {
  std::string_view name, value, help;
  std::function<void(Options&, const std::string&)> set;
};

//! The number in `text` for `flag`, or an Error naming both.
template <class N>
N number(std::string_view flag, const std::string& text) {
  try {
    std::size_t used = 0;
    N n{};
    if constexpr (std::is_floating_point_v<N>)
      n = static_cast<N>(std::stod(text, &used));
    else
      n = static_cast<N>(std::stoll(text, &used));
    if (used == text.size()) return n;
  } catch (const std::exception&) {
  }
  throw px::Error(fmt::format("{}: '{}' is not a number", flag, text));
}

//! The flags, in the order `--help` lists them; "" names start a section.
const std::vector<Flag>& flags() {
  static const std::vector<Flag> all{
      {"", "", "Parallelism (the run uses dp x pp x tp ranks)", {}},
      {"--dp", "N", "data-parallel replicas (default 1)",
       [](Options& o, const std::string& v) { o.dp = number<int>("--dp", v); }},
      {"--pp", "N", "pipeline stages (default 1)",
       [](Options& o, const std::string& v) { o.pp = number<int>("--pp", v); }},
      {"--tp", "N", "tensor-parallel ranks: heads and vocabulary split over them (default 1)",
       [](Options& o, const std::string& v) { o.tp = number<int>("--tp", v); }},
      {"--zero", "S",
       "ZeRO stage 0..3: 0 replicates the AdamW state, 1 shards it over DP, 2 also the gradients, 3 "
       "also the parameters (default 0)",
       [](Options& o, const std::string& v) { o.zero = number<int>("--zero", v); }},
      {"--schedule", "NAME",
       "pipeline schedule: gpipe, 1f1b, interleaved (2 chunks per rank) or zb (ZB-H1) "
       "(default 1f1b)",
       [](Options& o, const std::string& v) { o.schedule = v; }},
      {"--microbatches", "M",
       "each DP rank splits its batch / dp sequences into M: the pipeline's microbatches, or "
       "gradient accumulation without PP (default 1 without PP, 2 x pp with it)",
       [](Options& o, const std::string& v) { o.microbatches = number<std::int64_t>("--microbatches", v); }},
      {"--sequence-parallel", "", "keep LayerNorm and residual activations as sequence shards over TP",
       [](Options& o, const std::string&) { o.model.sequence_parallel = true; }},
      {"--recompute", "", "activation checkpointing: keep each block's input only, recompute it in backward",
       [](Options& o, const std::string&) { o.model.checkpoint = true; }},
      {"", "", "Model (GPT-2: pre-LayerNorm blocks, learned positions, tied embedding)", {}},
      {"--layers", "N", "transformer blocks (default 2)",
       [](Options& o, const std::string& v) {
         o.model.layers = number<std::int64_t>("--layers", v);
         o.given.layers = true;
       }},
      {"--heads", "N", "attention heads (default 4)",
       [](Options& o, const std::string& v) { o.model.heads = number<std::int64_t>("--heads", v); }},
      {"--dim", "N", "model width (default 128)",
       [](Options& o, const std::string& v) {
         o.model.dim = number<std::int64_t>("--dim", v);
         o.given.dim = true;
       }},
      {"--seq", "N",
       "tokens per sequence, also the learned positions (default 10 for the built-in task, 64 for "
       "--data, the file's with --load)",
       [](Options& o, const std::string& v) {
         o.model.seq = number<std::int64_t>("--seq", v);
         o.given.seq = true;
       }},
      {"--vocab", "N", "vocabulary size (default 256, bytes; the file's with --load)",
       [](Options& o, const std::string& v) {
         o.model.vocab = number<std::int64_t>("--vocab", v);
         o.given.vocab = true;
       }},
      {"--seed", "N", "seed of the initial weights (default 1)",
       [](Options& o, const std::string& v) { o.model.seed = number<std::uint64_t>("--seed", v); }},
      {"", "", "Training", {}},
      {"--batch", "B",
       "sequences per optimizer step, over all DP ranks; the loss of a step is the mean over every "
       "target token of them (default 128)",
       [](Options& o, const std::string& v) { o.batch = number<std::int64_t>("--batch", v); }},
      {"--steps", "N", "optimizer steps (default 800)",
       [](Options& o, const std::string& v) { o.steps = number<int>("--steps", v); }},
      {"--lr", "X", "peak learning rate of AdamW: linear warmup, then cosine decay to lr / 10 (default 3e-3)",
       [](Options& o, const std::string& v) { o.lr = number<float>("--lr", v); }},
      {"--warmup", "N", "warmup steps (default 30, at most steps / 10)",
       [](Options& o, const std::string& v) { o.warmup = number<int>("--warmup", v); }},
      {"--precision", "P",
       "fp32, or bf16 (bf16 parameters, gradients and activations; fp32 master weights and "
       "AdamW state) (default fp32)",
       [](Options& o, const std::string& v) { o.precision = v; }},
      {"--backend", "B",
       "host (CPU threads, this binary: train_gpt) or cuda (GPUs, the CUDA build train_gpt_cuda) "
       "(default: the binary's)",
       [](Options& o, const std::string& v) { o.backend = v; }},
      {"", "", "Data and weights", {}},
      {"--data", "FILE",
       "train on a file instead of the built-in addition task: raw text (byte tokens), or uint16 "
       "token ids when it ends in .bin or .u16; n tokens make floor((n - 1) / seq) sequences",
       [](Options& o, const std::string& v) { o.data = v; }},
      {"--load", "FILE",
       "start from GPT-2 weights in a safetensors file (Hugging Face names); it fixes vocab, seq, "
       "layers and dim",
       [](Options& o, const std::string& v) { o.load = v; }},
      {"--save", "FILE", "write the trained weights there (safetensors, Hugging Face GPT-2 names)",
       [](Options& o, const std::string& v) { o.save = v; }},
      {"--eval-only", "",
       "no training: the mean loss over all sequences (the data file's, or the held-out "
       "problems) in batches of --batch, and the accuracy",
       [](Options& o, const std::string&) { o.eval_only = true; }},
      {"", "", "Output", {}},
      {"--json", "FILE",
       "write the run's figures as JSON (mesh, per-step loss and speed, eval, peak bytes per rank "
       "and category)",
       [](Options& o, const std::string& v) { o.json = v; }},
      {"--timeline", "", "print the last training step's pipeline timeline (ASCII, one line per pipeline rank)",
       [](Options& o, const std::string&) { o.timeline = true; }},
      {"--trace", "FILE", "write the last training step's pipeline as a Chrome trace (ui.perfetto.dev)",
       [](Options& o, const std::string& v) { o.trace = v; }},
      {"--log-every", "N",
       "print every N-th step (default: every step up to 50 steps, else about 25 lines; a "
       "progress bar between them on a terminal)",
       [](Options& o, const std::string& v) { o.log_every = number<int>("--log-every", v); }},
      {"--help", "", "this text", {}},
  };
  return all;
}

std::string help() {
  std::string out = fmt::format(
      "usage: {} [options]\n\n"
      "Trains a GPT-2 on dp x pp x tp ranks ({}) with AdamW and ZeRO, and reports the loss,\n"
      "speed and memory of each step and the held-out loss and accuracy. Without --data it learns\n"
      "two-digit additions (\"07+35=240\": the sum's digits reversed), holding out {} problems to measure\n"
      "accuracy on.\n",
      program, Backend::name == std::string_view("cuda") ? "threads driving GPUs" : "CPU threads", heldout_problems);
  for (const Flag& f : flags()) {
    if (f.name.empty()) {
      out += fmt::format("\n{}:\n", f.help);
      continue;
    }
    // "  --flag VALUE        help", the help wrapped at 100 columns.
    constexpr std::size_t indent = 22, width = 100;
    std::string line = fmt::format("  {}{}{}", f.name, f.value.empty() ? "" : " ", f.value);
    line.resize(std::max(line.size() + 1, indent), ' ');
    bool fresh = true;  // nothing on the line after the indent yet
    for (std::size_t at = 0; at < f.help.size();) {
      const std::size_t end = std::min(f.help.find(' ', at), f.help.size());
      const std::string_view word = f.help.substr(at, end - at);
      if (!fresh && line.size() + 1 + word.size() > width) {
        out += line + '\n';
        line.assign(indent, ' ');
        fresh = true;
      }
      line += fresh ? "" : " ";
      line += word;
      fresh = false;
      at = end + 1;
    }
    out += line + '\n';
  }
  return out;
}

//! The options of `args`; throws Error for an unknown flag or a missing or malformed value.
Options parse(std::span<char*> args) {
  Options o;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string arg = args[i];
    const auto f =
        std::find_if(flags().begin(), flags().end(), [&](const Flag& x) { return !x.name.empty() && x.name == arg; });
    if (f == flags().end()) throw px::Error(fmt::format("unknown argument '{}' (see --help)", arg));
    std::string value;
    if (!f->value.empty()) {
      if (i + 1 >= args.size()) throw px::Error(fmt::format("{} needs a value ({})", arg, f->value));
      value = args[++i];
    }
    f->set(o, value);
  }
  return o;
}

// -----------------------------------------------------------------------------------------------------------------
// Compile-time choices: the schedules, the ZeRO stages and the mesh types this binary instantiates.

//! Calls `f.template operator()<S>()` with the schedule named `name`.
template <class F>
void with_schedule(std::string_view name, F&& f) {
  if (name == "gpipe") return f.template operator()<px::GPipe>();
  if (name == "1f1b") return f.template operator()<px::OneFOneB>();
  if (name == "interleaved") return f.template operator()<px::Interleaved1F1B<2>>();
  if (name == "zb") return f.template operator()<px::ZeroBubbleH1>();
  throw px::Error(fmt::format("--schedule {}: not gpipe, 1f1b, interleaved or zb", name));
}

//! A `DeviceMesh` seen through run-time extents, as `std::dextents` views any `std::extents`: the model, the optimizer
//! and the checkpoint code are instantiated once for it, whatever the shape of the mesh it views. It offers what
//! they ask of a mesh (groups, sizes, coordinates, the rank), forwarding to the viewed mesh, which must outlive it.
class DynamicMesh {
 public:
  static constexpr int static_tp = px::dynamic;  // no compile-time TP extent to check `fixed<N>` sizes against

  template <int DP, int PP, int TP, int CP>
  explicit DynamicMesh(px::DeviceMesh<DP, PP, TP, CP>& m)
      : name_(fmt::format("DynamicMesh over {}", m.name())),
        shape_(m.shape()),
        coords_(m.coords()),
        groups_{&m.dp(), &m.pp(), &m.tp(), &m.cp()},
        dp_cp_(&m.dp_cp()),
        world_(&m.world()),
        rank_(&px::mesh_rank<Backend>(m)) {}

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] const px::MeshShape& shape() const noexcept { return shape_; }
  [[nodiscard]] const px::Coords& coords() const noexcept { return coords_; }
  [[nodiscard]] int rank() const { return world_->rank(); }
  [[nodiscard]] int dp_size() const noexcept { return shape_.dp; }
  [[nodiscard]] int pp_size() const noexcept { return shape_.pp; }
  [[nodiscard]] int tp_size() const noexcept { return shape_.tp; }
  [[nodiscard]] int dp_rank() const noexcept { return coords_.dp; }
  [[nodiscard]] int pp_rank() const noexcept { return coords_.pp; }
  [[nodiscard]] int tp_rank() const noexcept { return coords_.tp; }
  [[nodiscard]] px::Communicator& group(px::Axis a) const noexcept { return *groups_[static_cast<std::size_t>(a)]; }
  [[nodiscard]] px::Communicator& pp() const noexcept { return group(px::Axis::pp); }
  [[nodiscard]] px::Communicator& tp() const noexcept { return group(px::Axis::tp); }
  [[nodiscard]] px::Communicator& dp_cp() const noexcept { return *dp_cp_; }
  [[nodiscard]] px::Communicator& world() const noexcept { return *world_; }
  template <px::Backend B>
  requires std::same_as<B, Backend>
  [[nodiscard]] px::Rank<B>& backend_rank() const noexcept { return *rank_; }

 private:
  std::string name_;
  px::MeshShape shape_;
  px::Coords coords_;
  std::array<px::Communicator*, 4> groups_;  // by px::Axis
  px::Communicator *dp_cp_, *world_;
  px::Rank<Backend>* rank_;
};

//! The DP x PP x TP meshes this binary runs: the demo's 2 x 2 x 2, instantiated with its static `DeviceMesh` type
//! (every module sees the compile-time extents), and any DP with the PP and TP extents below through `DynamicMesh`
//! views of `DeviceMesh<dynamic, PP, TP>` (per shape, only the mesh's constructor is instantiated).
constexpr px::MeshShape static_shape{2, 2, 2};
constexpr std::array pp_extents{1, 2, 3, 4, 6, 8};
constexpr std::array tp_extents{1, 2, 4, 8};

//! Whether this binary runs shape `s`.
bool runs(const px::MeshShape& s) {
  return std::ranges::find(pp_extents, s.pp) != pp_extents.end() &&
         std::ranges::find(tp_extents, s.tp) != tp_extents.end() && s.cp == 1;
}

//! Builds the mesh of shape `s` (one `runs`) on `rank` and calls `f(mesh)` with it.
template <std::size_t I = 0, std::size_t J = 0, class F>
void with_mesh(const px::MeshShape& s, px::Rank<Backend>& rank, F&& f) {
  if constexpr (I == 0 && J == 0) {
    if (s == static_shape) {
      px::DeviceMesh<static_shape.dp, static_shape.pp, static_shape.tp> mesh(rank);
      return f(mesh);
    }
  }
  constexpr int PP = pp_extents[I], TP = tp_extents[J];
  if (s.pp == PP && s.tp == TP) {
    px::DeviceMesh<px::dynamic, PP, TP> mesh(rank);
    DynamicMesh view(mesh);
    return f(view);
  }
  if constexpr (J + 1 < tp_extents.size())
    return with_mesh<I, J + 1>(s, rank, std::forward<F>(f));
  else if constexpr (I + 1 < pp_extents.size())
    return with_mesh<I + 1, 0>(s, rank, std::forward<F>(f));
  else
    throw px::Error(fmt::format("with_mesh: no mesh type for DP {} x PP {} x TP {}", s.dp, s.pp, s.tp));
}

//! Calls `f.template operator()<T>()` with the storage type of precision `name`.
template <class F>
void with_precision(std::string_view name, F&& f) {
  if (name == "fp32") return f.template operator()<float>();
  if (name == "bf16") return f.template operator()<px::bf16>();
  throw px::Error(fmt::format("--precision {}: not fp32 or bf16", name));
}

//! AdamW under any ZeRO stage, behind one interface (so each stage is instantiated once per mesh and precision,
//! not once per schedule too).
template <class B, class T>
class Optimizer {
 public:
  using Parameter = px::nn::Parameter<T, typename B::Memory>;
  virtual ~Optimizer() = default;
  virtual px::optim::StepReport step() = 0;
  //! `p`'s local tensor (collective over DP under ZeRO-3).
  virtual std::vector<T> value(const Parameter& p) = 0;
};

//! `ShardedOptimizer<AdamW, Z, Mesh, B>` as an `Optimizer`.
template <class Z, class Mesh, class B, class T>
class ShardedAdamW final : public Optimizer<B, T> {
 public:
  ShardedAdamW(Mesh& mesh, const px::nn::ParameterList<T, typename B::Memory>& params, px::optim::AdamW::Hyper hyper,
               px::optim::ShardedOptions options)
      : opt_(mesh, params, hyper, std::move(options)) {}
  px::optim::StepReport step() override { return opt_.step(); }
  std::vector<T> value(const typename Optimizer<B, T>::Parameter& p) override { return opt_.value(p); }

 private:
  px::ShardedOptimizer<px::optim::AdamW, Z, Mesh, B> opt_;
};

//! AdamW under ZeRO stage `zero` (0..3) over `params`.
template <class Mesh, class B, class T>
std::unique_ptr<Optimizer<B, T>> make_optimizer(int zero, Mesh& mesh,
                                                const px::nn::ParameterList<T, typename B::Memory>& params,
                                                px::optim::AdamW::Hyper hyper, px::optim::ShardedOptions options) {
  switch (zero) {
    case 0:
      return std::make_unique<ShardedAdamW<px::Zero<0>, Mesh, B, T>>(mesh, params, hyper, std::move(options));
    case 1:
      return std::make_unique<ShardedAdamW<px::Zero<1>, Mesh, B, T>>(mesh, params, hyper, std::move(options));
    case 2:
      return std::make_unique<ShardedAdamW<px::Zero<2>, Mesh, B, T>>(mesh, params, hyper, std::move(options));
    default:
      return std::make_unique<ShardedAdamW<px::Zero<3>, Mesh, B, T>>(mesh, params, hyper, std::move(options));
  }
}

// -----------------------------------------------------------------------------------------------------------------
// The run's plan, checked before any rank starts.

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

//! A mesh of shape `s` as far as `gpt::check_fits` looks at one, so the model's fit is checked before launch.
struct ShapeOnly {
  px::MeshShape s;
  [[nodiscard]] int pp_size() const { return s.pp; }
  [[nodiscard]] int tp_size() const { return s.tp; }
  [[nodiscard]] int rank() const { return -1; }
};

//! The plan of `o`; throws Error with one clear message for any option that cannot run.
Plan make_plan(const Options& o) {
  Plan p;
  p.options = o;
  if (o.backend != Backend::name)
    throw px::Error(o.backend == "cuda"
                        ? std::string("--backend cuda: this binary is the host build; build train_gpt_cuda (the same "
                                      "source compiled as CUDA, defined when CMake finds CUDA, NCCL and nvcc): cmake "
                                      "--build build --target train_gpt_cuda")
                    : o.backend == "host"
                        ? std::string("--backend host: this binary is the CUDA build; run train_gpt for CPU threads")
                        : fmt::format("--backend {}: not host or cuda", o.backend));
  if (o.dp < 1 || o.pp < 1 || o.tp < 1)
    throw px::Error(fmt::format("--dp {} --pp {} --tp {}: every extent must be at least 1", o.dp, o.pp, o.tp));
  p.mesh = {o.dp, o.pp, o.tp, 1};
  if (!runs(p.mesh))
    throw px::Error(fmt::format("--pp {} --tp {}: this build runs PP in {} and TP in {} (any DP)", o.pp, o.tp,
                                pp_extents, tp_extents));
  if (o.zero < 0 || o.zero > 3) throw px::Error(fmt::format("--zero {}: the ZeRO stage is 0, 1, 2 or 3", o.zero));
  with_precision(o.precision, [&]<class>() {});  // (a capture: nvcc warns about a captureless template lambda)
  if (o.microbatches < 0) throw px::Error(fmt::format("--microbatches {} is negative", o.microbatches));
  p.microbatches = static_cast<int>(o.microbatches > 0 ? o.microbatches : o.pp > 1 ? 2 * o.pp : 1);
  if (o.batch < 1 || o.batch % (std::int64_t{o.dp} * p.microbatches) != 0)
    throw px::Error(
        fmt::format("--batch {} does not split into --dp {} x --microbatches {} = {} equal parts{}", o.batch, o.dp,
                    p.microbatches, o.dp * p.microbatches,
                    o.microbatches > 0 || o.pp == 1 ? "" : " (--microbatches is 2 x pp by default; give another)"));
  int chunks = 1;  // model chunks per rank
  with_schedule(o.schedule, [&]<class S>() {
    chunks = S::chunks;
    try {
      pp::validate<S>({o.pp, p.microbatches, S::chunks});
    } catch (const px::Error& e) {
      throw px::Error(fmt::format("--schedule {} with --pp {} and --microbatches {}: {}", o.schedule, o.pp,
                                  p.microbatches, e.what()));
    }
  });
  if (o.eval_only && o.load.empty()) throw px::Error("--eval-only evaluates the weights of --load FILE; give one");
  if (o.eval_only && !o.save.empty()) throw px::Error("--eval-only does not train: there is nothing to --save");
  if (o.eval_only && (o.timeline || !o.trace.empty()))
    throw px::Error("--timeline and --trace show a training step; --eval-only runs none");
  if (!o.eval_only && o.steps < 1) throw px::Error(fmt::format("--steps {}: train at least one step", o.steps));
  if (!(o.lr > 0)) throw px::Error(fmt::format("--lr {}: the learning rate must be positive", o.lr));
  if (o.warmup > o.steps) throw px::Error(fmt::format("--warmup {} is more than --steps {}", o.warmup, o.steps));
  p.warmup = o.warmup >= 0 ? o.warmup : std::min(30, o.steps / 10);
  if (o.log_every < 0) throw px::Error(fmt::format("--log-every {} is negative", o.log_every));

  // The model: the flags, sizes from the weights file, the sequence length from the data.
  gpt::Config c = o.model;
  if (c.seq == 0) c.seq = o.data.empty() ? 10 : 64;
  if (!o.load.empty()) c = gpt::config_from_file(o.load, c, o.given);
  gpt::check_fits(ShapeOnly{p.mesh}, c, chunks);
  p.model = c;

  // The data.
  if (o.data.empty()) {
    auto task = gpt::addition(c.seq, {.digits = addition_digits, .heldout = heldout_problems, .seed = 1});
    if (c.vocab < 128)
      throw px::Error(
          fmt::format("--vocab {}: the built-in task's characters are bytes below 128; use --data", c.vocab));
    p.train = std::move(task.train);
    p.eval = std::move(task.heldout);
    p.data_name = fmt::format("the addition task: {} training problems", p.train.size());
    p.eval_name = "held-out problems";
  } else {
    p.train = gpt::load_file(o.data, c.seq, c.vocab);
    p.eval = p.train;
    p.data_name = fmt::format("'{}': {} sequences of {} tokens", o.data, p.train.size(), c.seq);
    p.eval_name = "sequences of the data file";
  }
  if (o.log_every > 0)
    p.log_every = o.log_every;
  else
    p.log_every = o.steps <= 50 ? 1 : (o.steps + 24) / 25;
  return p;
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
std::size_t take_peaks(px::MemoryStats& m, Report& report, int id) {
  const auto r = static_cast<std::size_t>(id);
  for (int c = 0; c < px::memory_category_count; ++c)
    report.peak_by_category[r][static_cast<std::size_t>(c)] =
        std::max(report.peak_by_category[r][static_cast<std::size_t>(c)], m.peak(static_cast<px::MemoryCategory>(c)));
  const std::size_t total = m.peak_total();
  report.peak[r] = std::max(report.peak[r], total);
  m.reset_peaks();
  return total;
}

// -----------------------------------------------------------------------------------------------------------------
// Printing (rank 0).

//! MiB with one decimal below 10 MiB, whole ones above.
std::string human_bytes(double bytes) {
  return bytes >= 10 * mib ? fmt::format("{:.0f}", bytes / mib) : fmt::format("{:.1f}", bytes / mib);
}

//! "1.2 1.2 1.1 1.1" MiB, or "1.1-1.2" when there are many ranks.
std::string per_rank_mib(std::span<const std::size_t> bytes) {
  if (bytes.size() <= 8) {
    std::string s;
    for (const std::size_t b : bytes) s += fmt::format("{}{}", s.empty() ? "" : " ", human_bytes(double(b)));
    return s;
  }
  const auto [lo, hi] = std::minmax_element(bytes.begin(), bytes.end());
  return fmt::format("{}-{}", human_bytes(double(*lo)), human_bytes(double(*hi)));
}

//! "42s", "3m05s".
std::string duration(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  return s >= 60 ? fmt::format("{}m{:02}s", s / 60, s % 60) : fmt::format("{}s", s);
}

//! Prints step `step` (0-based) as a log line, or redraws the progress bar on a terminal.
void print_step(const Plan& plan, const Report& report, int step, double elapsed) {
  static const bool terminal = isatty(fileno(stdout)) != 0;
  const StepFigures& f = report.steps.back();
  const int steps = plan.options.steps, done = step + 1;
  const bool log = done == 1 || done == steps || done % plan.log_every == 0;
  if (log) {
    fmt::print("{}step {:>{}}/{}  loss {:.4f}{}  lr {:.2e}  {:7.1f} ms  {:8.0f} tok/s  peak MiB/rank {}\n",
               terminal ? "\r\033[K" : "", done, fmt::formatted_size("{}", steps), steps, f.loss,
               f.skipped ? " (skipped: non-finite gradient)" : "", f.lr, f.ms, f.tokens_per_s,
               per_rank_mib(report.step_peak[static_cast<std::size_t>(step)]));
  } else if (terminal) {
    constexpr int width = 30;
    const int filled = done * width / steps;
    fmt::print("\r\033[K[{}{}] {}/{}  loss {:.4f}  eta {}", std::string(static_cast<std::size_t>(filled), '#'),
               std::string(static_cast<std::size_t>(width - filled), '.'), done, steps, f.loss,
               duration(elapsed / done * (steps - done)));
  }
  std::fflush(stdout);
}

//! The model, the mesh and the run, before the first step.
void print_header(const Plan& plan, const Report& report, std::int64_t parameters) {
  const Options& o = plan.options;
  const gpt::Config& c = plan.model;
  fmt::print("{}: GPT-2 {} layers x dim {} x {} heads, vocab {}, seq {}: {:.2f} M parameters{}\n", program, c.layers,
             c.dim, c.heads, c.vocab, c.seq, double(parameters) / 1e6,
             o.load.empty() ? "" : fmt::format(" from '{}'", o.load));
  fmt::print(
      "mesh DP {} x PP {} x TP {} = {} {} rank{} ({}){}{} | ZeRO-{} | {} schedule, {} microbatch{} per DP rank | "
      "{}\n",
      o.dp, o.pp, o.tp, plan.ranks(), Backend::name, plan.ranks() == 1 ? "" : "s", report.mesh_type,
      c.sequence_parallel ? " | sequence parallel" : "", c.checkpoint ? " | recompute" : "", o.zero, o.schedule,
      plan.microbatches, plan.microbatches == 1 ? "" : "es", o.precision);
  if (!o.eval_only)
    fmt::print("data: {} | batch {} sequences ({} tokens) | {} steps of AdamW, lr {:.1e} (warmup {}, cosine)\n",
               plan.data_name, o.batch, o.batch * c.seq, o.steps, o.lr, plan.warmup);
  std::fflush(stdout);
}

//! The evaluation's loss and accuracy.
void print_eval(const Plan& plan, const gpt::EvalStats& s) {
  fmt::print("eval: loss {:.6f} over {} target tokens | accuracy {:.1f}% ({} of {} {} entirely right)\n", s.loss(),
             s.tokens, 100 * s.accuracy(), s.correct_sequences, s.sequences, plan.eval_name);
}

// -----------------------------------------------------------------------------------------------------------------
// One rank.

//! Microbatches of one global batch: this DP rank's `m` slices, in the backend's memory.
template <class B>
struct Microbatches {
  std::vector<px::Tensor<std::int32_t, typename B::Memory>> tensors;
  std::vector<pp::Microbatch<typename B::Memory>> views;

  Microbatches(px::Rank<B>& rank, const gpt::Batch& global, int dp_rank, int dp, int m) {
    const auto upload = [&](const std::vector<std::int32_t>& host, const px::Shape& shape) {
      auto& t = tensors.emplace_back(rank.allocator(), shape, px::MemoryCategory::workspace);
      px::copy_from(t.view(), std::span<const std::int32_t>(host));
      return t.cview();
    };
    tensors.reserve(2 * static_cast<std::size_t>(m));
    for (int i = 0; i < m; ++i) {
      const gpt::Batch mb = gpt::slice(global, dp_rank, dp, i, m);
      const auto tokens = upload(mb.tokens, mb.shape());
      views.push_back({tokens, upload(mb.targets, mb.shape())});
    }
  }
};

//! The pipeline of one schedule and the tie of its token tables, behind one interface (so the training loop is
//! instantiated once per mesh and precision, not once per schedule too).
template <class B, class T>
class Pipeline {
 public:
  using Memory = typename B::Memory;
  virtual ~Pipeline() = default;
  [[nodiscard]] virtual px::nn::ParameterList<T, Memory> parameters() = 0;
  //! Ties the token tables' gradients: after the optimizer is built, undone before it is destroyed (see
  //! gpt::TiedEmbedding).
  virtual void tie() = 0;
  virtual void untie() = 0;
  //! A training step, its tied gradients summed.
  virtual pp::StepResult train_step(std::span<const pp::Microbatch<Memory>> mbs) = 0;
  //! The statistics of a global batch (the same on every rank).
  virtual gpt::EvalStats evaluate(std::span<const pp::Microbatch<Memory>> mbs) = 0;
  [[nodiscard]] virtual const pp::Recording& recording() const = 0;
};

//! `gpt::Pipeline<S, Mesh, B, T>` and its `gpt::TiedEmbedding` as a `Pipeline`.
template <class S, class Mesh, class B, class T>
class PipelineOf final : public Pipeline<B, T> {
 public:
  using Memory = typename B::Memory;
  PipelineOf(Mesh& mesh, const Plan& plan)
      : mesh_(&mesh),
        pipeline_(mesh, gpt::make_chunks<S, B, T>(mesh, plan.model),
                  {.microbatches = plan.microbatches, .ignore_index = gpt::ignore_index, .record = plan.record()}) {}
  px::nn::ParameterList<T, Memory> parameters() override { return pipeline_.parameters(); }
  void tie() override { tie_.emplace(*mesh_, pipeline_); }
  void untie() override { tie_.reset(); }
  pp::StepResult train_step(std::span<const pp::Microbatch<Memory>> mbs) override {
    const pp::StepResult r = pipeline_.train_step(mbs);
    tie_->sync();
    return r;
  }
  gpt::EvalStats evaluate(std::span<const pp::Microbatch<Memory>> mbs) override {
    return gpt::evaluate(*mesh_, pipeline_, mbs);
  }
  const pp::Recording& recording() const override { return pipeline_.recording(); }

 private:
  Mesh* mesh_;
  gpt::Pipeline<S, Mesh, B, T> pipeline_;
  std::optional<gpt::TiedEmbedding<Mesh, B, T>> tie_;
};

//! This rank's pipeline of the plan's schedule.
template <class Mesh, class B, class T>
std::unique_ptr<Pipeline<B, T>> make_pipeline(Mesh& mesh, const Plan& plan) {
  std::unique_ptr<Pipeline<B, T>> p;
  with_schedule(plan.options.schedule, [&]<class S>() { p = std::make_unique<PipelineOf<S, Mesh, B, T>>(mesh, plan); });
  return p;
}

//! The statistics of `d` evaluated in batches of `batch` sequences (the same on every rank).
template <class Mesh, class B, class T>
gpt::EvalStats evaluate(Mesh& mesh, Pipeline<B, T>& pipeline, const gpt::Dataset& d, const Plan& plan) {
  gpt::EvalStats total;
  for (std::int64_t i = 0; i < gpt::eval_batches(d, plan.options.batch); ++i) {
    const Microbatches<B> mbs(px::mesh_rank<B>(mesh), gpt::eval_batch(d, i, plan.options.batch), mesh.dp_rank(),
                              mesh.dp_size(), plan.microbatches);
    total += pipeline.evaluate(mbs.views);
  }
  return total;
}

//! The weights as `opt` holds them (gathered under ZeRO-3), written to `path` with Hugging Face's names.
template <class Mesh, class B, class T>
void save(Mesh& mesh, Optimizer<B, T>& opt, const px::nn::ParameterList<T, typename B::Memory>& params,
          const std::string& path) {
  std::deque<px::nn::Parameter<T, typename B::Memory>> copies;
  px::nn::ParameterList<T, typename B::Memory> list;
  for (const auto* p : params) {
    const std::vector<T> value = opt.value(*p);
    auto& copy = copies.emplace_back(px::mesh_rank<B>(mesh).allocator(), p->spec());
    px::copy_from(copy.value(), std::span<const T>(value));
    list.push_back(&copy);
  }
  px::checkpoint::save(mesh, list, path, gpt::hf_names());
}

//! One rank's run on `mesh`.
template <class Mesh, class B, class T>
void train(Mesh& mesh, const Plan& plan, Report& report) {
  const Options& o = plan.options;
  px::Rank<B>& rank = px::mesh_rank<B>(mesh);
  if (rank.id() == 0) report.mesh_type = mesh.name();
  const std::unique_ptr<Pipeline<B, T>> pipeline = make_pipeline<Mesh, B, T>(mesh, plan);
  const auto params = pipeline->parameters();
  if (!o.load.empty()) px::checkpoint::load(mesh, params, o.load, gpt::hf_names());
  if (mesh.dp_rank() == 0 && mesh.tp_rank() == 0)
    for (const auto* p : params)
      if (p->name() != gpt::head_weight)
        report.parameters[static_cast<std::size_t>(rank.id())] += p->spec().global.numel();

  const auto barrier = [&] { mesh.world().barrier(); };
  barrier();
  if (rank.id() == 0) {
    std::int64_t total = 0;
    for (const std::int64_t n : report.parameters) total += n;
    print_header(plan, report, total);
  }
  const auto started = Clock::now();
  if (o.eval_only) {
    (void)take_peaks(rank.memory(), report, rank.id());
    const gpt::EvalStats s = evaluate(mesh, *pipeline, plan.eval, plan);
    (void)take_peaks(rank.memory(), report, rank.id());
    if (rank.id() == 0) {
      report.eval = s;
      report.seconds = std::chrono::duration<double>(Clock::now() - started).count();
    }
    return;
  }

  const px::optim::WarmupCosine lr{.peak = o.lr, .min = o.lr / 10, .warmup_steps = plan.warmup, .total_steps = o.steps};
  const auto opt =
      make_optimizer<Mesh, B, T>(o.zero, mesh, params, {.lr = o.lr, .weight_decay = o.weight_decay},
                                 {.accumulation = plan.microbatches, .clip_norm = o.clip, .lr_schedule = lr});
  pipeline->tie();
  struct Untie {
    Pipeline<B, T>& p;
    ~Untie() { p.untie(); }
  } untie{*pipeline};
  (void)take_peaks(rank.memory(), report, rank.id());  // the model and the optimizer's state

  for (int step = 0; step < o.steps; ++step) {
    const auto t0 = Clock::now();
    const Microbatches<B> mbs(rank, gpt::train_batch(plan.train, step, o.batch), mesh.dp_rank(), mesh.dp_size(),
                              plan.microbatches);
    const pp::StepResult r = pipeline->train_step(mbs.views);
    const px::optim::StepReport u = opt->step();
    report.step_peak[static_cast<std::size_t>(step)][static_cast<std::size_t>(rank.id())] =
        take_peaks(rank.memory(), report, rank.id());
    barrier();
    if (rank.id() != 0) continue;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    report.steps.push_back({.loss = r.loss,
                            .ms = 1e3 * seconds,
                            .tokens_per_s = double(o.batch * plan.model.seq) / seconds,
                            .grad_norm = u.grad_norm,
                            .lr = u.lr,
                            .skipped = u.skipped});
    print_step(plan, report, step, std::chrono::duration<double>(Clock::now() - started).count());
  }
  if (rank.id() == 0 && plan.record()) report.recording = pipeline->recording();

  const gpt::EvalStats s = evaluate(mesh, *pipeline, plan.eval, plan);
  if (rank.id() == 0) report.eval = s;
  if (!o.save.empty()) save(mesh, *opt, params, o.save);
  (void)take_peaks(rank.memory(), report, rank.id());
  if (rank.id() == 0) report.seconds = std::chrono::duration<double>(Clock::now() - started).count();
}

//! Runs the plan on its ranks.
void run(const Plan& plan, Report& report) {
  with_precision(plan.options.precision, [&]<class T>() {
    px::launch<Backend>(plan.ranks(), [&](px::Rank<Backend>& rank) {
      with_mesh(plan.mesh, rank, [&]<class Mesh>(Mesh& mesh) { train<Mesh, Backend, T>(mesh, plan, report); });
    });
  });
}

// -----------------------------------------------------------------------------------------------------------------
// Results.

//! The report as JSON (the keys `--help` promises, plus each step's learning rate and gradient norm).
void write_json(const Plan& plan, const Report& report, const std::string& path) {
  using Json = nlohmann::ordered_json;
  const Options& o = plan.options;
  Json j;
  j["mesh"] = {{"dp", o.dp}, {"pp", o.pp}, {"tp", o.tp}};
  j["zero"] = o.zero;
  j["schedule"] = o.schedule;
  j["precision"] = o.precision;
  j["steps"] = Json::array();
  for (std::size_t i = 0; i < report.steps.size(); ++i) {
    const StepFigures& f = report.steps[i];
    j["steps"].push_back({{"step", i + 1},
                          {"loss", f.loss},
                          {"ms", f.ms},
                          {"tokens_per_s", f.tokens_per_s},
                          {"lr", f.lr},
                          {"grad_norm", f.grad_norm}});
  }
  if (report.eval) j["eval"] = {{"loss", report.eval->loss()}, {"accuracy", report.eval->accuracy()}};
  j["peak_bytes_per_rank"] = report.peak;
  j["bytes_by_category"] = Json::array();
  for (const CategoryBytes& bytes : report.peak_by_category) {
    Json r = Json::object();
    for (int c = 0; c < px::memory_category_count; ++c)
      r[std::string(px::name(static_cast<px::MemoryCategory>(c)))] = bytes[static_cast<std::size_t>(c)];
    j["bytes_by_category"].push_back(std::move(r));
  }
  std::ofstream out(path);
  out << j.dump(2) << '\n';
  if (!out.flush()) throw px::Error(fmt::format("--json {}: cannot write the file", path));
}

//! What the run did, after it: totals, eval, memory, the timeline, and the files written.
void print_summary(const Plan& plan, const Report& report) {
  const Options& o = plan.options;
  if (report.steps.empty()) fmt::print("evaluated in {}\n", duration(report.seconds));
  if (!report.steps.empty()) {
    double ms = 0;
    for (const StepFigures& f : report.steps) ms += f.ms;
    fmt::print("trained {} steps in {}: loss {:.4f} -> {:.4f}, {:.1f} ms/step, {:.0f} tokens/s\n", report.steps.size(),
               duration(report.seconds), report.steps.front().loss, report.steps.back().loss,
               ms / double(report.steps.size()),
               double(o.batch * plan.model.seq) * double(report.steps.size()) / (ms / 1e3));
  }
  if (report.eval) print_eval(plan, *report.eval);
  fmt::print("peak MiB per rank: {}\n", per_rank_mib(report.peak));
  if (report.recording && o.timeline)
    fmt::print(
        "\npipeline timeline of step {} (pipeline of rank 0; F forward, B backward, W weight gradients; time "
        "runs right; bubble {:.2f}):\n{}",
        o.steps, report.recording->bubble(), pp::timeline(*report.recording));
  if (report.recording && !o.trace.empty()) {
    pp::write_chrome_trace(o.trace, *report.recording);
    fmt::print("wrote {} (open it in ui.perfetto.dev)\n", o.trace);
  }
  if (!o.save.empty()) fmt::print("wrote {}\n", o.save);
  if (!o.json.empty()) {
    write_json(plan, report, o.json);
    fmt::print("wrote {}\n", o.json);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::span<char*> args(argv + 1, static_cast<std::size_t>(argc - 1));
  if (std::find_if(args.begin(), args.end(), [](const char* a) {
        return std::string_view(a) == "--help" || std::string_view(a) == "-h";
      }) != args.end()) {
    fmt::print("{}", help());
    return 0;
  }
  Plan plan;
  try {
    plan = make_plan(parse(args));
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", program, e.what());
    return 2;
  }
  try {
    Report report(plan);
    run(plan, report);
    print_summary(plan, report);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "\n{}: {}\n", program, e.what());
    return 1;
  }
  return 0;
}

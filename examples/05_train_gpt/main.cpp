// examples/05_train_gpt/main.cpp — train_gpt, the flagship: a GPT-2 trained on DP x PP x TP ranks with ZeRO, any
// pipeline schedule, fp32 or bf16, on a built-in addition task or a data file; one line per step (loss, speed,
// memory), the held-out loss and accuracy, and optionally a JSON report, a pipeline timeline and a Chrome trace.
//
// Run:  ./build/examples/05_train_gpt/train_gpt --dp 2 --pp 2 --tp 2 --zero 1 --schedule 1f1b   (./scripts/demo)
//       ./build/examples/05_train_gpt/train_gpt --help
//
// Compiled as C++ this is `train_gpt`, whose ranks are CPU threads (host::Backend). Compiled as CUDA (target
// `train_gpt_cuda`, from these same files, when CMake enables the CUDA language) the ranks are threads driving the
// GPUs (cuda::Backend, rank r on GPU r % device count).
//
// Mesh types (see `MeshType`): the demo's run, fp32 on 2 x 2 x 2, uses the static DeviceMesh<2, 2, 2>; every other
// run (any DP; PP 1, 2, 3, 4, 6 or 8; TP 1, 2, 4 or 8; fp32 or bf16) a `DynamicMesh`, a run-time view of
// DeviceMesh<dynamic, PP, TP>. The rank loop (trainer.hpp) is instantiated per mesh type and storage type, which is
// what the build pays for: three instantiations, each in its own translation unit (train_ranks.cpp, compiled three
// times), so they build in parallel. This file is the command line, the plan checked before any rank starts, and
// the output.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "train_gpt.hpp"

namespace train_gpt {

namespace {

constexpr int addition_digits = 2;  // the built-in task: two-digit additions
constexpr std::int64_t heldout_problems = 1000;
constexpr double mib = 1024.0 * 1024.0;

// -----------------------------------------------------------------------------------------------------------------
// The command line.

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
      {"--in-order", "",
       "ranks sharing memory run each group's calls one at a time, as NCCL does: a run that would deadlock on "
       "GPUs fails instead (slower; a check)",
       [](Options& o, const std::string&) { o.in_order = true; }},
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
       "--data); with --load at most the file's positions (default all of them)",
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
       "start from GPT-2 weights in a safetensors file (Hugging Face names); it fixes vocab, the "
       "learned positions, layers and dim",
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

//! Calls `f.template operator()<T>()` with the storage type of precision `name`.
template <class F>
void with_precision(std::string_view name, F&& f) {
  if (name == "fp32") return f.template operator()<float>();
  if (name == "bf16") return f.template operator()<px::bf16>();
  throw px::Error(fmt::format("--precision {}: not fp32 or bf16", name));
}

// -----------------------------------------------------------------------------------------------------------------
// The run's plan, checked before any rank starts.

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


//! The evaluation's loss and accuracy.
void print_eval(const Plan& plan, const gpt::EvalStats& s) {
  fmt::print("eval: loss {:.6f} over {} target tokens | accuracy {:.1f}% ({} of {} {} entirely right)\n", s.loss(),
             s.tokens, 100 * s.accuracy(), s.correct_sequences, s.sequences, plan.eval_name);
}

//! Runs the plan on its ranks: the rank loop instantiated for its mesh type and storage type.
void run(const Plan& plan, Report& report) {
  with_precision(plan.options.precision, [&]<class T>() {
    if (std::is_same_v<T, float> && plan.mesh == static_shape)
      run_ranks<MeshType::fixed, float>(plan, report);
    else
      run_ranks<MeshType::dynamic, T>(plan, report);
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

//! (train_gpt.hpp)
void print_header(const Plan& plan, const Report& report, std::int64_t parameters) {
  const Options& o = plan.options;
  const gpt::Config& c = plan.model;
  fmt::print("{}: GPT-2 {} layers x dim {} x {} heads, vocab {}, seq {}{}: {:.2f} M parameters{}\n", program,
             c.layers, c.dim, c.heads, c.vocab, c.seq,
             c.max_positions() == c.seq ? "" : fmt::format(" (of {} positions)", c.max_positions()),
             double(parameters) / 1e6,
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

//! (train_gpt.hpp)
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

//! (train_gpt.hpp)
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

}  // namespace train_gpt

int main(int argc, char** argv) {
  using namespace train_gpt;
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


// benchmarks/gpt/gpt2_step.cpp — one training step of the flagship GPT-2 on one rank (forward, backward, AdamW), and
// each backend op of that step timed alone at the model's shapes, against this machine's measured limits.
//
// Compares: PipelineStage<OneFOneB>::train_step + TiedEmbedding::sync + ShardedOptimizer<AdamW, Zero<0>>::step of
//           examples/05_train_gpt's model (pre-LayerNorm GPT-2, learned positions, tied head) on DeviceMesh<1, 1, 1>,
//           random tokens with a fixed seed, the same batch every step. Compiled as C++ this is
//           `bench_gpt_gpt2_step` (host::Backend, a tiny default model so it runs in seconds); compiled as CUDA
//           (`bench_gpt_gpt2_step_cuda`, this same file) it is cuda::Backend on GPU 0 with GPT-2 124M as default.
// Step:     ms/step is the median of the timed steps (after --warmup-steps untimed ones), each ending with the
//           context synchronized. tokens/s = batch * seq / step. Model FLOPs per token = 6 N + 6 L d T (llm.c's
//           count: N every parameter once, the tied token table once and the position table included; the
//           attention term is 12 L d T halved for causality). TFLOP/s = FLOPs/token * tokens/s.
//           MFU = TFLOP/s over the peak: on CUDA the device's dense bf16 tensor-core peak (989 TFLOP/s for H100 SXM
//           and H200), whatever --precision; on the host the GEMM rate measured below (one thread, --precision's
//           type), so host MFU reads "fraction of this machine's GEMM rate". --peak-tflops overrides either.
// Kernels:  every op of the step called alone at the model's shapes (one microbatch of batch / microbatches
//           sequences, N tokens): time per call (the median of 3 batches of calls, each batch timed from a
//           synchronized start to a synchronized end), floor = max(FLOPs / GEMM rate, bytes / copy bandwidth), ratio
//           = floor / time (1 = at the limit). GEMM rate: B::gemm of a square n x n x n product in the step's type on
//           random data, best of 5 (n = 8192 on CUDA, 256 on the host). Copy bandwidth: bytes read + written by a
//           device-to-device copy (512 MiB, best of 5; on the host the single-thread memcpy of floors.hpp, 64 MiB).
//           Bytes are the fewest one call must move (each input read once, each output written once); attention
//           FLOPs are 4 Dh per causal (query, key <= query) pair forward and 2.5x that backward. calls/step and the
//           sum of time x calls show where a step's time goes (ops not listed and launch gaps are the rest).
// Memory:   parallax's byte accounting per category: the peak over the run (model, optimizer state, the steps),
//           and what is live after the last step.
//
//   gpt2_step [--layers L] [--dim D] [--heads H] [--seq T] [--vocab V] [--batch B] [--microbatches M] [--steps S]
//             [--warmup-steps W] [--precision fp32|bf16] [--lr X] [--peak-tflops X] [--no-kernels] [--json FILE]
#include <parallax/parallax.hpp>

#include "../../examples/05_train_gpt/gpt.hpp"
#include "../support/cli.hpp"
#include "../support/floors.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#if defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace {

namespace px = parallax;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;

#if defined(__CUDACC__)
using B = px::cuda::Backend;
constexpr const char* program = "gpt2_step_cuda";
#else
using B = px::host::Backend;
constexpr const char* program = "gpt2_step";
#endif
using Memory = B::Memory;
using Mesh = px::DeviceMesh<1, 1, 1>;
constexpr bool on_device = !Memory::host_accessible;

//! The command line. Defaults: GPT-2 124M on CUDA, a model that trains in seconds on the host.
struct Options {
  std::int64_t layers = on_device ? 12 : 2, dim = on_device ? 768 : 64, heads = on_device ? 12 : 4;
  std::int64_t seq = on_device ? 1024 : 64, vocab = on_device ? 50304 : 512, batch = on_device ? 16 : 4;
  std::int64_t microbatches = 1;
  int steps = on_device ? 10 : 3, warmup = on_device ? 3 : 1;
  std::string precision = "bf16";
  float lr = 6e-4f;
  double peak_tflops = 0;  // 0: the device's (CUDA) or the measured GEMM rate (host)
  bool kernels = true;
  std::string json;
};

const px::bench::Cli cli(program,
                         "[--layers L] [--dim D] [--heads H] [--seq T] [--vocab V] [--batch B] [--microbatches M] "
                         "[--steps S] [--warmup-steps W] [--precision fp32|bf16] [--lr X] [--peak-tflops X] "
                         "[--no-kernels] [--json FILE]");

//! A positive decimal number, or a usage error naming `flag`.
double positive_real(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0' || !(v > 0))
    cli.usage(fmt::format("{} {}: expected a positive number", flag, s));
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  cli.parse(argc, argv,
            {{"--layers", [&](const std::string& v) { o.layers = cli.positive("--layers", v); }},
             {"--dim", [&](const std::string& v) { o.dim = cli.positive("--dim", v); }},
             {"--heads", [&](const std::string& v) { o.heads = cli.positive("--heads", v); }},
             {"--seq", [&](const std::string& v) { o.seq = cli.positive("--seq", v); }},
             {"--vocab", [&](const std::string& v) { o.vocab = cli.positive("--vocab", v); }},
             {"--batch", [&](const std::string& v) { o.batch = cli.positive("--batch", v); }},
             {"--microbatches", [&](const std::string& v) { o.microbatches = cli.positive("--microbatches", v); }},
             {"--steps", [&](const std::string& v) { o.steps = static_cast<int>(cli.positive("--steps", v)); }},
             {"--warmup-steps",
              [&](const std::string& v) {
                o.warmup = v == "0" ? 0 : static_cast<int>(cli.positive("--warmup-steps", v));
              }},
             {"--precision",
              [&](const std::string& v) {
                if (v != "fp32" && v != "bf16") cli.usage(fmt::format("--precision {}: not fp32 or bf16", v));
                o.precision = v;
              }},
             {"--lr", [&](const std::string& v) { o.lr = static_cast<float>(positive_real("--lr", v)); }},
             {"--peak-tflops", [&](const std::string& v) { o.peak_tflops = positive_real("--peak-tflops", v); }},
             {"--no-kernels", [&] { o.kernels = false; }},
             {"--json", [&](const std::string& v) { o.json = v; }}});
  if (o.batch % o.microbatches != 0)
    cli.usage(fmt::format("--batch {} does not split into --microbatches {}", o.batch, o.microbatches));
  return o;
}

//! The model of the options (fields set by name: gpt::Config gains members over time).
gpt::Config model_config(const Options& o) {
  gpt::Config c;
  c.vocab = o.vocab;
  c.seq = o.seq;
  c.layers = o.layers;
  c.heads = o.heads;
  c.dim = o.dim;
  return c;
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---------------------------------------------------------------------------------------------------------------------
// The device and its limits.

//! What the run is on, and its dense bf16 peak when known (0 otherwise).
struct Device {
  std::string name;
  double bf16_peak_tflops = 0;
};

Device device() {
#if defined(__CUDACC__)
  cudaDeviceProp p{};
  px::cuda::check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  const std::string name = p.name;
  // Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets: SXM parts, unless PCIe or NVL is named.
  const auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  double peak = 0;
  if (has("H100") || has("H200")) peak = has("PCIe") ? 756 : has("NVL") ? 835 : 989;
  if (has("A100")) peak = 312;
  return {fmt::format("{} (sm_{}{}, {} SMs, {:.0f} GiB)", name, p.major, p.minor, p.multiProcessorCount,
                      static_cast<double>(p.totalGlobalMem) / (1 << 30)),
          peak};
#else
  return {"host CPU, one thread per rank", 0};
#endif
}

//! Bytes read + written per second by one copy of a large buffer: best of 5 after a warm-up.
double copy_bandwidth(px::Rank<B>& rank) {
  if constexpr (!on_device) {
    const std::size_t bytes = std::size_t{64} << 20;
    return 2.0 * static_cast<double>(bytes) / px::bench::memcpy_seconds(bytes);
  } else {
    const std::int64_t n = std::int64_t{512} << 18;  // 512 MiB of floats
    const auto ws = px::MemoryCategory::workspace;
    px::Tensor<float, Memory> src(rank.allocator(), px::Shape{n}, ws), dst(rank.allocator(), px::Shape{n}, ws);
    px::bench::fill_random(src.view(), 1.f, 3);
    double best = 0;
    for (int k = 0; k <= 5; ++k) {
      rank.context().synchronize();
      const auto t0 = Clock::now();
      px::copy(dst.view(), src.cview());
      rank.context().synchronize();
      const double s = seconds_since(t0);
      if (k > 0) best = best == 0 ? s : std::min(best, s);
    }
    return 2.0 * static_cast<double>(src.bytes()) / best;
  }
}


// ---------------------------------------------------------------------------------------------------------------------
// The training step.

//! What the timed steps measured.
struct StepFigures {
  std::int64_t parameters = 0;  // every parameter once (the head's copy of the token table not counted)
  std::vector<double> seconds;  // each timed step
  double first_loss = 0, last_loss = 0;
  std::array<std::size_t, px::memory_category_count> peak_by_category{}, live_by_category{};  // run peak; after
  std::size_t peak_total = 0, live_total = 0;                                                 // the last step
  std::size_t peak_reserved = 0;  // the most bytes held from the memory space (with a caching allocator's cache)
};

//! Builds the model, the optimizer and the token batches on one rank, and runs warmup + timed steps.
template <class T>
StepFigures run_steps(const Options& o) {
  StepFigures f;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    const int m = static_cast<int>(o.microbatches);
    gpt::Pipeline<px::OneFOneB, Mesh, B, T> pipeline(
        mesh, gpt::make_chunks<px::OneFOneB, B, T>(mesh, model_config(o)),
        {.microbatches = m, .ignore_index = gpt::ignore_index, .record = false});
    const auto params = pipeline.parameters();
    for (const auto* p : params)
      if (p->name() != gpt::head_weight) f.parameters += p->spec().global.numel();
    px::ShardedOptimizer<px::optim::AdamW, px::Zero<0>, Mesh, B> opt(
        mesh, params, {.lr = o.lr, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f},
        {.accumulation = m, .clip_norm = 1.f});
    gpt::TiedEmbedding<Mesh, B, T> tie(mesh, pipeline);

    // Random tokens and targets [T, B / m] per microbatch, fixed seed.
    const std::int64_t rows = o.batch / o.microbatches;
    std::mt19937 gen(1234);
    std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(o.vocab - 1));
    std::deque<px::Tensor<std::int32_t, Memory>> ids;
    std::vector<px::pp::Microbatch<Memory>> mbs;
    for (int i = 0; i < m; ++i) {
      const auto upload = [&] {
        std::vector<std::int32_t> host(static_cast<std::size_t>(o.seq * rows));
        for (auto& t : host) t = token(gen);
        auto& t = ids.emplace_back(rank.allocator(), px::Shape{o.seq, rows}, px::MemoryCategory::workspace);
        px::copy_from(t.view(), std::span<const std::int32_t>(host));
        return t.cview();
      };
      const auto tokens = upload();
      mbs.push_back({tokens, upload()});
    }

    for (int step = 0; step < o.warmup + o.steps; ++step) {
      rank.context().synchronize();
      const auto t0 = Clock::now();
      const px::pp::StepResult r = pipeline.train_step(mbs);
      tie.sync();
      (void)opt.step();
      rank.context().synchronize();
      const double s = seconds_since(t0);
      if (step == 0) f.first_loss = r.loss;
      f.last_loss = r.loss;
      if (step >= o.warmup) f.seconds.push_back(s);
    }
    for (int c = 0; c < px::memory_category_count; ++c) {
      f.peak_by_category[static_cast<std::size_t>(c)] = rank.memory().peak(static_cast<px::MemoryCategory>(c));
      f.live_by_category[static_cast<std::size_t>(c)] = rank.memory().live(static_cast<px::MemoryCategory>(c));
    }
    f.peak_total = rank.memory().peak_total();
    f.live_total = rank.memory().live_total();
    f.peak_reserved = rank.memory().peak_reserved();
  });
  return f;
}

// ---------------------------------------------------------------------------------------------------------------------
// The kernel table.

//! One row of the kernel table: a backend op at the model's shapes, what one call must do, how often a step calls
//! it, and how to call it once.
struct KernelOp {
  std::string name;
  double flops = 0;        // counted FLOPs of one call (0 for a memory-bound op)
  double bytes = 0;        // fewest bytes one call moves
  std::int64_t calls = 0;  // calls per training step
  std::function<void()> run;
};

//! A measured row.
struct KernelRow {
  std::string name;
  double ms = 0, floor_ms = 0, ratio = 0;
  std::int64_t calls = 0;
  bool flops_bound = false;
};

//! Seconds per call of `run`: the median of 3 batches of calls, each from a synchronized start to a synchronized end,
//! batches sized to last about `budget` seconds (after one warm-up call).
double time_per_call(const B::Context& ctx, const std::function<void()>& run, double budget) {
  run();
  ctx.synchronize();
  auto t0 = Clock::now();
  run();
  ctx.synchronize();
  const double once = std::max(seconds_since(t0), 1e-7);
  const int reps = static_cast<int>(std::clamp(budget / once, 1.0, 200.0));
  std::vector<double> per_call;
  for (int b = 0; b < 3; ++b) {
    t0 = Clock::now();
    for (int i = 0; i < reps; ++i) run();
    ctx.synchronize();
    per_call.push_back(seconds_since(t0) / reps);
  }
  return median(per_call);
}

//! The random operands of the kernel table, alive while it is measured.
template <class T>
struct Operands {
  explicit Operands(px::Rank<B>& r) : rank(&r) {}

  px::Rank<B>* rank;
  std::uint64_t seed = 100;
  std::deque<px::Tensor<T, Memory>> values;
  std::deque<px::Tensor<float, Memory>> floats;
  std::deque<px::Tensor<std::int32_t, Memory>> ids;

  //! A tensor of T (or float) holding Normal(0, 1) values.
  template <class U = T>
  px::View<U, Memory> random(const px::Shape& shape) {
    auto& list = [&]() -> auto& {
      if constexpr (std::is_same_v<U, T>)
        return values;
      else
        return floats;
    }
    ();
    auto& t = list.emplace_back(rank->allocator(), shape, px::MemoryCategory::workspace);
    px::bench::fill_random(t.view(), 1.f, ++seed);
    return t.view();
  }
  //! `count` ids drawn uniformly from [0, range).
  px::View<const std::int32_t, Memory> uniform_ids(std::int64_t count, std::int64_t range) {
    std::vector<std::int32_t> host(static_cast<std::size_t>(count));
    std::mt19937 gen(static_cast<std::uint32_t>(++seed));
    std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(range - 1));
    for (auto& i : host) i = pick(gen);
    auto& t = ids.emplace_back(rank->allocator(), px::Shape{count}, px::MemoryCategory::workspace);
    px::copy_from(t.view(), std::span<const std::int32_t>(host));
    return t.cview();
  }
};

//! `v` as a read-only view.
template <class U>
px::View<const U, Memory> in(px::View<U, Memory> v) {
  return v;
}

//! The step's ops at the model's shapes on random operands; to time another op, add one `add` line.
template <class T>
std::vector<KernelOp> kernel_ops(const Options& o, std::int64_t parameters, const B::Context& ctx, Operands<T>& x) {
  const std::int64_t L = o.layers, D = o.dim, H = o.heads, Dh = D / H, F = 4 * D, V = o.vocab, S = o.seq;
  const std::int64_t rows = o.batch / o.microbatches, N = rows * S, m = o.microbatches;
  const double s = sizeof(T), n = static_cast<double>(N), d = static_cast<double>(D), f = static_cast<double>(F),
               v = static_cast<double>(V);

  std::vector<KernelOp> ops;
  const auto add = [&](std::string name, double flops, double bytes, std::int64_t calls, std::function<void()> run) {
    ops.push_back({std::move(name), flops, bytes, calls, std::move(run)});
  };
  // A linear layer [in] -> [out]: y = x W^T, dx = dy W, dW += dy^T x.
  const auto linear = [&](const std::string& what, std::int64_t in_features, std::int64_t out, std::int64_t calls) {
    const auto a = x.random({N, in_features}), w = x.random({out, in_features}), y = x.random({N, out}),
               dy = x.random({N, out}), da = x.random({N, in_features}), dw = x.random({out, in_features});
    const double flops = 2.0 * n * static_cast<double>(in_features) * static_cast<double>(out);
    add(fmt::format("gemm {} fwd [{}, {}] x [{}, {}]^T", what, N, in_features, out, in_features), flops, 0, calls,
        [&ctx, a, w, y] { B::gemm(ctx, px::Trans::N, px::Trans::T, 1.f, in(a), in(w), 0.f, y); });
    add(fmt::format("gemm {} bwd dx", what), flops, 0, calls,
        [&ctx, dy, w, da] { B::gemm(ctx, px::Trans::N, px::Trans::N, 1.f, in(dy), in(w), 0.f, da); });
    add(fmt::format("gemm {} bwd dW (+=)", what), flops, 0, calls,
        [&ctx, dy, a, dw] { B::gemm(ctx, px::Trans::T, px::Trans::N, 1.f, in(dy), in(a), 1.f, dw); });
  };

  {  // the token embedding (the position table's lookup is [T, D], small)
    const auto tok = x.uniform_ids(N, V);
    const auto table = x.random({V, D}), out = x.random({N, D}), dtable = x.random({V, D});
    add("embedding fwd (tokens)", 0, 2 * n * d * s + 4 * n, m,
        [&ctx, tok, table, out] { B::embedding_forward(ctx, tok, in(table), out); });
    add("embedding bwd (tokens, +=)", 0, n * d * s + 2 * std::min(n, v) * d * s + 4 * n, m,
        [&ctx, tok, out, dtable] { B::embedding_backward(ctx, tok, in(out), dtable); });
  }
  {  // ln_1 and ln_2 of every block, and ln_f
    const auto a = x.random({N, D}), gamma = x.random({D}), beta = x.random({D}), y = x.random({N, D}),
               dy = x.random({N, D}), da = x.random({N, D}), dgamma = x.random({D}), dbeta = x.random({D});
    const auto mean = x.template random<float>({N}), rstd = x.template random<float>({N});
    B::fill(ctx, rstd, 1.f);
    add("layernorm fwd", 0, 2 * n * d * s + 8 * n, m * (2 * L + 1), [&ctx, a, gamma, beta, y, mean, rstd] {
      B::layernorm_forward(ctx, in(a), in(gamma), in(beta), 1e-5f, y, mean, rstd);
    });
    add("layernorm bwd (dx, dgamma, dbeta)", 0, 3 * n * d * s + 8 * n, m * (2 * L + 1),
        [&ctx, a, gamma, dy, da, dgamma, dbeta, mean, rstd] {
          B::layernorm_backward(ctx, in(dy), in(a), in(gamma), in(mean), in(rstd), da, dgamma, dbeta);
        });
  }
  linear("qkv", D, 3 * D, m * L);
  {  // the attention core: head layouts and causal attention
    const px::Shape heads{rows, H, S, Dh};
    const auto qkv = x.random({S, rows, 3 * D}), q = x.random(heads), k = x.random(heads), val = x.random(heads),
               out = x.random(heads), merged = x.random({S, rows, D}), dout = x.random(heads), dq = x.random(heads),
               dk = x.random(heads), dv = x.random(heads), dqkv = x.random({S, rows, 3 * D});
    const auto lse = x.template random<float>({rows, H, S});
    const double pairs = static_cast<double>(rows * H) * static_cast<double>(S) * static_cast<double>(S + 1) / 2;
    const double fwd = 4.0 * static_cast<double>(Dh) * pairs, lse_bytes = 4.0 * static_cast<double>(rows * H * S);
    const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
    add("split_qkv", 0, 6 * n * d * s, m * L, [&ctx, qkv, q, k, val] { B::split_qkv(ctx, in(qkv), q, k, val); });
    add("attention fwd (causal)", fwd, 4 * n * d * s + lse_bytes, m * L,
        [&ctx, q, k, val, out, lse, scale] { B::attention_forward(ctx, in(q), in(k), in(val), out, lse, scale); });
    add("merge_heads", 0, 2 * n * d * s, m * L, [&ctx, out, merged] { B::merge_heads(ctx, in(out), merged); });
    add("split_heads", 0, 2 * n * d * s, m * L, [&ctx, merged, dout] { B::split_heads(ctx, in(merged), dout); });
    add("attention bwd (causal)", 2.5 * fwd, 8 * n * d * s + lse_bytes, m * L,
        [&ctx, q, k, val, out, dout, lse, scale, dq, dk, dv] {
          B::attention_backward(ctx, in(q), in(k), in(val), in(out), in(dout), in(lse), scale, dq, dk, dv);
        });
    add("merge_qkv", 0, 6 * n * d * s, m * L,
        [&ctx, dq, dk, dv, dqkv] { B::merge_qkv(ctx, in(dq), in(dk), in(dv), dqkv); });
  }
  linear("proj", D, D, m * L);
  {  // the two residual adds of every block
    const auto a = x.random({N, D}), y = x.random({N, D});
    add("residual add (axpby) [N, D]", 0, 3 * n * d * s, m * 2 * L,
        [&ctx, a, y] { B::axpby(ctx, 1.f, in(a), 1.f, y); });
  }
  linear("fc", D, F, m * L);
  {
    const auto a = x.random({N, F}), y = x.random({N, F}), dy = x.random({N, F}), da = x.random({N, F});
    add("gelu fwd [N, 4D]", 0, 2 * n * f * s, m * L, [&ctx, a, y] { B::gelu_forward(ctx, in(a), y); });
    add("gelu bwd [N, 4D]", 0, 3 * n * f * s, m * L, [&ctx, a, dy, da] { B::gelu_backward(ctx, in(a), in(dy), da); });
  }
  linear("fc2 (mlp.proj)", F, D, m * L);
  {  // the biases of the four projections: 3D + D + 4D + D = 9D features per token and layer
    std::vector<std::pair<px::View<T, Memory>, px::View<T, Memory>>> biased;  // (bias, output)
    for (const std::int64_t out : {3 * D, D, F, D}) biased.emplace_back(x.random({out}), x.random({N, out}));
    add("add_bias (qkv, proj, fc, fc2)", 0, 18 * n * d * s, m * L, [&ctx, biased] {
      for (const auto& [b, y] : biased) B::add_bias(ctx, in(b), y);
    });
    add("bias_grad (qkv, proj, fc, fc2, +=)", 0, 9 * n * d * s, m * L, [&ctx, biased] {
      for (const auto& [b, y] : biased) B::bias_grad(ctx, in(y), b);
    });
  }
  linear("lm head", D, V, m);
  {  // the loss over [N, V] logits, as the vocabulary-parallel loss runs it on one rank
    const auto logits = x.random({N, V}), dlogits = x.random({N, V});
    const auto targets = x.uniform_ids(N, V);
    const auto max = x.template random<float>({N}), sum_exp = x.template random<float>({N}),
               target = x.template random<float>({N}), losses = x.template random<float>({N}),
               lse = x.template random<float>({N});
    add("cross-entropy fwd (max, sum_exp, target, combine)", 0, n * v * s + 24 * n, m,
        [&ctx, logits, targets, max, sum_exp, target, losses, lse] {
          B::row_max(ctx, in(logits), max);
          B::sum_exp_shifted(ctx, in(logits), in(max), sum_exp);
          B::target_logit(ctx, in(logits), targets, 0, gpt::ignore_index, target);
          (void)B::cross_entropy_combine(ctx, in(max), in(sum_exp), in(target), targets, gpt::ignore_index, losses,
                                         lse);
        });
    add("cross-entropy bwd", 0, 2 * n * v * s + 8 * n, m, [&ctx, logits, targets, lse, dlogits] {
      B::cross_entropy_backward(ctx, in(logits), targets, in(lse), gpt::ignore_index, 1.f, dlogits);
    });
  }
  {  // AdamW over every element the optimizer updates (the head's copy of the token table too)
    const std::int64_t P = parameters + V * D;
    const auto master = x.template random<float>({P}), mom1 = x.template random<float>({P}),
               mom2 = x.template random<float>({P});
    const auto grad = x.random({P});
    B::fill(ctx, mom2, 1e-4f);  // a second moment must be positive
    const px::AdamArgs args{.lr = o.lr,
                            .beta1 = 0.9f,
                            .beta2 = 0.95f,
                            .weight_decay = 0.1f,
                            .decoupled = true,
                            .bias_correction1 = 0.1f,
                            .bias_correction2 = 0.05f};
    add(fmt::format("AdamW step ({:.1f} M parameters)", static_cast<double>(P) / 1e6), 0,
        static_cast<double>(P) * (24 + s), 1,
        [&ctx, args, master, grad, mom1, mom2] { B::adam_step(ctx, args, master, in(grad), mom1, mom2); });
  }
  return ops;
}

//! Measures every op of the kernel table against the machine's GEMM rate and copy bandwidth.
template <class T>
std::vector<KernelRow> measure_kernels(const Options& o, std::int64_t parameters, double gemm_flops,
                                       double copy_bytes) {
  std::vector<KernelRow> rows;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    Operands<T> operands(rank);
    const std::vector<KernelOp> ops = kernel_ops<T>(o, parameters, rank.context(), operands);
    const double budget = on_device ? 0.02 : 0.05;
    for (const KernelOp& op : ops) {
      const double s = time_per_call(rank.context(), op.run, budget);
      const double by_flops = op.flops / gemm_flops, by_bytes = op.bytes / copy_bytes;
      const double floor = std::max(by_flops, by_bytes);
      rows.push_back({op.name, s * 1e3, floor * 1e3, floor / s, op.calls, by_flops >= by_bytes});
    }
  });
  return rows;
}

// ---------------------------------------------------------------------------------------------------------------------

template <class T>
int run(const Options& o) {
  const Device dev = device();
  double gemm_flops = 0, copy_bytes = 0;
  px::launch<B>(1, [&](px::Rank<B>& rank) {
    gemm_flops = px::bench::gemm_flops<B, T>(rank, on_device ? 8192 : 256);
    copy_bytes = copy_bandwidth(rank);
  });
  const std::string peak_source = o.peak_tflops > 0          ? "--peak-tflops"
                                  : dev.bf16_peak_tflops > 0 ? "datasheet dense bf16 peak of the device"
                                  : on_device                ? "unknown device: measured GEMM rate"
                                                             : "measured GEMM rate of one host thread";
  const double peak = o.peak_tflops > 0          ? o.peak_tflops * 1e12
                      : dev.bf16_peak_tflops > 0 ? dev.bf16_peak_tflops * 1e12
                                                 : gemm_flops;

  fmt::print("parallax GPT-2 training step: {} backend, {}, {}\n", B::name, o.precision, dev.name);
  fmt::print(
      "model: {} layers, dim {}, {} heads, seq {}, vocab {}; batch {} x {} microbatch{}; AdamW (ZeRO-0), "
      "{} timed steps after {} warm-up\n",
      o.layers, o.dim, o.heads, o.seq, o.vocab, o.batch, o.microbatches, o.microbatches == 1 ? "" : "es", o.steps,
      o.warmup);
  fmt::print(
      "limits: GEMM {:.2f} TFLOP/s ({} square, best of 5), copy {:.1f} GB/s (read + write); MFU peak "
      "{:.1f} TFLOP/s ({})\n",
      gemm_flops / 1e12, o.precision, copy_bytes / 1e9, peak / 1e12, peak_source);
  std::fflush(stdout);

  const StepFigures f = run_steps<T>(o);
  const double step_s = median(f.seconds), tokens = static_cast<double>(o.batch * o.seq);
  const double flops_per_token = 6.0 * static_cast<double>(f.parameters) +
                                 6.0 * static_cast<double>(o.layers * o.dim) * static_cast<double>(o.seq);
  const double tokens_per_s = tokens / step_s, achieved = flops_per_token * tokens_per_s, mfu = achieved / peak;
  fmt::print(
      "\nstep: {:.2f} ms (median of {}), {:.0f} tokens/s, {:.3f} GFLOP/token (6N + 6LdT, N = {:.2f} M), "
      "{:.2f} TFLOP/s, MFU {:.1f}%\n",
      step_s * 1e3, f.seconds.size(), tokens_per_s, flops_per_token / 1e9, static_cast<double>(f.parameters) / 1e6,
      achieved / 1e12, 100 * mfu);
  fmt::print("loss: {:.4f} at the first step, {:.4f} at the last (ln V = {:.4f})\n", f.first_loss, f.last_loss,
             std::log(static_cast<double>(o.vocab)));
  const auto print_mib = [](const char* what, const auto& by_category, std::size_t total) {
    fmt::print("{} MiB:", what);
    for (int c = 0; c < px::memory_category_count; ++c)
      if (const std::size_t b = by_category[static_cast<std::size_t>(c)]; b > 0)
        fmt::print(" {} {:.1f} |", px::name(static_cast<px::MemoryCategory>(c)), static_cast<double>(b) / (1 << 20));
    fmt::print(" total {:.1f}\n", static_cast<double>(total) / (1 << 20));
  };
  print_mib("peak over the run", f.peak_by_category, f.peak_total);
  print_mib("live after the last step", f.live_by_category, f.live_total);
  if (f.peak_reserved > 0)
    fmt::print("peak reserved from the memory space: {:.1f} MiB\n", static_cast<double>(f.peak_reserved) / (1 << 20));
  std::fflush(stdout);

  std::vector<KernelRow> kernels;
  if (o.kernels) {
    kernels = measure_kernels<T>(o, f.parameters, gemm_flops, copy_bytes);
    fmt::print(
        "\nkernels at the model's shapes (N = {} tokens per microbatch); floor = max(FLOPs / GEMM rate, bytes / "
        "copy bandwidth), ratio = floor / time\n",
        o.batch / o.microbatches * o.seq);
    fmt::print("{:<52} {:>10} {:>10} {:>6} {:>6} {:>6} {:>10}\n", "op", "ms", "floor_ms", "bound", "ratio", "calls",
               "ms/step");
    double total = 0;
    for (const KernelRow& r : kernels) {
      total += r.ms * static_cast<double>(r.calls);
      fmt::print("{:<52} {:>10.4f} {:>10.4f} {:>6} {:>6.3f} {:>6} {:>10.3f}\n", r.name, r.ms, r.floor_ms,
                 r.flops_bound ? "flops" : "bytes", r.ratio, r.calls, r.ms * static_cast<double>(r.calls));
    }
    fmt::print("{:<52} {:>10} {:>10} {:>6} {:>6} {:>6} {:>10.3f}  ({:.0f}% of the measured step)\n",
               "sum of the ops above x calls", "", "", "", "", "", total, 100 * total / (step_s * 1e3));
  }

  Json j;
  j["benchmark"] = "gpt2_step";
  j["backend"] = B::name;
  j["device"] = dev.name;
  j["precision"] = o.precision;
  j["config"] = {{"layers", o.layers},
                 {"dim", o.dim},
                 {"heads", o.heads},
                 {"seq", o.seq},
                 {"vocab", o.vocab},
                 {"batch", o.batch},
                 {"microbatches", o.microbatches},
                 {"steps", o.steps},
                 {"warmup_steps", o.warmup}};
  j["config"]["optimizer"] =
      fmt::format("AdamW lr {} betas (0.9, 0.95) eps 1e-8 weight_decay 0.1, clip 1.0, ZeRO-0", o.lr);
  j["parameters"] = f.parameters;
  j["flops_per_token"] = flops_per_token;
  j["step_ms"] = step_s * 1e3;
  j["step_ms_all"] = Json::array();
  for (double s : f.seconds) j["step_ms_all"].push_back(s * 1e3);
  j["tokens_per_s"] = tokens_per_s;
  j["tflops"] = achieved / 1e12;
  j["peak_tflops"] = peak / 1e12;
  j["peak_source"] = peak_source;
  j["mfu"] = mfu;
  j["loss_first"] = f.first_loss;
  j["loss_last"] = f.last_loss;
  j["gemm_tflops"] = gemm_flops / 1e12;
  j["copy_gbs"] = copy_bytes / 1e9;
  j["peak_bytes"] = {{"total", f.peak_total}};
  j["live_bytes_after_step"] = {{"total", f.live_total}};
  j["peak_reserved_bytes"] = f.peak_reserved;
  for (int c = 0; c < px::memory_category_count; ++c) {
    const std::string category(px::name(static_cast<px::MemoryCategory>(c)));
    j["peak_bytes"][category] = f.peak_by_category[static_cast<std::size_t>(c)];
    j["live_bytes_after_step"][category] = f.live_by_category[static_cast<std::size_t>(c)];
  }
  j["kernels"] = Json::array();
  for (const KernelRow& r : kernels)
    j["kernels"].push_back({{"op", r.name},
                            {"ms", r.ms},
                            {"floor_ms", r.floor_ms},
                            {"bound", r.flops_bound ? "flops" : "bytes"},
                            {"ratio", r.ratio},
                            {"calls_per_step", r.calls}});
  if (!o.json.empty()) {
    std::ofstream out(o.json);
    out << j.dump(2) << '\n';
    if (!out.flush()) {
      std::fprintf(stderr, "%s: cannot write %s\n", program, o.json.c_str());
      return 1;
    }
  }
  const Json line{{"benchmark", "gpt2_step"},
                  {"backend", B::name},
                  {"figure", "training step, one rank"},
                  {"step_ms", step_s * 1e3},
                  {"tokens_per_s", tokens_per_s},
                  {"tflops", achieved / 1e12},
                  {"mfu", mfu}};
  fmt::print("\n{}\n", line.dump());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    return o.precision == "fp32" ? run<float>(o) : run<px::bf16>(o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 1;
  }
}

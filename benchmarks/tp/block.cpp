// benchmarks/tp/block.cpp — forward + backward time of one tensor-parallel GPT-2 block (host backend, fp32) on
// TP 1, 2, 4 rank threads, against this machine's single-thread GEMM peak.
//
// Compares: forward + backward_input + backward_weight of tp::TransformerBlock<DeviceMesh<1, 1, dynamic>,
//           host::Backend, float> on TP rank threads, with or without sequence parallelism (--sp).
// Floor:    the step's projection GEMM FLOPs at the measured fp32 GEMM peak of one thread (host::Backend::gemm on a
//           square n x n x n product, n the largest dimension of any projection GEMM; best of 5), times
//           min(tp, hardware threads) ranks running at once.
// Ratio:    achieved GEMM rate / (peak * min(tp, hardware threads)).
//
//   block [--tp 1,2,4] [--dim 256] [--heads 8] [--seq 128] [--batch 4] [--iters 10] [--sp] [--json FILE]
//
// FLOPs per rank and step (N = seq * batch tokens, D = dim, hidden 4D, Dh = D / heads):
//   projection GEMMs, exact: forward 2 N in out per linear, over qkv (D -> 3D/tp), attn.proj (D/tp -> D), mlp.fc
//   (D -> 4D/tp) and mlp.proj (4D/tp -> D) = 24 N D^2 / tp; backward twice that (dx and dW): 72 N D^2 / tp. Under
//   SP the column-parallel GEMMs still see all N tokens (their input is gathered), so the count is the same.
//   attention core, counted apart: forward 4 Dh per causal (query, key <= query) pair, batch * heads/tp *
//   seq (seq + 1) / 2 pairs; backward 10 Dh per pair (the host kernel recomputes q.k, then dout.v, dq, dk, dv),
//   2.5x the forward. LayerNorm, GELU, biases, residuals and layout copies are not counted.
// time is the median over iterations of the slowest rank's time, each iteration starting from a barrier; speedup is
// TP 1's time over it. gflops = tp * projection GFLOP / time (all ranks' GEMM work per second); model_gflops adds
// the attention core. act_MiB (activation_bytes): what rank 0 keeps from forward to backward.
#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/core/init.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/tp/transformer_block.hpp>

#include "../support/cli.hpp"
#include "../support/floors.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace {

namespace px = parallax;
using B = px::host::Backend;
using Mesh = px::DeviceMesh<1, 1, px::dynamic>;
using Block = px::tp::TransformerBlock<Mesh, B, float>;
using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int> tp{1, 2, 4};
  std::int64_t dim = 256, heads = 8, seq = 128, batch = 4;
  int iters = 10;
  bool sp = false;
  std::string json;
};

struct Row {
  int tp;
  bool sp;
  double ms, gemm_gflop, attn_gflop, gemm_gflops, model_gflops, ratio;
  std::size_t activation_bytes;
};

struct Step {
  double seconds;                // median of the slowest rank
  std::size_t activation_bytes;  // what rank 0's forward saved for backward
};

constexpr int warmup = 2;

const parallax::bench::Cli cli("block",
                               "[--tp 1,2,4] [--dim 256] [--heads 8] [--seq 128] [--batch 4] [--iters 10] [--sp] [--json FILE]");

Options parse(int argc, char** argv) {
  Options o;
  cli.parse(argc, argv,
            {{"--tp", [&](const std::string& v) { o.tp = cli.positives("--tp", v); }},
             {"--dim", [&](const std::string& v) { o.dim = cli.positive("--dim", v); }},
             {"--heads", [&](const std::string& v) { o.heads = cli.positive("--heads", v); }},
             {"--seq", [&](const std::string& v) { o.seq = cli.positive("--seq", v); }},
             {"--batch", [&](const std::string& v) { o.batch = cli.positive("--batch", v); }},
             {"--iters", [&](const std::string& v) { o.iters = static_cast<int>(cli.positive("--iters", v)); }},
             {"--sp", [&] { o.sp = true; }},
             {"--json", [&](const std::string& v) { o.json = v; }}});
  if (o.tp.empty()) cli.usage("empty --tp");
  return o;
}

// fp32 GFLOP/s of host::Backend::gemm on one thread: C[n, n] = A[n, n] B[n, n], best of 5 after one warm-up.
double gemm_peak_gflops(std::int64_t n) {
  double flops = 0;
  px::launch<B>(1, [&](px::Rank<B>& rank) { flops = px::bench::gemm_flops<B, float>(rank, n); });
  return flops / 1e9;
}

// One forward + backward of the block on `tp` ranks: the median over iterations of the slowest rank's seconds,
// and the activation bytes rank 0 holds between forward and backward (the output released).
Step measure_step(const Options& o, int tp) {
  std::size_t saved = 0;
  // seconds[iteration][rank]
  std::vector<std::vector<double>> seconds(static_cast<std::size_t>(o.iters),
                                           std::vector<double>(static_cast<std::size_t>(tp)));
  px::launch<B>(tp, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    Block block(mesh, o.dim, o.heads, {.sequence_parallel = o.sp, .name = "h.0"});
    // This rank's input and upstream gradient: all of [T, B, D], or its sequence shard under SP.
    auto input = [&](std::uint64_t seed) {
      px::Tensor<float, B::Memory> full(rank.allocator(), px::Shape{o.seq, o.batch, o.dim},
                                        px::MemoryCategory::workspace);
      px::init::fill(full.view(), px::init::normal(1.f, seed));
      return o.sp ? px::tp::scatter_sequence<B>(mesh, full.cview()) : std::move(full);
    };
    const auto x = input(1), dy = input(2);
    for (int k = -warmup; k < o.iters; ++k) {
      mesh.tp().barrier();
      const auto t0 = Clock::now();
      {
        Block::Ctx ctx;
        const std::size_t before = rank.memory().live(px::MemoryCategory::activations);
        auto y = block.forward(ctx, x.cview());
        y.reset();
        if (k == 0 && rank.id() == 0) saved = rank.memory().live(px::MemoryCategory::activations) - before;
        auto dx = block.backward_input(ctx, dy.cview());
        block.backward_weight(ctx);
      }
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      if (k >= 0) seconds[static_cast<std::size_t>(k)][static_cast<std::size_t>(rank.id())] = s;
    }
  });
  std::vector<double> slowest;
  for (const auto& it : seconds) slowest.push_back(*std::max_element(it.begin(), it.end()));
  std::nth_element(slowest.begin(), slowest.begin() + static_cast<std::ptrdiff_t>(slowest.size() / 2), slowest.end());
  return {slowest[slowest.size() / 2], saved};
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const unsigned cores = std::thread::hardware_concurrency();
  const double n = static_cast<double>(o.seq * o.batch), d = static_cast<double>(o.dim);
  const std::int64_t square = std::max(o.seq * o.batch, 4 * o.dim);  // largest dimension of a projection GEMM
  try {
    const double peak = gemm_peak_gflops(square);
    fmt::print("parallax TP transformer block: forward + backward_input + backward_weight, host::Backend, fp32\n");
    fmt::print("block: dim {}, heads {}, hidden {}, seq {}, batch {}{}; {} iterations after {} warm-up\n", o.dim,
               o.heads, 4 * o.dim, o.seq, o.batch, o.sp ? ", sequence parallel" : "", o.iters, warmup);
    fmt::print("floor: fp32 GEMM peak of one thread, {}^3 host::Backend::gemm = {:.1f} GFLOP/s (best of 5); "
               "hardware threads: {}\n",
               square, peak, cores);
    fmt::print("FLOPs per rank: projection GEMMs 72 N D^2 / tp (fwd 24, bwd 48); attention core causal fwd 4 Dh per "
               "(q, k<=q) pair, bwd 2.5x; time = median of the slowest rank\n");
    for (int tp : o.tp)
      if (cores != 0 && static_cast<unsigned>(tp) > cores)
        fmt::print("note: TP {} on {} hardware threads is oversubscribed; its figures measure time-sharing, not "
                   "tensor parallelism\n",
                   tp, cores);
    fmt::print("\n{:>3} {:>3} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8}\n", "tp", "sp", "ms", "speedup",
               "gemm_GFLOP", "attn_GFLOP", "gemm_GF/s", "model_GF/s", "ratio", "act_MiB");

    std::vector<Row> rows;
    double tp1_ms = 0;
    for (int tp : o.tp) {
      const Step step = measure_step(o, tp);
      const double s = step.seconds;
      const double gemm = 72.0 * n * d * d / tp / 1e9;
      const double pairs = static_cast<double>(o.batch * (o.heads / tp)) * static_cast<double>(o.seq * (o.seq + 1) / 2);
      const double attn = 3.5 * 4.0 * static_cast<double>(o.dim / o.heads) * pairs / 1e9;
      const double gemm_rate = tp * gemm / s, model_rate = tp * (gemm + attn) / s;
      const int running = cores == 0 ? tp : std::min(tp, static_cast<int>(cores));  // ranks computing at once
      const double ratio = gemm_rate / (peak * running);
      const Row r{tp, o.sp, s * 1e3, gemm, attn, gemm_rate, model_rate, ratio, step.activation_bytes};
      if (tp == 1) tp1_ms = r.ms;
      fmt::print("{:>3} {:>3} {:>9.2f} {:>8} {:>10.4f} {:>10.4f} {:>10.1f} {:>10.1f} {:>7.3f} {:>8.2f}\n", r.tp,
                 r.sp ? "yes" : "no", r.ms, tp1_ms > 0 ? fmt::format("{:.2f}x", tp1_ms / r.ms) : "-", r.gemm_gflop,
                 r.attn_gflop, r.gemm_gflops, r.model_gflops, r.ratio,
                 static_cast<double>(r.activation_bytes) / (1 << 20));
      std::fflush(stdout);
      rows.push_back(r);
    }

    nlohmann::json j;
    j["benchmark"] = "tp_block";
    j["gemm_peak_gflops"] = peak;
    j["hardware_threads"] = cores;
    j["config"] = {{"dim", o.dim}, {"heads", o.heads}, {"seq", o.seq}, {"batch", o.batch}, {"iters", o.iters}};
    j["rows"] = nlohmann::json::array();
    for (const Row& r : rows)
      j["rows"].push_back({{"tp", r.tp}, {"sp", r.sp}, {"ms", r.ms}, {"gemm_gflop", r.gemm_gflop},
                           {"attn_gflop", r.attn_gflop}, {"gflops", r.gemm_gflops}, {"model_gflops", r.model_gflops},
                           {"ratio", r.ratio}, {"activation_bytes", r.activation_bytes}});
    if (!o.json.empty()) {
      std::ofstream f(o.json);
      if (!f) {
        std::fprintf(stderr, "block: cannot write %s\n", o.json.c_str());
        return 1;
      }
      f << j.dump(2) << '\n';
    }

    // Headline: the largest TP that is not oversubscribed (else the smallest measured).
    const Row* head = nullptr;
    for (const Row& r : rows)
      if (cores == 0 || static_cast<unsigned>(r.tp) <= cores)
        if (head == nullptr || r.tp > head->tp) head = &r;
    if (head == nullptr)
      head = &*std::min_element(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.tp < b.tp; });
    fmt::print("\nheadline: TP {}{}: {:.2f} ms per forward + backward, GEMM {:.1f} GFLOP/s = {:.2f} x peak\n", head->tp,
               head->sp ? " SP" : "", head->ms, head->gemm_gflops, head->ratio);
    const nlohmann::json line{{"benchmark", "tp_block"},
                              {"figure", fmt::format("fwd+bwd ms, TP {}{}", head->tp, head->sp ? " SP" : "")},
                              {"ms", head->ms},
                              {"gemm_peak_gflops", peak},
                              {"gflops", head->gemm_gflops},
                              {"ratio", head->ratio}};
    fmt::print("{}\n", line.dump());
  } catch (const px::Error& e) {
    std::fprintf(stderr, "block: %s\n", e.what());
    return 1;
  }
  return 0;
}

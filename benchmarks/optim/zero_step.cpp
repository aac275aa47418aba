// benchmarks/optim/zero_step.cpp — ShardedOptimizer<AdamW, Zero<S>> on DP rank threads (host backend): the
// optimizer step's time per ZeRO stage against the memory traffic it must move, and how much of the gradient
// reduction backward hides.
//
// Compares: per stage 0-3, a stack of `layers` nn::Linear (dim x dim, fp32 or bf16) trained on `dp` rank
//           threads, one microbatch per step; each layer's backward_weight runs right after its backward_input,
//           so a bucket's reduction starts while the layers below still run backward.
// step:     opt.step() minus the time it waited for reductions (norm, AdamW update, casts; ZeRO-1/2 start the
//           parameter all-gather and return). Floor: the update's memory traffic at this machine's copy
//           bandwidth (one thread, memcpy of 64 MiB, best of 5): per updated element the gradient read twice
//           (norm, update), master weight, m and v read and written (24 bytes), the 16-bit parameter written
//           (bf16); updated elements = all under ZeRO-0, one shard otherwise. Ratio: floor / step.
// overlap:  1 - exposed / reduction, where exposed is the time step() waited for the buckets' reductions (after
//           a barrier, so the ranks' backward skew does not count) and reduction is the same collectives
//           (all-reduce for ZeRO-0/1, reduce-scatter for 2/3, one per bucket) run blocking on their own after
//           backward. Floor 1 (everything hidden); ratio = overlap.
// Figures are medians over iterations of the slowest rank.
//
//   zero_step [--dp 2] [--layers 8] [--dim 256] [--rows 256] [--bucket-kib 256] [--iters 5] [--bf16] [--json FILE]
#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/core/init.hpp>
#include <parallax/mesh/device_mesh.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sharded_optimizer.hpp>

#include "../support/cli.hpp"
#include "../support/floors.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace {

namespace px = parallax;
using B = px::host::Backend;
using Mem = B::Memory;
using Mesh = px::DeviceMesh<px::dynamic, 1, 1>;
using Clock = std::chrono::steady_clock;

struct Options {
  int dp = 2, layers = 8, iters = 5;
  std::int64_t dim = 256, rows = 256, bucket_kib = 256;
  bool bf16 = false;
  std::string json;
};

struct Row {
  int stage;
  double backward_ms, step_ms, exposed_ms, reduction_ms, overlap, floor_ms, ratio;
  std::int64_t updated;
};

constexpr int warmup = 2;

const parallax::bench::Cli cli("zero_step",
                               "[--dp 2] [--layers 8] [--dim 256] [--rows 256] [--bucket-kib 256] "
                               "[--iters 5] [--bf16] [--json FILE]");

Options parse(int argc, char** argv) {
  Options o;
  cli.parse(argc, argv,
            {{"--dp", [&](const std::string& v) { o.dp = static_cast<int>(cli.positive("--dp", v)); }},
             {"--layers", [&](const std::string& v) { o.layers = static_cast<int>(cli.positive("--layers", v)); }},
             {"--dim", [&](const std::string& v) { o.dim = cli.positive("--dim", v); }},
             {"--rows", [&](const std::string& v) { o.rows = cli.positive("--rows", v); }},
             {"--bucket-kib", [&](const std::string& v) { o.bucket_kib = cli.positive("--bucket-kib", v); }},
             {"--iters", [&](const std::string& v) { o.iters = static_cast<int>(cli.positive("--iters", v)); }},
             {"--bf16", [&] { o.bf16 = true; }},
             {"--json", [&](const std::string& v) { o.json = v; }}});
  return o;
}

// Copy bandwidth of one thread in GB/s (read + write bytes): memcpy of 64 MiB, best of 5 after one warm-up.
double copy_bandwidth() {
  const std::size_t n = std::size_t{64} << 20;
  return 2.0 * static_cast<double>(n) / parallax::bench::memcpy_seconds(n) / 1e9;
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

// Per iteration, the slowest rank's figure.
struct Samples {
  std::vector<std::vector<double>> backward, step, exposed, reduction;  // [iteration][rank]
  explicit Samples(int iters, int ranks)
      : backward(static_cast<std::size_t>(iters), std::vector<double>(static_cast<std::size_t>(ranks))),
        step(backward),
        exposed(backward),
        reduction(backward) {}
  static double slowest_median(const std::vector<std::vector<double>>& s) {
    std::vector<double> m;
    for (const auto& it : s) m.push_back(*std::max_element(it.begin(), it.end()));
    return median(m);
  }
};

template <class Z, class T>
Row measure(const Options& o, double bandwidth) {
  using Fc = px::nn::Linear<B, T>;
  Samples samples(o.iters, o.dp);
  std::int64_t updated = 0;
  px::launch<B>(o.dp, [&](px::Rank<B>& rank) {
    Mesh mesh(rank);
    std::vector<Fc> layers;
    layers.reserve(static_cast<std::size_t>(o.layers));
    for (int l = 0; l < o.layers; ++l)
      layers.emplace_back(rank, o.dim, o.dim, px::nn::LinearOptions{.name = fmt::format("l{}", l)});
    px::nn::ParameterList<T, Mem> params;
    for (auto& l : layers) px::nn::append(params, l.parameters());
    px::optim::ShardedOptimizer<px::optim::AdamW, Z, Mesh, B> opt(
        mesh, params, {.lr = 1e-4f}, {.bucket_bytes = static_cast<std::size_t>(o.bucket_kib) << 10});
    px::Tensor<T, Mem> x(rank.allocator(), px::Shape{o.rows, o.dim}, px::MemoryCategory::workspace),
        dy(rank.allocator(), px::Shape{o.rows, o.dim}, px::MemoryCategory::workspace);
    px::init::fill(x.view(), px::init::normal(1.f, 1 + static_cast<std::uint64_t>(rank.id())));
    px::init::fill(dy.view(), px::init::normal(1e-3f, 2));
    const auto& layout = opt.layout();
    if (rank.id() == 0) updated = Z::shards_optimizer_state ? layout.shard_numel() : layout.padded_numel();
    px::Tensor<T, Mem> flat(rank.allocator(), px::Shape{layout.padded_numel()}, px::MemoryCategory::workspace),
        shard(rank.allocator(), px::Shape{layout.shard_numel()}, px::MemoryCategory::workspace);
    const auto r = static_cast<std::size_t>(rank.id());
    for (int k = -warmup; k < o.iters; ++k) {
      mesh.world().barrier();
      auto t0 = Clock::now();
      {
        std::vector<typename Fc::Ctx> ctx(layers.size());
        px::Tensor<T, Mem> h;
        for (std::size_t l = 0; l < layers.size(); ++l) h = layers[l].forward(ctx[l], l == 0 ? x.cview() : h.cview());
        px::Tensor<T, Mem> d;
        for (std::size_t l = layers.size(); l-- > 0;) {
          d = layers[l].backward_input(ctx[l], l + 1 == layers.size() ? dy.cview() : d.cview());
          layers[l].backward_weight(ctx[l]);
        }
      }
      const double backward = std::chrono::duration<double>(Clock::now() - t0).count();
      mesh.world().barrier();  // the ranks' backward skew is not reduction time
      const double exposed_before = opt.exposed_reduction_seconds();
      t0 = Clock::now();
      (void)opt.step();
      const double step = std::chrono::duration<double>(Clock::now() - t0).count();
      const double exposed = opt.exposed_reduction_seconds() - exposed_before;
      // The same reductions, blocking, on their own.
      mesh.world().barrier();
      t0 = Clock::now();
      for (const auto& bucket : layout.buckets()) {
        auto full = flat.view().rows(bucket.offset, bucket.offset + bucket.padded);
        if constexpr (Z::shards_gradients)
          mesh.dp_cp().reduce_scatter(
              px::View<const T, Mem>(full),
              shard.view().rows(bucket.shard_offset, bucket.shard_offset + bucket.slice(layout.parts())));
        else
          mesh.dp_cp().all_reduce(full);
      }
      const double reduction = std::chrono::duration<double>(Clock::now() - t0).count();
      if (k < 0) continue;
      const auto i = static_cast<std::size_t>(k);
      samples.backward[i][r] = backward;
      samples.step[i][r] = step - exposed;
      samples.exposed[i][r] = exposed;
      samples.reduction[i][r] = reduction;
    }
  });
  Row row{};
  row.stage = Z::stage;
  row.updated = updated;
  row.backward_ms = Samples::slowest_median(samples.backward) * 1e3;
  row.step_ms = Samples::slowest_median(samples.step) * 1e3;
  row.exposed_ms = Samples::slowest_median(samples.exposed) * 1e3;
  row.reduction_ms = Samples::slowest_median(samples.reduction) * 1e3;
  row.overlap = row.reduction_ms > 0 ? std::clamp(1.0 - row.exposed_ms / row.reduction_ms, 0.0, 1.0) : 1.0;
  const double bytes = static_cast<double>(updated) * (24.0 + 2.0 * sizeof(T) + (sizeof(T) == 2 ? 2.0 : 0.0));
  row.floor_ms = bytes / (bandwidth * 1e9) * 1e3;
  row.ratio = row.step_ms > 0 ? row.floor_ms / row.step_ms : 0;
  return row;
}

template <class T>
std::vector<Row> measure_all(const Options& o, double bandwidth) {
  return {measure<px::Zero<0>, T>(o, bandwidth), measure<px::Zero<1>, T>(o, bandwidth),
          measure<px::Zero<2>, T>(o, bandwidth), measure<px::Zero<3>, T>(o, bandwidth)};
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const unsigned cores = std::thread::hardware_concurrency();
  try {
    const double bandwidth = copy_bandwidth();
    const std::int64_t params = o.layers * (o.dim * o.dim + o.dim);
    fmt::print("parallax ShardedOptimizer<AdamW, Zero<S>> step, host::Backend, {}\n", o.bf16 ? "bf16" : "fp32");
    fmt::print(
        "model: {} x Linear({}, {}) = {} parameters; {} rows per microbatch; DP {} rank threads; buckets of "
        "{} KiB; {} iterations after {} warm-up\n",
        o.layers, o.dim, o.dim, params, o.rows, o.dp, o.bucket_kib, o.iters, warmup);
    fmt::print(
        "floor: update memory traffic at {:.1f} GB/s (memcpy, one thread); overlap floor 1 (all reduction "
        "hidden); hardware threads: {}\n",
        bandwidth, cores);
    if (cores != 0 && static_cast<unsigned>(o.dp) > cores)
      fmt::print("note: {} ranks on {} hardware threads time-share: the overlap measures scheduling, not hiding\n",
                 o.dp, cores);
    fmt::print("\n{:>5} {:>10} {:>11} {:>9} {:>10} {:>12} {:>8} {:>9} {:>7}\n", "stage", "updated", "backward_ms",
               "step_ms", "floor_ms", "reduction_ms", "exposed", "overlap", "ratio");
    const auto rows = o.bf16 ? measure_all<px::bf16>(o, bandwidth) : measure_all<float>(o, bandwidth);
    for (const Row& r : rows)
      fmt::print("{:>5} {:>10} {:>11.2f} {:>9.3f} {:>10.3f} {:>12.3f} {:>8.3f} {:>9.2f} {:>7.3f}\n", r.stage, r.updated,
                 r.backward_ms, r.step_ms, r.floor_ms, r.reduction_ms, r.exposed_ms, r.overlap, r.ratio);

    nlohmann::json j;
    j["benchmark"] = "optim_zero_step";
    j["copy_gbps"] = bandwidth;
    j["hardware_threads"] = cores;
    j["config"] = {{"dp", o.dp},
                   {"layers", o.layers},
                   {"dim", o.dim},
                   {"rows", o.rows},
                   {"bucket_kib", o.bucket_kib},
                   {"iters", o.iters},
                   {"type", o.bf16 ? "bf16" : "fp32"}};
    j["rows"] = nlohmann::json::array();
    for (const Row& r : rows)
      j["rows"].push_back({{"stage", r.stage},
                           {"updated_elements", r.updated},
                           {"backward_ms", r.backward_ms},
                           {"step_ms", r.step_ms},
                           {"floor_ms", r.floor_ms},
                           {"ratio", r.ratio},
                           {"reduction_ms", r.reduction_ms},
                           {"exposed_ms", r.exposed_ms},
                           {"overlap", r.overlap}});
    if (!o.json.empty()) {
      std::ofstream f(o.json);
      if (!f) {
        std::fprintf(stderr, "zero_step: cannot write %s\n", o.json.c_str());
        return 1;
      }
      f << j.dump(2) << '\n';
    }
    const Row& head = rows[2];
    fmt::print(
        "\nheadline: ZeRO-2 on DP {}: step {:.3f} ms ({:.3f} x the memory floor), {:.0f}% of the reduction "
        "hidden behind backward\n",
        o.dp, head.step_ms, head.ratio, head.overlap * 100);
    const nlohmann::json line{{"benchmark", "optim_zero_step"},
                              {"figure", fmt::format("ZeRO-2 step ms, DP {}", o.dp)},
                              {"step_ms", head.step_ms},
                              {"floor_ms", head.floor_ms},
                              {"ratio", head.ratio},
                              {"overlap", head.overlap}};
    fmt::print("{}\n", line.dump());
  } catch (const px::Error& e) {
    std::fprintf(stderr, "zero_step: %s\n", e.what());
    return 1;
  }
  return 0;
}

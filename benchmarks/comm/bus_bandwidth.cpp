// benchmarks/comm/bus_bandwidth.cpp — bus bandwidth of the thread transport's all_reduce, reduce_scatter and
// all_gather (fp32), as nccl-tests reports it, against this machine's single-thread memcpy bandwidth.
//
// Compares: busbw (nccl-tests definition) of each collective on 2, 4 and 8 rank threads, 4 KiB .. 256 MiB.
// Floor:    memcpy bandwidth of one thread on a large buffer (the cost of moving the bytes once).
// Ratio:    busbw / memcpy.
//
//   bus_bandwidth [--ranks 2,4,8] [--min-bytes N] [--max-bytes N] [--ops all_reduce,reduce_scatter,all_gather]
//                 [--json FILE]
//
// bytes is the whole buffer as nccl-tests define it: the all_reduce buffer, the reduce_scatter input, the
// all_gather output. algbw = bytes / time; busbw = algbw * 2(n-1)/n for all_reduce and algbw * (n-1)/n
// for reduce_scatter and all_gather. time is the median over iterations of the slowest rank's time,
// each iteration starting from a barrier.
#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>

#include "../support/cli.hpp"
#include "../support/floors.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace {

namespace px = parallax;
using B = px::host::Backend;
using Mem = px::host::Memory;
using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int> ranks{2, 4, 8};
  std::vector<std::string> ops{"all_reduce", "reduce_scatter", "all_gather"};
  std::int64_t min_bytes = 4 << 10;
  std::int64_t max_bytes = std::int64_t{256} << 20;
  std::string json;
};

struct Row {
  std::string op;
  int ranks;
  std::int64_t bytes;
  double time_us, algbw, busbw, ratio;
};

const parallax::bench::Cli cli("bus_bandwidth",
                               "[--ranks 2,4,8] [--min-bytes N] [--max-bytes N] "
                               "[--ops all_reduce,reduce_scatter,all_gather] [--json FILE]");

Options parse(int argc, char** argv) {
  Options o;
  cli.parse(argc, argv,
            {{"--ranks", [&](const std::string& v) { o.ranks = cli.positives("--ranks", v); }},
             {"--ops",
              [&](const std::string& v) {
                o.ops = parallax::bench::Cli::split(v);
                for (const auto& op : o.ops)
                  if (op != "all_reduce" && op != "reduce_scatter" && op != "all_gather")
                    cli.usage(fmt::format("unknown op {}", op));
              }},
             {"--min-bytes", [&](const std::string& v) { o.min_bytes = cli.positive("--min-bytes", v); }},
             {"--max-bytes", [&](const std::string& v) { o.max_bytes = cli.positive("--max-bytes", v); }},
             {"--json", [&](const std::string& v) { o.json = v; }}});
  if (o.ranks.empty() || o.ops.empty()) cli.usage("empty --ranks or --ops");
  return o;
}

// Single-thread memcpy bandwidth in GB/s (bytes copied per second), best of several on a large buffer.
double memcpy_gbps(std::size_t bytes) { return static_cast<double>(bytes) / parallax::bench::memcpy_seconds(bytes) / 1e9; }

double bus_factor(const std::string& op, int n) {
  return op == "all_reduce" ? 2.0 * (n - 1) / n : static_cast<double>(n - 1) / n;
}

// Fewer iterations for large sizes: about 512 MiB of `bytes` per point, at least 3 and at most 25.
int iterations(std::int64_t bytes) {
  return static_cast<int>(std::clamp<std::int64_t>((std::int64_t{512} << 20) / bytes, 3, 25));
}

std::string human(std::int64_t bytes) {
  if (bytes % (1 << 20) == 0) return fmt::format("{} MiB", bytes >> 20);
  if (bytes % (1 << 10) == 0) return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} B", bytes);
}

struct AlignedFree {
  std::size_t bytes;
  void operator()(float* p) const { Mem::deallocate(p, bytes); }
};
using Buffer = std::unique_ptr<float, AlignedFree>;
Buffer allocate(std::size_t bytes) {
  auto* p = static_cast<float*>(Mem::allocate(std::max<std::size_t>(bytes, 64)));
  if (p == nullptr) throw px::Error(fmt::format("bus_bandwidth: cannot allocate {} bytes", bytes));
  std::fill(p, p + bytes / sizeof(float), 0.5f);  // touch every page before timing
  return Buffer(p, AlignedFree{std::max<std::size_t>(bytes, 64)});
}

// Runs every (op, size) point on n rank threads; returns one row per point.
std::vector<Row> measure(int n, const Options& o, const std::vector<std::int64_t>& sizes, double memcpy) {
  struct Point {
    std::string op;
    std::int64_t bytes;
    int iters;
  };
  std::vector<Point> points;
  for (const auto& op : o.ops)
    for (std::int64_t bytes : sizes) {
      // Whole elements per rank chunk: bytes rounded down to a multiple of 4 * n.
      const std::int64_t b = bytes / (4 * n) * (4 * n);
      if (b > 0) points.push_back({op, b, iterations(b)});
    }
  // seconds[point][iteration][rank]
  std::vector<std::vector<std::vector<double>>> seconds(points.size());
  for (std::size_t p = 0; p < points.size(); ++p)
    seconds[p].assign(static_cast<std::size_t>(points[p].iters), std::vector<double>(static_cast<std::size_t>(n)));
  const std::int64_t max_b = std::max_element(points.begin(), points.end(), [](auto& a, auto& b) { return a.bytes < b.bytes; })->bytes;

  px::launch<B>(n, [&](px::Rank<B>& rank) {
    auto& world = rank.world();
    const auto r = static_cast<std::size_t>(rank.id());
    // One full-size buffer and one 1/n-size buffer, reused by every point.
    Buffer big = allocate(static_cast<std::size_t>(max_b));
    Buffer part = allocate(static_cast<std::size_t>(max_b / n));
    for (std::size_t p = 0; p < points.size(); ++p) {
      const Point& pt = points[p];
      const std::int64_t count = pt.bytes / 4;  // whole buffer, in floats
      px::View<float, Mem> whole(big.get(), px::Shape{count});
      px::View<float, Mem> chunk(part.get(), px::Shape{count / n});
      auto once = [&] {
        if (pt.op == "all_reduce")
          world.all_reduce(whole);
        else if (pt.op == "reduce_scatter")
          world.reduce_scatter(px::View<const float, Mem>(whole), chunk);
        else
          world.all_gather(px::View<const float, Mem>(chunk), whole);
      };
      const int warmup = pt.bytes >= (std::int64_t{64} << 20) ? 1 : 3;
      for (int k = 0; k < warmup; ++k) once();
      for (int k = 0; k < pt.iters; ++k) {
        world.barrier();
        const auto t0 = Clock::now();
        once();
        seconds[p][static_cast<std::size_t>(k)][r] = std::chrono::duration<double>(Clock::now() - t0).count();
      }
    }
  });

  std::vector<Row> rows;
  for (std::size_t p = 0; p < points.size(); ++p) {
    std::vector<double> slowest;
    for (const auto& it : seconds[p]) slowest.push_back(*std::max_element(it.begin(), it.end()));
    std::nth_element(slowest.begin(), slowest.begin() + static_cast<std::ptrdiff_t>(slowest.size() / 2), slowest.end());
    const double t = slowest[slowest.size() / 2];
    const double algbw = static_cast<double>(points[p].bytes) / t / 1e9;
    const double busbw = algbw * bus_factor(points[p].op, n);
    rows.push_back({points[p].op, n, points[p].bytes, t * 1e6, algbw, busbw, busbw / memcpy});
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::vector<std::int64_t> sizes;
  for (std::int64_t b = o.min_bytes; b <= o.max_bytes; b *= 4) sizes.push_back(b);
  if (sizes.empty()) cli.usage("--min-bytes is larger than --max-bytes");

  const unsigned cores = std::thread::hardware_concurrency();
  const double memcpy = memcpy_gbps(std::size_t{256} << 20);
  fmt::print("parallax comm bus bandwidth: thread transport (launch<host::Backend>), fp32\n");
  fmt::print("floor: single-thread memcpy of 256 MiB = {:.2f} GB/s (best of 6); hardware threads: {}\n", memcpy, cores);
  fmt::print("busbw per nccl-tests: all_reduce algbw*2(n-1)/n, reduce_scatter/all_gather algbw*(n-1)/n; "
             "time = median over iterations of the slowest rank\n");
  for (int n : o.ranks)
    if (cores != 0 && static_cast<unsigned>(n) > cores)
      fmt::print("note: {} ranks on {} hardware threads are oversubscribed; their figures measure time-sharing, "
                 "not the transport\n", n, cores);
  fmt::print("\n{:<15} {:>5} {:>10} {:>12} {:>12} {:>12} {:>8}\n", "op", "ranks", "bytes", "time_us", "algbw_GBps",
             "busbw_GBps", "ratio");

  std::vector<Row> all;
  for (int n : o.ranks) {
    for (const Row& row : measure(n, o, sizes, memcpy)) {
      fmt::print("{:<15} {:>5} {:>10} {:>12.1f} {:>12.2f} {:>12.2f} {:>8.3f}\n", row.op, row.ranks, human(row.bytes),
                 row.time_us, row.algbw, row.busbw, row.ratio);
      all.push_back(row);
    }
    std::fflush(stdout);
  }

  nlohmann::json j;
  j["benchmark"] = "comm_bus_bandwidth";
  j["memcpy_GBps"] = memcpy;
  j["hardware_threads"] = cores;
  j["rows"] = nlohmann::json::array();
  for (const Row& r : all)
    j["rows"].push_back({{"op", r.op}, {"ranks", r.ranks}, {"bytes", r.bytes}, {"time_us", r.time_us},
                         {"algbw_GBps", r.algbw}, {"busbw_GBps", r.busbw}, {"ratio", r.ratio}});
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    if (!f) {
      std::fprintf(stderr, "bus_bandwidth: cannot write %s\n", o.json.c_str());
      return 1;
    }
    f << j.dump(2) << '\n';
  }

  // Headline: all_reduce busbw at 64 MiB on 2 ranks vs memcpy; failing that, the all_reduce point on the
  // fewest ranks that is closest to 64 MiB.
  const Row* head = nullptr;
  auto distance = [](const Row& r) { return std::abs(r.bytes - (std::int64_t{64} << 20)); };
  for (const Row& r : all)
    if (r.op == "all_reduce" &&
        (head == nullptr || r.ranks < head->ranks || (r.ranks == head->ranks && distance(r) < distance(*head))))
      head = &r;
  nlohmann::json line{{"benchmark", "comm_bus_bandwidth"}, {"memcpy_GBps", memcpy}};
  if (head != nullptr) {
    fmt::print("\nheadline: all_reduce {} on {} ranks: busbw {:.2f} GB/s = {:.2f} x memcpy\n", human(head->bytes),
               head->ranks, head->busbw, head->ratio);
    line["figure"] = fmt::format("all_reduce busbw, {} ranks, {}", head->ranks, human(head->bytes));
    line["busbw_GBps"] = head->busbw;
    line["ratio"] = head->ratio;
  }
  fmt::print("{}\n", line.dump());
  return 0;
}

// Tests for parallax/comm/thread_communicator.hpp through Communicator<host::Memory>: every operation on
// every element type, count and group size against a scalar reference; split, async order, bitwise
// repeatability and argument errors.
//
// Catch2 is not thread-safe: rank threads only record what they saw (each rank in its own slot) and the
// main thread asserts after `launch` returns.
#include "parallax/backend/host/backend.hpp"
#include "parallax/comm/launch.hpp"

#include <catch2/catch.hpp>

#include "../support/support.hpp"

#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

using parallax::test::cview;
using parallax::test::view;

namespace {

namespace px = parallax;
using px::ReduceOp;
using B = px::host::Backend;
using Mem = px::host::Memory;
using Comm = px::Communicator;
using Rank = px::Rank<B>;

template <class T>
constexpr bool is_half = std::is_same_v<T, px::bf16> || std::is_same_v<T, px::fp16>;

// What each rank saw; only rank r writes entry r, the main thread reads after the threads joined.
struct Log {
  explicit Log(int n) : lines(static_cast<std::size_t>(n)), failures(static_cast<std::size_t>(n), 0) {}
  void fail(int r, std::string what) {
    auto& l = lines[static_cast<std::size_t>(r)];
    if (l.size() < 8) l.push_back(std::move(what));
    ++failures[static_cast<std::size_t>(r)];
  }
  [[nodiscard]] long total() const {
    long t = 0;
    for (long f : failures) t += f;
    return t;
  }
  [[nodiscard]] std::string text() const {
    std::string s;
    for (std::size_t r = 0; r < lines.size(); ++r)
      for (const auto& l : lines[r]) s += fmt::format("rank {}: {}\n", r, l);
    return s;
  }
  std::vector<std::vector<std::string>> lines;
  std::vector<long> failures;
};

void check_clean(const Log& log) {
  INFO(log.text());
  CHECK(log.total() == 0);
}

template <class T>
T make(double v) {
  if constexpr (is_half<T> || std::is_same_v<T, float>)
    return T(static_cast<float>(v));
  else
    return static_cast<T>(v);
}
template <class T>
double as_double(T v) {
  if constexpr (is_half<T>)
    return static_cast<double>(static_cast<float>(v));
  else
    return static_cast<double>(v);
}

// Per-rank input: small integers, exact in every element type, and every partial sum too (|sum| <= 216).
double value(int rank, std::int64_t i) { return (rank + 1) * static_cast<double>(i % 13 - 6); }

// The reduction over ranks 0..n-1 of value(rank, i).
template <class T>
double reference(ReduceOp op, int n, std::int64_t i) {
  double acc = value(0, i);
  for (int r = 1; r < n; ++r) {
    const double v = value(r, i);
    acc = op == ReduceOp::max ? std::max(acc, v) : op == ReduceOp::min ? std::min(acc, v) : acc + v;
  }
  if (op == ReduceOp::avg) {
    if constexpr (std::is_integral_v<T>)
      acc = static_cast<double>(static_cast<std::int64_t>(acc) / n);  // integer division, as C++ does
    else
      acc /= n;
  }
  return acc;
}

// Exact, except that an average of floating-point values may round.
template <class T>
bool matches(T got, double want, ReduceOp op) {
  const double g = as_double(got);
  if (op != ReduceOp::avg || std::is_integral_v<T>) return g == want;
  const double tol = is_half<T> ? 1e-2 : 1e-6;
  return std::abs(g - want) <= tol * std::abs(want) + 1e-6;
}

template <class T>
void fill(std::vector<T>& b, int rank, std::int64_t offset = 0) {
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = make<T>(value(rank, offset + static_cast<std::int64_t>(i)));
}

constexpr std::array<ReduceOp, 4> all_ops{ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min};

// Reports the first i < len where `ok(i)` fails; `label()` is only formatted then.
template <class Got, class Want, class Ok, class Label>
void verify(Log& log, int r, std::size_t len, Got got, Want want, Ok ok, Label label) {
  for (std::size_t i = 0; i < len; ++i)
    if (!ok(i)) {
      log.fail(r, fmt::format("{}: element {} is {}, expected {}", label(), i, got(i), want(i)));
      return;
    }
}

// Every operation once on group `c` with `count` elements of T per rank, checked against the reference.
template <class T>
void exercise(Comm& c, std::int64_t count, Log& log) {
  const int n = c.size();
  const int r = c.rank();
  const auto N = static_cast<std::size_t>(count);
  const auto I = [](std::size_t i) { return static_cast<std::int64_t>(i); };
  const auto what = [&](std::string_view op, std::string_view detail = {}) {
    return fmt::format("{}{}({}, count {}, n {})", op, detail, px::name(px::dtype_of<T>), count, n);
  };
  // b[i] == value(src, offset + i) for every i.
  auto holds = [&](const std::vector<T>& b, int src, std::int64_t offset, auto label) {
    verify(log, r, b.size(), [&](std::size_t i) { return as_double(b[i]); },
           [&](std::size_t i) { return value(src, offset + I(i)); },
           [&](std::size_t i) { return as_double(b[i]) == value(src, offset + I(i)); }, label);
  };
  // b[i] is the reduction over the group of value(., offset + i).
  auto reduced = [&](const std::vector<T>& b, ReduceOp op, std::int64_t offset, auto label) {
    verify(log, r, b.size(), [&](std::size_t i) { return as_double(b[i]); },
           [&](std::size_t i) { return reference<T>(op, n, offset + I(i)); },
           [&](std::size_t i) { return matches(b[i], reference<T>(op, n, offset + I(i)), op); }, label);
  };

  std::vector<T> buf(N);
  for (ReduceOp op : all_ops) {
    fill(buf, r);
    c.all_reduce(view(buf), op);
    reduced(buf, op, 0, [&] { return what("all_reduce ", px::name(op)); });
  }

  // reduce_scatter: rank r gets chunk r of the reduction of everyone's (count * n) input.
  std::vector<T> in(N * static_cast<std::size_t>(n)), out(N);
  for (ReduceOp op : all_ops) {
    fill(in, r);
    fill(out, 99);
    c.reduce_scatter(cview(in), view(out), op);
    reduced(out, op, r * count, [&] { return what("reduce_scatter ", px::name(op)); });
    holds(in, r, 0, [&] { return what("reduce_scatter left its input alone "); });
  }

  // all_gather: rank j's input lands at [j * count, (j + 1) * count) of every rank's output.
  fill(buf, r);
  std::vector<T> gathered(N * static_cast<std::size_t>(n), make<T>(99));
  c.all_gather(cview(buf), view(gathered));
  verify(log, r, gathered.size(), [&](std::size_t k) { return as_double(gathered[k]); },
         [&](std::size_t k) { return value(static_cast<int>(k / N), I(k % N)); },
         [&](std::size_t k) { return as_double(gathered[k]) == value(static_cast<int>(k / N), I(k % N)); },
         [&] { return what("all_gather"); });

  for (int root = 0; root < n; ++root) {
    fill(buf, r);
    c.broadcast(view(buf), root);
    holds(buf, root, 0, [&] { return what("broadcast", fmt::format(" root {}", root)); });
  }

  for (int root = 0; root < n; ++root) {
    const ReduceOp op = all_ops[static_cast<std::size_t>(root) % all_ops.size()];
    fill(buf, r);
    c.reduce(view(buf), op, root);
    const auto label = [&] { return what("reduce", fmt::format(" {} root {}", px::name(op), root)); };
    if (r == root)
      reduced(buf, op, 0, label);
    else
      holds(buf, r, 0, label);  // non-roots unchanged
  }

  if (n > 1) {
    // Ring shift: send right, receive from the left. Blocking sends would wait on each other all round
    // the ring, so the send is async.
    const int right = (r + 1) % n, left = (r + n - 1) % n;
    fill(buf, r);
    std::vector<T> got(N, make<T>(99));
    px::Work s = c.send_async(cview(buf), right);
    c.recv(view(got), left);
    s.wait();
    holds(got, left, 0, [&] { return what("ring shift"); });

    // Pairwise exchange with blocking calls, the lower rank sending first (the odd rank out sits out).
    const int partner = r ^ 1;
    if (partner < n) {
      std::fill(got.begin(), got.end(), make<T>(99));
      if (r < partner) {
        c.send(cview(buf), partner);
        c.recv(view(got), partner);
      } else {
        c.recv(view(got), partner);
        c.send(cview(buf), partner);
      }
      holds(got, partner, 0, [&] { return what("pairwise exchange"); });
    }
  }
  c.barrier();
}

constexpr std::array<std::int64_t, 4> counts{0, 1, 7, 1000};

}  // namespace

TEMPLATE_TEST_CASE("thread communicator: every operation matches a scalar reference", "[comm][thread_communicator]",
                   float, px::bf16, px::fp16, std::int32_t, std::int64_t) {
  const int n = GENERATE(1, 2, 3, 4, 8);
  Log log(n);
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    for (std::int64_t count : counts) exercise<TestType>(rank.world(), count, log);
    if constexpr (std::is_same_v<TestType, float>) exercise<float>(rank.world(), std::int64_t{1} << 16, log);
  }));
  INFO("group size " << n);
  check_clean(log);
}

TEST_CASE("thread communicator: all_reduce on counts that do not divide by the group size", "[comm][thread_communicator]") {
  const int n = GENERATE(3, 8);
  Log log(n);
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    Comm& c = rank.world();
    for (std::int64_t count : {2, 5, 9, 13, 1001}) {
      std::vector<std::int32_t> v(static_cast<std::size_t>(count));
      fill(v, rank.id());
      c.all_reduce(view(v), ReduceOp::sum);
      for (std::size_t i = 0; i < v.size(); ++i)
        if (v[i] != reference<std::int32_t>(ReduceOp::sum, n, static_cast<std::int64_t>(i))) {
          log.fail(rank.id(), fmt::format("count {}: element {} is {}", count, i, v[i]));
          break;
        }
    }
  }));
  check_clean(log);
}

TEST_CASE("thread communicator: barrier holds every rank until all arrived", "[comm][thread_communicator]") {
  const int n = GENERATE(1, 2, 3, 8);
  constexpr int rounds = 20;
  std::atomic<int> arrived{0};
  Log log(n);
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    for (int k = 0; k < rounds; ++k) {
      arrived.fetch_add(1);
      rank.world().barrier();
      if (const int a = arrived.load(); a < n * (k + 1))
        log.fail(rank.id(), fmt::format("round {}: left the barrier when only {} of {} had arrived", k, a, n * (k + 1)));
      rank.world().barrier();
    }
  }));
  check_clean(log);
}

TEST_CASE("thread communicator: split into even and odd ranks", "[comm][thread_communicator][split]") {
  const int n = GENERATE(2, 3, 4, 8);
  Log log(n);
  std::vector<std::string> described(static_cast<std::size_t>(n));
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    const int r = rank.id();
    Comm sub = rank.world().split(r % 2, r, "parity");
    const int expected_size = (n + 1 - r % 2) / 2;
    if (!sub.valid() || sub.size() != expected_size || sub.rank() != r / 2 || sub.world_rank() != r)
      log.fail(r, fmt::format("valid {} size {} rank {} (expected size {} rank {})", sub.valid(), sub.size(), sub.rank(),
                              expected_size, r / 2));
    for (int j = 0; j < sub.size(); ++j)
      if (sub.members()[static_cast<std::size_t>(j)] != r % 2 + 2 * j) log.fail(r, fmt::format("member {} is {}", j, sub.members()[static_cast<std::size_t>(j)]));
    described[static_cast<std::size_t>(r)] = sub.describe();
    // The subgroup reduces only its members' values: sum of (w + 1) over world ranks w of my parity.
    std::vector<std::int64_t> v(5, r + 1);
    sub.all_reduce(view(v));
    std::int64_t want = 0;
    for (int w = r % 2; w < n; w += 2) want += w + 1;
    if (v[0] != want || v[4] != want) log.fail(r, fmt::format("subgroup all_reduce gave {}, expected {}", v[0], want));
    // The parent group still works after (and between) subgroup calls.
    std::vector<std::int64_t> w1(3, 1);
    rank.world().all_reduce(view(w1));
    sub.barrier();
    if (w1[2] != n) log.fail(r, fmt::format("world all_reduce after split gave {}", w1[2]));
  }));
  check_clean(log);
  CHECK(described[0] == (n == 2 ? "parity group {0}" : n == 3 ? "parity group {0,2}" : n == 4 ? "parity group {0,2}" : "parity group {0,2,4,6}"));
  CHECK(described[1] == (n <= 3 ? "parity group {1}" : n == 4 ? "parity group {1,3}" : "parity group {1,3,5,7}"));
}

TEST_CASE("thread communicator: split with a negative color gives an invalid communicator", "[comm][thread_communicator][split]") {
  constexpr int n = 4;
  Log log(n);
  std::vector<std::string> errors(n);
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    const int r = rank.id();
    Comm sub = rank.world().split(r == 0 ? -1 : 0, r, "rest");
    if (r == 0) {
      if (sub.valid()) log.fail(r, "color -1 gave a valid communicator");
      try {
        std::vector<float> v(4);
        sub.all_reduce(view(v));
        log.fail(r, "all_reduce on an invalid communicator did not throw");
      } catch (const px::Error& e) {
        errors[0] = e.what();
      }
    } else {
      std::vector<float> v(4, 1.f);
      sub.all_reduce(view(v));
      if (!sub.valid() || sub.size() != n - 1 || sub.rank() != r - 1 || v[3] != static_cast<float>(n - 1))
        log.fail(r, fmt::format("size {} rank {} sum {}", sub.size(), sub.rank(), v[3]));
    }
  }));
  check_clean(log);
  CHECK_THAT(errors[0], Catch::Matchers::Contains("not a member of the group"));
}

TEST_CASE("thread communicator: split key reorders ranks", "[comm][thread_communicator][split]") {
  const int n = GENERATE(3, 4, 8);
  Log log(n);
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    const int r = rank.id();
    Comm rev = rank.world().split(7, n - 1 - r, "reversed");  // key reverses the order
    Comm same = rank.world().split(7, 0, "ties");            // equal keys keep the parent's order
    if (rev.rank() != n - 1 - r) log.fail(r, fmt::format("reversed rank {}, expected {}", rev.rank(), n - 1 - r));
    if (same.rank() != r) log.fail(r, fmt::format("tied rank {}, expected {}", same.rank(), r));
    // all_gather concatenates in group-rank order: world ranks n-1, ..., 0.
    std::vector<std::int32_t> mine{r}, all(static_cast<std::size_t>(n), -1);
    rev.all_gather(cview(mine), view(all));
    for (int j = 0; j < n; ++j)
      if (all[static_cast<std::size_t>(j)] != n - 1 - j || rev.members()[static_cast<std::size_t>(j)] != n - 1 - j)
        log.fail(r, fmt::format("slot {} holds world rank {} (member {})", j, all[static_cast<std::size_t>(j)], rev.members()[static_cast<std::size_t>(j)]));
    // Group rank 0 of the reversed group is world rank n-1.
    std::vector<std::int32_t> b{r};
    rev.broadcast(view(b), 0);
    if (b[0] != n - 1) log.fail(r, fmt::format("broadcast from reversed root 0 gave {}", b[0]));
  }));
  check_clean(log);
}

TEST_CASE("thread communicator: nested splits", "[comm][thread_communicator][split]") {
  constexpr int n = 8;
  Log log(n);
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    const int r = rank.id();
    Comm half = rank.world().split(r / 4, r, "half");  // {0..3}, {4..7}
    Comm pair = half.split(half.rank() % 2, half.rank(), "pair");  // {0,2}, {1,3}, {4,6}, {5,7}
    Comm solo = pair.split(pair.rank(), 0, "solo");               // one rank each
    const int first = (r / 4) * 4 + r % 2;
    if (pair.size() != 2 || pair.members()[0] != first || pair.members()[1] != first + 2 || solo.size() != 1 ||
        solo.members()[0] != r)
      log.fail(r, fmt::format("pair {} solo {}", pair.describe(), solo.describe()));
    std::vector<std::int64_t> v{r + 1};
    pair.all_reduce(view(v));
    if (v[0] != 2 * first + 4) log.fail(r, fmt::format("pair sum {}, expected {}", v[0], 2 * first + 4));
    solo.all_reduce(view(v), ReduceOp::max);  // a group of one leaves data as it is
    half.all_reduce(view(v), ReduceOp::max);
    const std::int64_t want_half = 2 * ((r / 4) * 4 + 1) + 4;  // the odd pair's sum is larger
    if (v[0] != want_half) log.fail(r, fmt::format("half max {}, expected {}", v[0], want_half));
    rank.world().all_reduce(view(v), ReduceOp::min);
    if (v[0] != 6) log.fail(r, fmt::format("world min {}, expected 6", v[0]));
  }));
  check_clean(log);
}

TEST_CASE("thread communicator: async calls overlap and complete in issue order", "[comm][thread_communicator][async]") {
  const int n = GENERATE(2, 3, 8);
  constexpr int inflight = 6;
  constexpr std::int64_t count = 300;
  Log log(n);
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    Comm& c = rank.world();
    const int r = rank.id();
    for (int round = 0; round < 3; ++round) {
      std::vector<std::vector<float>> bufs(inflight, std::vector<float>(count));
      std::vector<px::Work> work;
      for (int k = 0; k < inflight; ++k) {
        fill(bufs[static_cast<std::size_t>(k)], r, k);
        work.push_back(c.all_reduce_async(view(bufs[static_cast<std::size_t>(k)]), all_ops[static_cast<std::size_t>(k) % 4]));
      }
      // A blocking call issued now runs after the ones in flight (same order on every rank).
      std::vector<float> b(count);
      fill(b, r);
      c.broadcast(view(b), n - 1);
      for (auto& w : work) w.wait();
      for (auto& w : work) w.wait();  // idempotent
      for (int k = 0; k < inflight; ++k) {
        const ReduceOp op = all_ops[static_cast<std::size_t>(k) % 4];
        for (std::int64_t i = 0; i < count; ++i)
          if (!matches(bufs[static_cast<std::size_t>(k)][static_cast<std::size_t>(i)], reference<float>(op, n, k + i), op)) {
            log.fail(r, fmt::format("async #{} element {} is {}", k, i, bufs[static_cast<std::size_t>(k)][static_cast<std::size_t>(i)]));
            break;
          }
      }
      if (b[5] != static_cast<float>(value(n - 1, 5))) log.fail(r, fmt::format("broadcast behind async gave {}", b[5]));
      // Async reduce_scatter and all_gather, then a barrier.
      std::vector<float> in(static_cast<std::size_t>(count * n)), out(count), all(static_cast<std::size_t>(count * n));
      fill(in, r);
      px::Work a = c.reduce_scatter_async(cview(in), view(out));
      px::Work g = c.all_gather_async(cview(in).rows(0, count), view(all));
      px::Work z = c.barrier_async();
      z.wait();
      a.wait();
      g.wait();
      if (out[1] != static_cast<float>(reference<float>(ReduceOp::sum, n, r * count + 1)) || all[static_cast<std::size_t>(count * (n - 1))] != static_cast<float>(value(n - 1, 0)))
        log.fail(r, fmt::format("async reduce_scatter {} all_gather {}", out[1], all[static_cast<std::size_t>(count * (n - 1))]));
    }
  }));
  check_clean(log);
}

TEST_CASE("thread communicator: float sum all_reduce is bitwise repeatable and in rank order", "[comm][thread_communicator]") {
  const int n = GENERATE(3, 8);
  constexpr std::size_t count = 4099;
  // Values that are not exactly representable, so the order of additions shows in the result. Computed
  // once into a table: recomputing them at each use could round differently (FMA contraction).
  std::vector<std::vector<float>> inputs(static_cast<std::size_t>(n), std::vector<float>(count));
  for (int r = 0; r < n; ++r)
    for (std::size_t i = 0; i < count; ++i)
      inputs[static_cast<std::size_t>(r)][i] = std::sin(0.37f * static_cast<float>(i) + 1.1f * static_cast<float>(r)) / 3.f + 0.1f * static_cast<float>(r);
  auto run = [&] {
    std::vector<std::vector<float>> results(static_cast<std::size_t>(n));
    px::launch<B>(n, [&](Rank& rank) {
      auto& v = results[static_cast<std::size_t>(rank.id())];
      v = inputs[static_cast<std::size_t>(rank.id())];
      rank.world().all_reduce(view(v));
    });
    return results;
  };
  const auto first = run();
  const auto second = run();
  std::vector<float> serial = inputs[0];  // ((x0 + x1) + x2) + ...
  for (int r = 1; r < n; ++r)
    for (std::size_t i = 0; i < count; ++i) serial[i] += inputs[static_cast<std::size_t>(r)][i];
  for (int r = 0; r < n; ++r) {
    CHECK(std::memcmp(first[static_cast<std::size_t>(r)].data(), second[static_cast<std::size_t>(r)].data(), count * sizeof(float)) == 0);
    CHECK(std::memcmp(first[static_cast<std::size_t>(r)].data(), first[0].data(), count * sizeof(float)) == 0);
  }
  CHECK(std::memcmp(first[0].data(), serial.data(), count * sizeof(float)) == 0);
}

TEST_CASE("thread communicator: argument errors name the numbers and leave the group usable", "[comm][thread_communicator][errors]") {
  constexpr int n = 3;
  std::vector<std::vector<std::string>> errors(n);
  Log log(n);
  REQUIRE_NOTHROW(px::launch<B>(n, [&](Rank& rank) {
    Comm& c = rank.world();
    auto& mine = errors[static_cast<std::size_t>(rank.id())];
    auto expect_error = [&](const char* what, auto&& call) {
      try {
        call();
        log.fail(rank.id(), fmt::format("{} did not throw", what));
        mine.emplace_back();
      } catch (const px::Error& e) {
        mine.emplace_back(e.what());
      }
    };
    std::vector<float> in(10), out(3), ok(3);
    expect_error("reduce_scatter", [&] { c.reduce_scatter(cview(in), view(out)); });
    expect_error("all_gather", [&] { c.all_gather(cview(out), view(in)); });
    expect_error("broadcast", [&] { c.broadcast(view(out), n); });
    expect_error("reduce", [&] { c.reduce(view(out), ReduceOp::sum, -1); });
    expect_error("send", [&] { c.send(cview(out), n); });
    expect_error("recv", [&] { c.recv(view(out), -2); });
    expect_error("send to self", [&] { c.send(cview(out), rank.id()); });
    expect_error("async all_gather", [&] { (void)c.all_gather_async(cview(ok), view(out)); });
    // Nothing was exchanged: the group still works.
    std::fill(ok.begin(), ok.end(), 1.f);
    c.all_reduce(view(ok));
    if (ok[2] != static_cast<float>(n)) log.fail(rank.id(), fmt::format("all_reduce after errors gave {}", ok[2]));
  }));
  check_clean(log);
  using Catch::Matchers::Contains;
  for (int r = 0; r < n; ++r) {
    const auto& e = errors[static_cast<std::size_t>(r)];
    REQUIRE(e.size() == 8);
    CHECK_THAT(e[0], Contains("reduce_scatter on world group {0,1,2}") && Contains("input has 10 elements, expected output 3 x group size 3 = 9") && Contains(fmt::format("(rank {})", r)));
    CHECK_THAT(e[1], Contains("all_gather on world group {0,1,2}") && Contains("output has 10 elements, expected input 3 x group size 3 = 9"));
    CHECK_THAT(e[2], Contains("broadcast") && Contains("root 3 is outside the group of size 3"));
    CHECK_THAT(e[3], Contains("reduce") && Contains("root -1 is outside the group of size 3"));
    CHECK_THAT(e[4], Contains("send") && Contains("peer 3 is outside the group of size 3"));
    CHECK_THAT(e[5], Contains("recv") && Contains("peer -2 is outside the group of size 3"));
    CHECK_THAT(e[6], Contains("send") && Contains(fmt::format("peer {} is this rank itself", r)));
    CHECK_THAT(e[7], Contains("output has 3 elements, expected input 3 x group size 3 = 9"));
  }
}

TEST_CASE("thread communicator: in_order runs a group's calls one at a time, as NCCL on a stream",
          "[comm][thread_communicator][in_order]") {
  // Each rank posts the receive from its partner before sending to it: fine while calls overlap; in order (NCCL),
  // each send waits behind a receive whose sender waits likewise, and the timeout names the call.
  const auto exchange = [](std::optional<bool> in_order) {
    std::vector<float> got(2, -1.f);
    std::string error;
    try {
      px::launch<B>(
          2,
          [&](Rank& rank) {
            Comm& c = rank.world();
            const int r = rank.id(), peer = 1 - r;
            std::vector<float> mine{float(r), float(r + 10)}, theirs(2);
            px::Work in = c.recv_async(view(theirs), peer);
            c.send(cview(mine), peer);
            in.wait();
            got[static_cast<std::size_t>(r)] = theirs[1];
          },
          {.timeout = std::chrono::milliseconds(300), .in_order = in_order});
    } catch (const px::Error& e) {
      error = e.what();
    }
    return std::pair{got, error};
  };
  const auto [overlapped, none] = exchange(false);
  CHECK(none.empty());
  CHECK(overlapped == std::vector<float>{11.f, 10.f});
  const auto [stuck, error] = exchange(true);
  CHECK_THAT(error, Catch::Matchers::Contains("did not post the matching"));
  ::setenv("PARALLAX_COMM_IN_ORDER", "1", 1);  // the default when LaunchOptions::in_order is unset
  const auto [from_env, env_error] = exchange(std::nullopt);
  ::setenv("PARALLAX_COMM_IN_ORDER", "0", 1);
  const auto [env_off, env_off_error] = exchange(std::nullopt);
  ::unsetenv("PARALLAX_COMM_IN_ORDER");
  CHECK_THAT(env_error, Catch::Matchers::Contains("did not post the matching"));
  CHECK(env_off_error.empty());

  // A program that posts its calls in one order on every rank runs in order: the lower rank sends first, and
  // async collectives queue behind each other.
  Log log(2);
  REQUIRE_NOTHROW(px::launch<B>(
      2,
      [&](Rank& rank) {
        Comm& c = rank.world();
        const int r = rank.id(), peer = 1 - r;
        std::vector<float> mine{float(r)}, theirs{-1.f};
        if (r == 0) {
          c.send(cview(mine), peer);
          c.recv(view(theirs), peer);
        } else {
          c.recv(view(theirs), peer);
          c.send(cview(mine), peer);
        }
        std::vector<std::vector<float>> bufs(3, std::vector<float>{float(r + 1)});
        std::vector<px::Work> work;
        for (auto& b : bufs) work.push_back(c.all_reduce_async(view(b)));
        for (auto& w : work) w.wait();
        if (theirs[0] != float(peer) || bufs[2][0] != 3.f)
          log.fail(r, fmt::format("in order: received {}, all_reduce gave {}", theirs[0], bufs[2][0]));
      },
      {.timeout = std::chrono::seconds(20), .in_order = true}));

  // Only the group's later calls wait, not the rank: rank 0's send to rank 2 queues behind its receive from rank 1
  // on the world, while rank 0 goes on to an all-reduce with rank 1 on another group, after which rank 1 sends.
  REQUIRE_NOTHROW(px::launch<B>(
      3,
      [&](Rank& rank) {
        Comm& world = rank.world();
        const int r = rank.id();
        Comm pair = world.split(r < 2 ? 0 : -1, r, "pair");
        std::vector<float> got{-1.f}, mine{float(r)}, sum{1.f};
        if (r == 0) {
          px::Work in = world.recv_async(view(got), 1);
          px::Work out = world.send_async(cview(mine), 2);
          pair.all_reduce(view(sum));
          in.wait();
          out.wait();
        } else if (r == 1) {
          pair.all_reduce(view(sum));
          world.send(cview(mine), 0);
        } else {
          world.recv(view(got), 0);
        }
        if ((r == 0 && got[0] != 1.f) || (r == 2 && got[0] != 0.f) || (r < 2 && sum[0] != 2.f))
          log.fail(r, fmt::format("other groups go on: received {}, all_reduce gave {}", got[0], sum[0]));
      },
      {.timeout = std::chrono::seconds(20), .in_order = true}));
  check_clean(log);
}

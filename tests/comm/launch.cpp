// Tests for parallax/comm/launch.hpp: rank ids and sizes, failure propagation out of a barrier, timeouts
// naming the missing rank, and per-rank memory accounting. Catch2 assertions are not thread-safe, so
// rank threads only record what they see and the main thread asserts after launch returns.
#include <parallax/backend/host/backend.hpp>
#include <parallax/comm/launch.hpp>
#include <parallax/core/tensor.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using parallax::Error;
using parallax::LaunchOptions;
using parallax::MemoryCategory;
using parallax::Shape;
using parallax::Tensor;
using parallax::host::Backend;
using HostRank = parallax::Rank<Backend>;
using Catch::Matchers::Contains;
using namespace std::chrono_literals;

namespace {

using Clock = std::chrono::steady_clock;

// Runs launch and returns the message of the parallax::Error it throws ("" if it returns), its rank()
// and how long it took.
struct Outcome {
  std::string message;
  int rank = -2;
  double seconds = 0;
};

template <class Fn>
Outcome run_launch(int n, Fn fn, LaunchOptions options) {
  Outcome out;
  const auto t0 = Clock::now();
  try {
    parallax::launch<Backend>(n, fn, options);
  } catch (const Error& e) {
    out.message = e.what();
    out.rank = e.rank();
  }
  out.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return out;
}

}  // namespace

TEST_CASE("launch runs n ranks with ids 0..n-1 on their own threads", "[comm][launch]") {
  for (int n : {1, 2, 3, 8}) {
    std::vector<int> ids(static_cast<std::size_t>(n), -1), sizes(ids.size(), -1), world_ranks(ids.size(), -1),
        world_sizes(ids.size(), -1), context_ranks(ids.size(), -1), allocator_ranks(ids.size(), -1);
    std::vector<std::thread::id> threads(ids.size());
    std::atomic<int> calls{0};
    parallax::launch<Backend>(n, [&](HostRank& rank) {
      const auto r = static_cast<std::size_t>(rank.id());
      ++calls;
      if (r >= ids.size()) return;  // reported below through `calls` and the -1 entries
      ids[r] = rank.id();
      sizes[r] = rank.size();
      world_ranks[r] = rank.world().rank();
      world_sizes[r] = rank.world().size();
      context_ranks[r] = rank.context().rank();
      allocator_ranks[r] = rank.allocator().rank();
      threads[r] = std::this_thread::get_id();
      rank.world().barrier();  // every rank is running at once
    });
    INFO("n = " << n);
    CHECK(calls == n);
    for (int r = 0; r < n; ++r) {
      const auto i = static_cast<std::size_t>(r);
      CHECK(ids[i] == r);
      CHECK(sizes[i] == n);
      CHECK(world_ranks[i] == r);
      CHECK(world_sizes[i] == n);
      CHECK(context_ranks[i] == r);
      CHECK(allocator_ranks[i] == r);
      CHECK(threads[i] != std::this_thread::get_id());
    }
    CHECK(std::set<std::thread::id>(threads.begin(), threads.end()).size() == ids.size());
  }
}

TEST_CASE("launch with no ranks throws", "[comm][launch]") {
  for (int n : {0, -1, -8}) {
    bool called = false;
    const auto out = run_launch(n, [&](HostRank&) { called = true; }, {});
    CHECK_THAT(out.message, Contains("launch") && Contains(std::to_string(n)) && Contains("positive"));
    CHECK_FALSE(called);
  }
}

TEST_CASE("launch: repeated barriers complete, and nothing is reported on success", "[comm][launch]") {
  std::vector<int> passed(4, 0);
  const auto out = run_launch(4, [&](HostRank& rank) {
    for (int i = 0; i < 50; ++i) {
      rank.world().barrier();
      ++passed[static_cast<std::size_t>(rank.id())];
    }
  }, LaunchOptions{.timeout = 10s});
  CHECK(out.message.empty());
  CHECK(passed == std::vector<int>(4, 50));
}

TEST_CASE("launch: a rank that throws releases the others from a barrier promptly", "[comm][launch]") {
  constexpr int n = 4;
  for (int failing : {0, 2, 3}) {
    for (bool early : {false, true}) {  // the failure comes after the others wait, or before they arrive
      INFO("failing rank " << failing << (early ? ", before the others reach the barrier" : ", while the others wait"));
      std::vector<std::string> seen(n);  // what each surviving rank's barrier threw
      const auto out = run_launch(n, [&](HostRank& rank) {
        if (rank.id() == failing) {
          if (!early) std::this_thread::sleep_for(50ms);
          throw std::runtime_error("boom on purpose 42");
        }
        if (early) std::this_thread::sleep_for(50ms);
        try {
          rank.world().barrier();
          seen[static_cast<std::size_t>(rank.id())] = "returned";
        } catch (const Error& e) {
          seen[static_cast<std::size_t>(rank.id())] = e.what();
          throw;
        }
      }, LaunchOptions{.timeout = 10s});
      CHECK(out.seconds < 5.0);
      CHECK_THAT(out.message, Contains("launch: rank " + std::to_string(failing) + " failed") &&
                                  Contains("boom on purpose 42"));
      CHECK_THAT(out.message, !Contains("released"));
      CHECK(out.rank == failing);
      for (int r = 0; r < n; ++r) {
        if (r == failing) continue;
        INFO("rank " << r);
        CHECK_THAT(seen[static_cast<std::size_t>(r)],
                   Contains("released because rank " + std::to_string(failing) + " failed") && Contains("barrier"));
      }
    }
  }
}

TEST_CASE("launch: the failure reported is the original parallax::Error or a non-std exception", "[comm][launch]") {
  SECTION("parallax::Error keeps its message") {
    const auto out = run_launch(3, [](HostRank& rank) {
      if (rank.id() == 1) throw Error("Layer: width 7 is not divisible by 3");
      rank.world().barrier();
    }, LaunchOptions{.timeout = 10s});
    CHECK(out.seconds < 5.0);
    CHECK_THAT(out.message, Contains("rank 1 failed") && Contains("width 7 is not divisible by 3"));
    CHECK_THAT(out.message, !Contains("released"));
  }
  SECTION("an exception that is not a std::exception") {
    const auto out = run_launch(3, [](HostRank& rank) {
      if (rank.id() == 2) throw 42;
      rank.world().barrier();
    }, LaunchOptions{.timeout = 10s});
    CHECK(out.seconds < 5.0);
    CHECK_THAT(out.message, Contains("rank 2 failed") && Contains("unknown exception"));
  }
  SECTION("two ranks fail: exactly one is reported") {
    const auto out = run_launch(4, [](HostRank& rank) {
      if (rank.id() == 1 || rank.id() == 3) throw std::runtime_error("reason " + std::to_string(rank.id()));
      rank.world().barrier();
    }, LaunchOptions{.timeout = 10s});
    CHECK(out.seconds < 5.0);
    const bool one = out.message.find("rank 1 failed: reason 1") != std::string::npos;
    const bool three = out.message.find("rank 3 failed: reason 3") != std::string::npos;
    CHECK(one != three);
    CHECK_THAT(out.message, !Contains("released"));
  }
}

TEST_CASE("launch: a rank that returns early makes the barrier time out naming it", "[comm][launch]") {
  constexpr int n = 3;
  constexpr int missing = 1;
  const auto out = run_launch(n, [](HostRank& rank) {
    if (rank.id() == missing) return;  // never arrives
    rank.world().barrier();
  }, LaunchOptions{.timeout = std::chrono::milliseconds(300)});
  CHECK(out.seconds >= 0.29);
  CHECK(out.seconds < 5.0);
  CHECK_THAT(out.message, Contains("timed out after 300 ms") && Contains("barrier"));
  CHECK_THAT(out.message, Contains("ranks {1} have not arrived") && Contains("arrived: {0,2}"));
  CHECK_THAT(out.message, !Contains("released"));
  CHECK(out.rank != missing);
}

TEST_CASE("launch: each rank has its own memory accounting", "[comm][launch]") {
  constexpr int n = 4;
  std::vector<std::size_t> live(n), total(n), after(n), peak(n), others(n);
  parallax::launch<Backend>(n, [&](HostRank& rank) {
    const auto r = static_cast<std::size_t>(rank.id());
    {
      Tensor<float, Backend::Memory> w(rank.allocator(), Shape{static_cast<std::int64_t>(r + 1), 100},
                                       MemoryCategory::parameters);
      Tensor<float, Backend::Memory> a(rank.allocator(), Shape{10}, MemoryCategory::activations);
      rank.world().barrier();  // every rank holds its tensors now
      live[r] = rank.memory().live(MemoryCategory::parameters);
      total[r] = rank.memory().live_total();
      others[r] = rank.memory().live(MemoryCategory::gradients);
      rank.world().barrier();
    }
    after[r] = rank.memory().live_total();
    peak[r] = rank.memory().peak(MemoryCategory::parameters);
  }, LaunchOptions{.timeout = 10s});
  for (std::size_t r = 0; r < n; ++r) {
    INFO("rank " << r);
    CHECK(live[r] == (r + 1) * 100 * sizeof(float));
    CHECK(total[r] == (r + 1) * 100 * sizeof(float) + 10 * sizeof(float));
    CHECK(others[r] == 0);
    CHECK(after[r] == 0);
    CHECK(peak[r] == (r + 1) * 100 * sizeof(float));
  }
}

TEST_CASE("launch picks its transport: NCCL only where every rank has a GPU, an error where that was asked and "
          "cannot be", "[comm][launch]") {
  using parallax::LaunchTransport;
  using parallax::detail::launch_uses_nccl;
  // (transport, ranks, devices) -> NCCL?   devices -1: a backend without devices
  CHECK_FALSE(launch_uses_nccl(LaunchTransport::automatic, 1, 1, "cuda::Backend"));  // one rank: nothing to send
  CHECK(launch_uses_nccl(LaunchTransport::nccl, 1, 1, "cuda::Backend"));             // unless asked: real NCCL
  CHECK(launch_uses_nccl(LaunchTransport::automatic, 2, 2, "cuda::Backend"));
  CHECK(launch_uses_nccl(LaunchTransport::automatic, 8, 8, "cuda::Backend"));
  CHECK_FALSE(launch_uses_nccl(LaunchTransport::automatic, 8, 1, "cuda::Backend"));  // 8 ranks share one GPU
  CHECK_FALSE(launch_uses_nccl(LaunchTransport::automatic, 2, 0, "cuda::Backend"));
  CHECK_FALSE(launch_uses_nccl(LaunchTransport::automatic, 4, -1, "host::Backend"));
  CHECK_FALSE(launch_uses_nccl(LaunchTransport::threads, 2, 8, "cuda::Backend"));
  CHECK(launch_uses_nccl(LaunchTransport::nccl, 2, 8, "cuda::Backend"));
  CHECK_THROWS_WITH(launch_uses_nccl(LaunchTransport::nccl, 8, 1, "cuda::Backend"),
                    "launch: LaunchTransport::nccl needs one GPU per rank: 8 ranks, 1 GPUs (NCCL refuses two ranks on "
                    "one GPU); use LaunchTransport::threads or at most 1 ranks");
  CHECK_THROWS_WITH(launch_uses_nccl(LaunchTransport::nccl, 2, 0, "cuda::Backend"),
                    Contains("needs one GPU per rank: 2 ranks, 0 GPUs"));

  // The host backend has no GPUs: asking it for NCCL fails before any rank starts.
  std::atomic<int> started{0};
  const Outcome o = run_launch(2, [&](HostRank&) { ++started; }, {.transport = LaunchTransport::nccl});
  CHECK(o.message ==
        "launch: LaunchTransport::nccl needs a backend with GPUs (cuda::Backend); host ranks are threads over host "
        "memory");
  CHECK(started == 0);
  // threads and automatic are the thread transport.
  for (const auto t : {LaunchTransport::automatic, LaunchTransport::threads}) {
    const Outcome ok = run_launch(2, [&](HostRank& rank) { rank.world().barrier(); }, {.transport = t});
    CHECK(ok.message.empty());
  }
  CHECK(std::string(parallax::name(LaunchTransport::nccl)) == "nccl");
}

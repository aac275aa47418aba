// Tests for the checking layer of the thread transport: mismatched collectives, timeouts that name the
// late rank, point-to-point mismatches, and release of every rank when one fails.
//
// Rank threads catch their own error, record its message and rethrow; the main thread asserts after
// `launch` returns (Catch2 is not thread-safe).
#include "parallax/backend/host/backend.hpp"
#include "parallax/comm/launch.hpp"

#include <catch2/catch.hpp>

#include "../support/support.hpp"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

using parallax::test::cview;
using parallax::test::view;

namespace {

namespace px = parallax;
using namespace std::chrono_literals;
using B = px::host::Backend;
using Mem = px::host::Memory;
using Rank = px::Rank<B>;
using Catch::Matchers::Contains;

// What one rank caught.
struct Caught {
  std::string what;  // empty: nothing thrown
  int rank = -2;
  std::string group, operation;
};

// Runs `fn` on n ranks; each rank's parallax::Error is recorded, then rethrown so that `launch` sees it.
// Returns launch's own error message ("" if it did not throw) and the time launch took.
struct Outcome {
  std::vector<Caught> caught;
  std::string launch_error;
  std::chrono::milliseconds elapsed{};
};
Outcome run(int n, const std::function<void(Rank&)>& fn, px::LaunchOptions options = {}) {
  Outcome o;
  o.caught.resize(static_cast<std::size_t>(n));
  const auto t0 = std::chrono::steady_clock::now();
  try {
    px::launch<B>(
        n,
        [&](Rank& rank) {
          try {
            fn(rank);
          } catch (const px::Error& e) {
            o.caught[static_cast<std::size_t>(rank.id())] = {e.what(), e.rank(), e.group(), e.operation()};
            throw;
          }
        },
        options);
  } catch (const px::Error& e) {
    o.launch_error = e.what();
  }
  o.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  return o;
}

}  // namespace

TEST_CASE("checking: mismatched collectives throw on every rank, listing every call", "[comm][checking]") {
  const Outcome o = run(2, [](Rank& rank) {
    std::vector<px::bf16> a(4096), b(2048);
    if (rank.id() == 0)
      rank.world().all_reduce(view(a));
    else
      rank.world().all_gather(cview(b), view(a));
  });
  REQUIRE_FALSE(o.launch_error.empty());
  CHECK_THAT(o.launch_error, Contains("mismatched calls"));
  for (int r = 0; r < 2; ++r) {
    const Caught& c = o.caught[static_cast<std::size_t>(r)];
    INFO("rank " << r << ": " << c.what);
    CHECK_THAT(c.what, Contains("collective #1 on world group {0,1}: mismatched calls") &&
                           Contains("rank 0 all_reduce(bf16, 4096, sum)") && Contains("rank 1 all_gather(bf16, 2048)"));
    CHECK(c.rank == r);
    CHECK(c.group == "world group {0,1}");
    CHECK(c.operation == (r == 0 ? "all_reduce" : "all_gather"));
  }
}

TEST_CASE("checking: mismatched count, dtype, op and root", "[comm][checking]") {
  struct Case {
    const char* name;
    std::function<void(Rank&)> fn;
    std::vector<const char*> expect;
  };
  const std::vector<Case> cases{
      {"count",
       [](Rank& rank) {
         std::vector<float> v(static_cast<std::size_t>(100 + rank.id()));
         rank.world().all_reduce(view(v));
       },
       {"rank 0 all_reduce(fp32, 100, sum)", "rank 1 all_reduce(fp32, 101, sum)", "rank 2 all_reduce(fp32, 102, sum)"}},
      {"dtype",
       [](Rank& rank) {
         std::vector<float> f(64);
         std::vector<std::int32_t> i(64);
         if (rank.id() == 1)
           rank.world().all_reduce(view(i));
         else
           rank.world().all_reduce(view(f));
       },
       {"rank 0 all_reduce(fp32, 64, sum)", "rank 1 all_reduce(int32, 64, sum)", "rank 2 all_reduce(fp32, 64, sum)"}},
      {"op",
       [](Rank& rank) {
         std::vector<float> v(8);
         rank.world().all_reduce(view(v), rank.id() == 2 ? px::ReduceOp::max : px::ReduceOp::sum);
       },
       {"rank 2 all_reduce(fp32, 8, max)", "rank 0 all_reduce(fp32, 8, sum)"}},
      {"root",
       [](Rank& rank) {
         std::vector<float> v(8);
         rank.world().broadcast(view(v), rank.id() == 0 ? 0 : 1);
       },
       {"rank 0 broadcast(fp32, 8, root 0)", "rank 1 broadcast(fp32, 8, root 1)"}},
  };
  for (const Case& c : cases) {
    SECTION(c.name) {
      const Outcome o = run(3, c.fn);
      REQUIRE_FALSE(o.launch_error.empty());
      for (int r = 0; r < 3; ++r) {
        INFO("rank " << r << ": " << o.caught[static_cast<std::size_t>(r)].what);
        CHECK_THAT(o.caught[static_cast<std::size_t>(r)].what, Contains("mismatched calls"));
        for (const char* e : c.expect) CHECK_THAT(o.caught[static_cast<std::size_t>(r)].what, Contains(e));
      }
    }
  }
}

TEST_CASE("checking: after a mismatch the group refuses further calls", "[comm][checking]") {
  std::vector<std::string> second(2);
  const Outcome o = run(2, [&](Rank& rank) {
    std::vector<float> v(static_cast<std::size_t>(4 + rank.id()));
    try {
      rank.world().all_reduce(view(v));
    } catch (const px::Error&) {
      try {
        rank.world().barrier();
      } catch (const px::Error& e) {
        second[static_cast<std::size_t>(rank.id())] = e.what();
      }
      throw;
    }
  });
  REQUIRE_FALSE(o.launch_error.empty());
  for (const auto& s : second) CHECK_THAT(s, Contains("barrier() on world group {0,1}: the group is unusable"));
}

TEST_CASE("checking: a rank that skips a collective is named with its last completed call", "[comm][checking][timeout]") {
  const Outcome o = run(
      3,
      [](Rank& rank) {
        std::vector<float> v(8, 1.f);
        rank.world().barrier();                           // #1
        rank.world().all_reduce(view(v));                 // #2
        if (rank.id() != 2) rank.world().all_reduce(view(v));  // #3: rank 2 skips it
      },
      {.timeout = 300ms});
  REQUIRE_FALSE(o.launch_error.empty());
  CHECK(o.caught[2].what.empty());
  for (int r = 0; r < 2; ++r) {
    const std::string& w = o.caught[static_cast<std::size_t>(r)].what;
    INFO("rank " << r << ": " << w);
    CHECK_THAT(w, Contains("all_reduce(fp32, 8, sum) #3 on world group {0,1,2} timed out after 300 ms") &&
                      Contains("ranks {2} have not arrived (arrived: {0,1})") &&
                      Contains("rank 2 last completed #2 all_reduce(fp32, 8, sum)"));
  }
  CHECK(o.elapsed >= 300ms);
  CHECK(o.elapsed < 5s);
}

TEST_CASE("checking: PARALLAX_COMM_TIMEOUT sets the timeout in seconds", "[comm][checking][timeout]") {
  ::setenv("PARALLAX_COMM_TIMEOUT", "0.25", 1);
  const Outcome o = run(2, [](Rank& rank) {
    if (rank.id() == 0) rank.world().barrier();
  });
  ::unsetenv("PARALLAX_COMM_TIMEOUT");
  CHECK_THAT(o.caught[0].what, Contains("barrier() #1 on world group {0,1} timed out after 250 ms") &&
                                   Contains("ranks {1} have not arrived") && Contains("rank 1 last completed none"));
}

TEST_CASE("checking: a send without a matching recv times out naming the peer", "[comm][checking][timeout]") {
  SECTION("send") {
    const Outcome o = run(
        2,
        [](Rank& rank) {
          std::vector<float> v(16);
          if (rank.id() == 0) rank.world().send(cview(v), 1);
        },
        {.timeout = 300ms});
    INFO(o.caught[0].what);
    CHECK_THAT(o.caught[0].what, Contains("send(fp32, 16, to 1)") && Contains("timed out after 300 ms") &&
                                     Contains("rank 1 did not post the matching recv") && Contains("(rank 0)"));
    CHECK(o.caught[1].what.empty());
  }
  SECTION("recv, on a subgroup (the message names world ranks)") {
    const Outcome o = run(
        4,
        [](Rank& rank) {
          px::Communicator odd = rank.world().split(rank.id() % 2, rank.id(), "odd");
          std::vector<float> v(4);
          if (rank.id() == 3) odd.recv(view(v), 0);  // group rank 0 of {1,3} is world rank 1
        },
        {.timeout = 300ms});
    INFO(o.caught[3].what);
    CHECK_THAT(o.caught[3].what, Contains("recv(fp32, 4, from 0)") && Contains("odd group {1,3}") &&
                                     Contains("rank 1 did not post the matching send") && Contains("(rank 3)"));
  }
}

TEST_CASE("checking: point-to-point count or dtype mismatch fails on both sides", "[comm][checking]") {
  SECTION("count") {
    const Outcome o = run(2, [](Rank& rank) {
      std::vector<float> v(rank.id() == 0 ? 16 : 8);
      if (rank.id() == 0)
        rank.world().send(cview(v), 1);
      else
        rank.world().recv(view(v), 0);
    });
    for (int r = 0; r < 2; ++r) {
      INFO("rank " << r << ": " << o.caught[static_cast<std::size_t>(r)].what);
      CHECK_THAT(o.caught[static_cast<std::size_t>(r)].what,
                 Contains("point-to-point mismatch on world group {0,1}: rank 0 send(fp32, 16, to 1), rank 1 recv(fp32, 8, from 0)"));
    }
  }
  SECTION("dtype") {
    const Outcome o = run(2, [](Rank& rank) {
      std::vector<std::int32_t> i(8);
      std::vector<float> f(8);
      if (rank.id() == 1)
        rank.world().send(cview(i), 0);
      else
        rank.world().recv(view(f), 1);
    });
    for (int r = 0; r < 2; ++r)
      CHECK_THAT(o.caught[static_cast<std::size_t>(r)].what, Contains("rank 1 send(int32, 8, to 0), rank 0 recv(fp32, 8, from 1)"));
  }
}

TEST_CASE("checking: an exception in one rank releases the others well before the timeout", "[comm][checking]") {
  const Outcome o = run(
      4,
      [](Rank& rank) {
        std::vector<float> v(1024, 1.f);
        rank.world().barrier();
        switch (rank.id()) {
          case 3: throw std::runtime_error("boom");
          case 2: {  // waits in an async collective
            px::Work w = rank.world().all_reduce_async(view(v));
            w.wait();
            break;
          }
          case 1: rank.world().recv(view(v), 3); break;  // waits for a send that never comes
          default: rank.world().all_reduce(view(v)); break;
        }
      },
      {.timeout = 20s});
  CHECK(o.elapsed < 3s);
  CHECK_THAT(o.launch_error, Contains("launch: rank 3 failed: boom"));
  CHECK(o.caught[3].what.empty());  // a std::runtime_error, not recorded
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r << ": " << o.caught[static_cast<std::size_t>(r)].what);
    CHECK_THAT(o.caught[static_cast<std::size_t>(r)].what, Contains("released because rank 3 failed: boom"));
  }
  CHECK_THAT(o.caught[1].what, Contains("recv(fp32, 1024, from 3)"));
  CHECK_THAT(o.caught[0].what, Contains("all_reduce(fp32, 1024, sum) #2 on world group {0,1,2,3}"));
}

// Tests for parallax/comm/mpi_communicator.hpp, run on 4 processes (mpirun -np 4): every call x element type
// x size against a scalar reference computed from the known per-rank inputs, subgroups from split, async
// overlap, the checking layer (mismatched calls) and timeouts.
//
// Every rank runs the same test cases in the same order; checks use CHECK, not REQUIRE, where a failure on
// one rank must not change which collectives that rank calls next.
#include "parallax/comm/mpi_communicator.hpp"

#include <catch2/catch.hpp>

#include "../support/support.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "parallax/backend/host/memory.hpp"
#include "parallax/comm/communicator.hpp"

using parallax::test::cview;
using parallax::test::view;

namespace {

namespace px = parallax;
using px::ReduceOp;
using Space = px::host::Memory;

constexpr std::int64_t sizes[] = {0, 1, 7, 100003};
constexpr ReduceOp ops[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min};
const std::vector<int> everyone{0, 1, 2, 3};

// The world transport, created once (collectively: every rank runs the first test first).
std::shared_ptr<px::MpiCommunicator> world_transport() {
  static const auto w = [] {
    auto c = px::MpiCommunicator::world();
    c->set_timeout(std::chrono::seconds(30));  // a bug fails the run instead of hanging it
    return c;
  }();
  return w;
}
px::Communicator world() { return px::Communicator(world_transport()); }

template <class T>
constexpr bool is_half = std::is_same_v<T, px::bf16> || std::is_same_v<T, px::fp16>;
template <class T>
using Acc = std::conditional_t<is_half<T>, float, T>;

// Rank r's element i: small integers, exact in every element type, as are the sums of four of them.
template <class T>
T value(int rank, std::int64_t i) {
  const std::int64_t v = (rank + 1) * (i % 13) - 5;
  if constexpr (std::is_integral_v<T>) return static_cast<T>(v);
  else return T(static_cast<float>(v));
}

// The reduction of element i over the given world ranks, computed the way the library defines it.
template <class T>
T expected(ReduceOp op, const std::vector<int>& ranks, std::int64_t i) {
  Acc<T> acc = static_cast<Acc<T>>(value<T>(ranks[0], i));
  for (std::size_t k = 1; k < ranks.size(); ++k) {
    const auto v = static_cast<Acc<T>>(value<T>(ranks[k], i));
    if (op == ReduceOp::max) acc = std::max(acc, v);
    else if (op == ReduceOp::min) acc = std::min(acc, v);
    else acc = static_cast<Acc<T>>(acc + v);
  }
  if (op == ReduceOp::avg) acc = static_cast<Acc<T>>(acc / static_cast<Acc<T>>(ranks.size()));
  return T(acc);
}

template <class T>
bool same(T a, T b) {
  if constexpr (is_half<T>) return a.bits == b.bits;
  else return a == b;
}

template <class T>
std::vector<T> filled(int rank, std::int64_t n, std::int64_t offset = 0) {
  std::vector<T> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = value<T>(rank, offset + i);
  return v;
}


// Checks every element against want(i), reporting how many differ and the first one.
template <class T, class Want>
void check_all(const std::vector<T>& got, Want want, const std::string& what) {
  std::int64_t bad = 0, first = -1;
  double got_first = 0, want_first = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const T w = want(static_cast<std::int64_t>(i));
    if (!same(got[i], w)) {
      if (first < 0) {
        first = static_cast<std::int64_t>(i);
        got_first = static_cast<double>(got[i]);
        want_first = static_cast<double>(w);
      }
      ++bad;
    }
  }
  INFO(what << " (rank " << world().rank() << "): " << bad << " wrong elements; first at " << first << ": got "
            << got_first << ", expected " << want_first);
  CHECK(bad == 0);
}

// The message of the px::Error that f throws, or "" when it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const px::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

#define PX_ELEMENT_TYPES float, px::bf16, px::fp16, std::int32_t, std::int64_t, double

TEST_CASE("MpiCommunicator: the world group", "[mpi]") {
  auto w = world();
  REQUIRE(w.size() == 4);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  CHECK(w.rank() == rank);
  CHECK(w.members() == everyone);
  CHECK(w.label() == "world");
  CHECK(w.describe() == "world group {0,1,2,3}");
  CHECK(w.transport().memory_space() == "host");
  CHECK(world_transport()->native() != MPI_COMM_WORLD);  // a duplicate
  CHECK(px::MpiEnvironment::thread_level() >= MPI_THREAD_SINGLE);
  w.barrier();
}

TEMPLATE_TEST_CASE("MpiCommunicator: all_reduce, every element type, size and op", "[mpi]", PX_ELEMENT_TYPES) {
  auto w = world();
  for (std::int64_t n : sizes)
    for (ReduceOp op : ops) {
      auto buf = filled<TestType>(w.rank(), n);
      w.all_reduce(view(buf), op);
      check_all(buf, [&](std::int64_t i) { return expected<TestType>(op, everyone, i); },
                fmt::format("all_reduce({}, {}, {})", px::name(px::dtype_of<TestType>), n, px::name(op)));
    }
}

TEMPLATE_TEST_CASE("MpiCommunicator: reduce_scatter, every element type, size and op", "[mpi]", PX_ELEMENT_TYPES) {
  auto w = world();
  for (std::int64_t n : sizes)
    for (ReduceOp op : ops) {
      const auto in = filled<TestType>(w.rank(), 4 * n);
      std::vector<TestType> out(static_cast<std::size_t>(n));
      w.reduce_scatter(cview(in), view(out), op);
      const std::int64_t offset = w.rank() * n;
      check_all(out, [&](std::int64_t i) { return expected<TestType>(op, everyone, offset + i); },
                fmt::format("reduce_scatter({}, {}, {})", px::name(px::dtype_of<TestType>), n, px::name(op)));
    }
}

TEMPLATE_TEST_CASE("MpiCommunicator: all_gather, every element type and size", "[mpi]", PX_ELEMENT_TYPES) {
  auto w = world();
  for (std::int64_t n : sizes) {
    const auto in = filled<TestType>(w.rank(), n);
    std::vector<TestType> out(static_cast<std::size_t>(4 * n));
    w.all_gather(cview(in), view(out));
    check_all(out, [&](std::int64_t i) { return value<TestType>(static_cast<int>(i / n), i % n); },
              fmt::format("all_gather({}, {})", px::name(px::dtype_of<TestType>), n));
  }
  // In place: this rank's input is already its chunk of the output.
  const std::int64_t n = 7;
  std::vector<TestType> out(4 * n);
  for (std::int64_t i = 0; i < n; ++i) out[static_cast<std::size_t>(w.rank() * n + i)] = value<TestType>(w.rank(), i);
  w.all_gather(px::View<const TestType, Space>(out.data() + w.rank() * n, px::Shape{n}), view(out));
  check_all(out, [&](std::int64_t i) { return value<TestType>(static_cast<int>(i / n), i % n); }, "all_gather in place");
}

TEMPLATE_TEST_CASE("MpiCommunicator: broadcast from every root, every element type and size", "[mpi]", PX_ELEMENT_TYPES) {
  auto w = world();
  for (std::int64_t n : sizes)
    for (int root = 0; root < 4; ++root) {
      auto buf = filled<TestType>(w.rank(), n);
      w.broadcast(view(buf), root);
      check_all(buf, [&](std::int64_t i) { return value<TestType>(root, i); },
                fmt::format("broadcast({}, {}, root {})", px::name(px::dtype_of<TestType>), n, root));
    }
}

TEMPLATE_TEST_CASE("MpiCommunicator: reduce to every root, every element type, size and op", "[mpi]", PX_ELEMENT_TYPES) {
  auto w = world();
  for (std::int64_t n : sizes)
    for (ReduceOp op : ops)
      for (int root = 0; root < 4; ++root) {
        auto buf = filled<TestType>(w.rank(), n);
        w.reduce(view(buf), op, root);
        const std::string what =
            fmt::format("reduce({}, {}, {}, root {})", px::name(px::dtype_of<TestType>), n, px::name(op), root);
        if (w.rank() == root) check_all(buf, [&](std::int64_t i) { return expected<TestType>(op, everyone, i); }, what);
        else check_all(buf, [&](std::int64_t i) { return value<TestType>(w.rank(), i); }, what + ", non-root unchanged");
      }
}

TEMPLATE_TEST_CASE("MpiCommunicator: send/recv in a ring and in pairs, every element type and size", "[mpi]",
                   PX_ELEMENT_TYPES) {
  auto w = world();
  const int r = w.rank(), next = (r + 1) % 4, prev = (r + 3) % 4;
  for (std::int64_t n : sizes) {
    // Ring: post the send, receive, then wait for the send.
    const auto mine = filled<TestType>(r, n);
    std::vector<TestType> got(static_cast<std::size_t>(n));
    px::Work s = w.send_async(cview(mine), next);
    w.recv(view(got), prev);
    s.wait();
    check_all(got, [&](std::int64_t i) { return value<TestType>(prev, i); },
              fmt::format("ring recv({}, {})", px::name(px::dtype_of<TestType>), n));

    // Pairs (0,1) and (2,3), blocking: two messages each way, received in the order they were sent.
    const int peer = r ^ 1;
    const auto second = filled<TestType>(r, n, 5);
    std::vector<TestType> got1(static_cast<std::size_t>(n)), got2(static_cast<std::size_t>(n));
    if (r % 2 == 0) {
      w.send(cview(mine), peer);
      w.send(cview(second), peer);
      w.recv(view(got1), peer);
      w.recv(view(got2), peer);
    } else {
      w.recv(view(got1), peer);
      w.recv(view(got2), peer);
      w.send(cview(mine), peer);
      w.send(cview(second), peer);
    }
    check_all(got1, [&](std::int64_t i) { return value<TestType>(peer, i); }, "pair, first message");
    check_all(got2, [&](std::int64_t i) { return value<TestType>(peer, 5 + i); }, "pair, second message");
  }
}

TEST_CASE("MpiCommunicator: barrier, blocking and async", "[mpi]") {
  auto w = world();
  w.barrier();
  px::Work b = w.barrier_async();
  b.wait();
  CHECK(b.ready());
  b.wait();  // idempotent
}

TEST_CASE("MpiCommunicator: split into even and odd ranks", "[mpi]") {
  auto w = world();
  const int r = w.rank();
  auto half = w.split(r % 2, r, "half");
  REQUIRE(half.valid());
  const std::vector<int> members = r % 2 == 0 ? std::vector<int>{0, 2} : std::vector<int>{1, 3};
  CHECK(half.members() == members);
  CHECK(half.size() == 2);
  CHECK(half.rank() == r / 2);
  CHECK(half.world_rank() == r);
  CHECK(half.describe() == fmt::format("half group {{{},{}}}", members[0], members[1]));

  for (ReduceOp op : ops) {
    auto f = filled<float>(r, 100003);
    half.all_reduce(view(f), op);
    check_all(f, [&](std::int64_t i) { return expected<float>(op, members, i); }, "half all_reduce fp32");
    auto h = filled<px::bf16>(r, 7);
    half.all_reduce(view(h), op);
    check_all(h, [&](std::int64_t i) { return expected<px::bf16>(op, members, i); }, "half all_reduce bf16");
  }
  auto b = filled<std::int64_t>(r, 7);
  half.broadcast(view(b), 1);  // group rank 1 = world rank 2 or 3
  check_all(b, [&](std::int64_t i) { return value<std::int64_t>(members[1], i); }, "half broadcast");

  const auto mine = filled<double>(r, 7);
  std::vector<double> theirs(7);
  px::Work s = half.send_async(cview(mine), 1 - half.rank());
  half.recv(view(theirs), 1 - half.rank());
  s.wait();
  check_all(theirs, [&](std::int64_t i) { return value<double>(members[static_cast<std::size_t>(1 - half.rank())], i); },
            "half send/recv");

  // Each half splits again into singletons.
  auto one = half.split(half.rank(), 0, "one");
  REQUIRE(one.valid());
  CHECK(one.members() == std::vector<int>{r});
  auto x = filled<std::int32_t>(r, 7);
  one.all_reduce(view(x), ReduceOp::avg);
  check_all(x, [&](std::int64_t i) { return value<std::int32_t>(r, i); }, "singleton all_reduce");
  w.barrier();
}

TEST_CASE("MpiCommunicator: split orders by key, and a negative color joins no group", "[mpi]") {
  auto w = world();
  const int r = w.rank();
  auto rev = w.split(0, -r, "rev");
  REQUIRE(rev.valid());
  CHECK(rev.members() == std::vector<int>{3, 2, 1, 0});
  CHECK(rev.rank() == 3 - r);
  const auto in = filled<px::fp16>(r, 7);
  std::vector<px::fp16> out(28);
  rev.all_gather(cview(in), view(out));
  check_all(out, [&](std::int64_t i) { return value<px::fp16>(3 - static_cast<int>(i / 7), i % 7); }, "rev all_gather");

  auto three = w.split(r == 3 ? -1 : 7, r, "three");
  CHECK(three.valid() == (r != 3));
  if (r != 3) {
    CHECK(three.members() == std::vector<int>{0, 1, 2});
    auto v = filled<px::bf16>(r, 100003);
    three.all_reduce(view(v), ReduceOp::max);
    check_all(v, [&](std::int64_t i) { return expected<px::bf16>(ReduceOp::max, {0, 1, 2}, i); }, "three all_reduce max");
  } else {
    CHECK(error_of([&] { three.barrier(); }).find("not a member") != std::string::npos);
  }
  w.barrier();
}

TEST_CASE("MpiCommunicator: async calls overlap and complete in any wait order", "[mpi]") {
  auto w = world();
  const int r = w.rank(), next = (r + 1) % 4, prev = (r + 3) % 4;
  const std::int64_t n = 100003;
  auto a = filled<float>(r, n);
  auto b = filled<px::bf16>(r, n);
  const auto g_in = filled<std::int64_t>(r, 7);
  std::vector<std::int64_t> g_out(28);
  auto c = filled<double>(r, n);
  const auto rs_in = filled<px::fp16>(r, 4 * 7);
  std::vector<px::fp16> rs_out(7);
  const auto p_out = filled<std::int32_t>(r, n);
  std::vector<std::int32_t> p_in(static_cast<std::size_t>(n));

  std::vector<px::Work> works;
  works.push_back(w.all_reduce_async(view(a), ReduceOp::sum));
  works.push_back(w.recv_async(view(p_in), prev));
  works.push_back(w.all_reduce_async(view(b), ReduceOp::avg));
  works.push_back(w.all_gather_async(cview(g_in), view(g_out)));
  works.push_back(w.broadcast_async(view(c), 2));
  works.push_back(w.reduce_scatter_async(cview(rs_in), view(rs_out), ReduceOp::max));
  works.push_back(w.send_async(cview(p_out), next));
  works.push_back(w.barrier_async());
  // Poll one for a while, then wait for all, last first.
  for (int spins = 0; !works.front().ready() && spins < 1000000; ++spins) {
  }
  for (auto it = works.rbegin(); it != works.rend(); ++it) it->wait();
  for (auto& wk : works) CHECK(wk.ready());

  check_all(a, [&](std::int64_t i) { return expected<float>(ReduceOp::sum, everyone, i); }, "async all_reduce fp32");
  check_all(b, [&](std::int64_t i) { return expected<px::bf16>(ReduceOp::avg, everyone, i); }, "async all_reduce bf16 avg");
  check_all(g_out, [&](std::int64_t i) { return value<std::int64_t>(static_cast<int>(i / 7), i % 7); }, "async all_gather");
  check_all(c, [&](std::int64_t i) { return value<double>(2, i); }, "async broadcast");
  check_all(rs_out, [&](std::int64_t i) { return expected<px::fp16>(ReduceOp::max, everyone, r * 7 + i); },
            "async reduce_scatter");
  check_all(p_in, [&](std::int64_t i) { return value<std::int32_t>(prev, i); }, "async recv");

  // A Work dropped without wait() completes in its destructor (avg included).
  auto d = filled<float>(r, 7);
  { px::Work dropped = w.all_reduce_async(view(d), ReduceOp::avg); }
  check_all(d, [&](std::int64_t i) { return expected<float>(ReduceOp::avg, everyone, i); }, "dropped all_reduce");
}

TEST_CASE("MpiCommunicator: the checking layer passes matching calls", "[mpi]") {
  auto t = world_transport()->split_mpi(0, world().rank(), "checked");
  REQUIRE(t != nullptr);
  t->set_checking(true);
  CHECK(t->checking());
  px::Communicator c(t);
  const int r = c.rank();
  auto v = filled<px::bf16>(r, 4096);
  c.all_reduce(view(v), ReduceOp::sum);
  check_all(v, [&](std::int64_t i) { return expected<px::bf16>(ReduceOp::sum, everyone, i); }, "checked all_reduce");
  auto b = filled<float>(r, 7);
  c.broadcast(view(b), 3);
  check_all(b, [&](std::int64_t i) { return value<float>(3, i); }, "checked broadcast");
  const auto mine = filled<std::int64_t>(r, 7);
  std::vector<std::int64_t> got(7);
  px::Work s = c.send_async(cview(mine), (r + 1) % 4);
  c.recv(view(got), (r + 3) % 4);
  s.wait();
  check_all(got, [&](std::int64_t i) { return value<std::int64_t>((r + 3) % 4, i); }, "checked send/recv");
  auto sub = c.split(r / 2, r, "checked_pair");  // inherits checking
  CHECK(dynamic_cast<px::MpiCommunicator&>(sub.transport()).checking());
  sub.barrier();
}

TEST_CASE("MpiCommunicator: mismatched collectives throw on every rank, naming each rank's call", "[mpi]") {
  auto t = world_transport()->split_mpi(0, world().rank(), "checked");
  t->set_checking(true);
  px::Communicator c(t);
  const int r = c.rank();
  c.barrier();  // #1
  std::vector<px::bf16> data(4096), gathered(8192);
  const std::string msg = error_of([&] {
    if (r == 1) c.all_gather(px::View<const px::bf16, Space>(data.data(), px::Shape{2048}), view(gathered));
    else c.all_reduce(view(data), ReduceOp::sum);
  });
  INFO(msg);
  CHECK(msg.find("collective #2 on checked group {0,1,2,3}: mismatched calls: rank 0 all_reduce(bf16, 4096, sum), "
                 "rank 1 all_gather(bf16, 2048), rank 2 all_reduce(bf16, 4096, sum), rank 3 all_reduce(bf16, 4096, sum)") !=
        std::string::npos);
  CHECK(msg.find(fmt::format("(rank {})", r)) != std::string::npos);
  // The group is unusable afterwards, on every rank.
  CHECK(error_of([&] { c.barrier(); }).find("unusable") != std::string::npos);
  world().barrier();
}

TEST_CASE("MpiCommunicator: point-to-point mismatches are reported by the receiver", "[mpi]") {
  auto w = world();
  const int r = w.rank();
  SECTION("checked: element type") {
    auto t = world_transport()->split_mpi(0, r, "p2p");
    t->set_checking(true);
    px::Communicator c(t);
    std::vector<float> f(10, 1.f);
    std::vector<std::int32_t> i(10);
    std::string msg;
    if (r == 0) c.send(cview(f), 1);
    if (r == 1) msg = error_of([&] { c.recv(view(i), 0); });
    if (r == 1)
      CHECK(msg.find("point-to-point mismatch on p2p group {0,1,2,3}: rank 0 send(fp32, 10, to 1), rank 1 "
                     "recv(int32, 10, from 0)") != std::string::npos);
    w.barrier();
  }
  SECTION("unchecked: element count") {
    auto t = world_transport()->split_mpi(0, r, "p2p");
    t->set_checking(false);
    px::Communicator c(t);
    std::vector<std::int32_t> few(5, 3), many(10);
    std::string msg;
    if (r == 0) c.send(cview(few), 1);
    if (r == 1) msg = error_of([&] { c.recv(view(many), 0); });
    if (r == 1) {
      INFO(msg);
      CHECK(msg.find("recv(int32, 10, from 0) on p2p group {0,1,2,3}: rank 0 sent 5 elements, 10 expected") !=
            std::string::npos);
    }
    w.barrier();
  }
}

TEST_CASE("MpiCommunicator: a call some rank never makes times out with the group, rank and last call", "[mpi]") {
  auto w = world();
  const int r = w.rank();
  const bool checked = GENERATE(false, true);
  auto t = world_transport()->split_mpi(r < 2 ? 0 : -1, r, "pair");
  CHECK((t != nullptr) == (r < 2));
  if (t) {
    t->set_checking(checked);
    px::Communicator pair(t);
    pair.barrier();  // #1
    if (r == 0) {
      t->set_timeout(std::chrono::milliseconds(300));
      const std::string msg = error_of([&] { pair.barrier(); });  // rank 1 is not there yet
      INFO(msg);
      CHECK(msg.find(fmt::format("barrier() #2 on pair group {{0,1}} timed out after 300 ms{}; last completed: #1 "
                                 "barrier(); a timed-out MPI operation cannot be cancelled, so this process should "
                                 "exit (rank 0)",
                                 checked ? " while exchanging call descriptions (a rank has not made this call)" : "")) !=
            std::string::npos);
      CHECK(error_of([&] { pair.barrier(); }).find("unusable") != std::string::npos);
    }
    w.barrier();
    // Rank 1 now makes the call rank 0 abandoned, so nothing stays pending; with checking, rank 0 abandoned
    // the description exchange and meets rank 1's barrier directly.
    if (r == 1) pair.barrier();
    if (r == 0 && checked) {  // (a nonblocking collective never matches a blocking one)
      MPI_Request req = MPI_REQUEST_NULL;
      MPI_Ibarrier(t->native(), &req);
      MPI_Wait(&req, MPI_STATUS_IGNORE);
    }
  } else {
    w.barrier();
  }
  w.barrier();
}

TEST_CASE("MpiCommunicator: set_timeout rejects a non-positive timeout", "[mpi]") {
  CHECK(error_of([] { world_transport()->set_timeout(std::chrono::milliseconds(0)); }).find("not positive") !=
        std::string::npos);
}

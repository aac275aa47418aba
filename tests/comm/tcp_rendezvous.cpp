// Tests for parallax/comm/tcp_rendezvous.hpp: ranks are fork()ed processes on 127.0.0.1 that report
// what they saw (or the error they threw) through a pipe; only the parent asserts.
#include "parallax/comm/tcp_rendezvous.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using parallax::TcpRendezvous;
using Catch::Matchers::Contains;
using Catch::Matchers::Message;

// A socket bound to 127.0.0.1 on a port the kernel picked; `listening` keeps the port busy.
parallax::detail::Fd bound_socket(int& port, bool listening) {
  parallax::detail::Fd fd(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  if (listening) REQUIRE(::listen(fd.get(), 1) == 0);
  port = ntohs(sa.sin_port);
  return fd;
}

int free_port() {
  int port = 0;
  bound_socket(port, false);
  return port;
}

struct Outcome {
  bool ok;           // exited 0
  std::string text;  // what the body returned, or the exception's message
};

struct Child {
  pid_t pid;
  int out;
};

// Runs `body` in a child process; it ends with _exit, never returning into Catch2.
Child spawn(const std::function<std::string()>& body) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    ::alarm(10);  // a hung rank dies by SIGALRM instead of hanging the suite
    int code = 0;
    std::string text;
    try {
      text = body();
    } catch (const std::exception& e) {
      text = e.what();
      code = 1;
    }
    for (std::string_view rest = text; !rest.empty();) {
      const ssize_t n = ::write(fds[1], rest.data(), rest.size());
      if (n <= 0) break;
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

std::vector<Outcome> finish(const std::vector<Child>& children) {
  std::vector<Outcome> outcomes;
  for (const Child& c : children) {
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = ::read(c.out, buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
    ::close(c.out);
    int status = 0;
    ::waitpid(c.pid, &status, 0);
    if (WIFSIGNALED(status)) text = "killed by signal " + std::to_string(WTERMSIG(status));
    outcomes.push_back({WIFEXITED(status) && WEXITSTATUS(status) == 0, text});
  }
  return outcomes;
}

std::vector<std::byte> bytes(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

std::string text(const std::vector<std::byte>& b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// Rank r's all_gather contribution; rank 3's is large enough to need several send() calls.
std::vector<std::byte> blob(int r) {
  std::vector<std::byte> b(r == 3 ? 300'000 : static_cast<std::size_t>(r) * 7);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>(r * 31 + i);
  return b;
}

}  // namespace

TEST_CASE("TcpRendezvous: 4 ranks broadcast and all_gather", "[comm][tcp_rendezvous]") {
  const int port = free_port();
  std::vector<Child> children;
  for (int r = 0; r < 4; ++r)
    children.push_back(spawn([=] {
      if (r == 2) std::this_thread::sleep_for(50ms);  // a late rank
      TcpRendezvous rdv("127.0.0.1", port, r, 4, 5000ms);
      const auto id = rdv.broadcast(bytes(r == 0 ? "nccl-unique-id" : "ignored"));
      const auto all = rdv.all_gather(blob(r));
      bool same = all.size() == 4;
      for (int q = 0; same && q < 4; ++q) same = all[q] == blob(q);
      const auto again = rdv.broadcast(bytes(r == 0 ? "second" : ""));
      return text(id) + (same ? " gathered " : " mismatch ") + text(again);
    }));
  for (const Outcome& o : finish(children)) {
    CHECK(o.ok);
    CHECK(o.text == "nccl-unique-id gathered second");
  }
}

TEST_CASE("TcpRendezvous: world size 1 needs no sockets", "[comm][tcp_rendezvous]") {
  TcpRendezvous rdv("", 0, 0, 1, 1ms);
  CHECK(text(rdv.broadcast(bytes("solo"))) == "solo");
  const auto all = rdv.all_gather(bytes("mine"));
  REQUIRE(all.size() == 1);
  CHECK(text(all[0]) == "mine");
}

TEST_CASE("TcpRendezvous: rejects bad arguments", "[comm][tcp_rendezvous]") {
  CHECK_THROWS_MATCHES(TcpRendezvous("127.0.0.1", 29500, 4, 4, 1000ms), parallax::Error,
                       Message("TcpRendezvous: rank 4 is not in 0..3 (world size 4)"));
  CHECK_THROWS_MATCHES(TcpRendezvous("127.0.0.1", 70000, 1, 4, 1000ms), parallax::Error,
                       Message("TcpRendezvous: port 70000 is not in 1..65535 (rank 1)"));
}

TEST_CASE("TcpRendezvous: a missing rank times out on every rank that came", "[comm][tcp_rendezvous]") {
  const int port = free_port();
  std::vector<Child> children;
  for (int r = 0; r < 2; ++r)  // world size 3, rank 2 never starts
    children.push_back(spawn([=] {
      TcpRendezvous rdv("127.0.0.1", port, r, 3, 500ms);
      return std::string("no error");
    }));
  const std::string expected = fmt::format(
      "TcpRendezvous: timed out after 500 ms on 127.0.0.1:{} waiting for ranks {{2}} (arrived: {{0,1}})", port);
  for (const Outcome& o : finish(children)) {
    CHECK_FALSE(o.ok);
    CHECK(o.text == expected);
  }
}

TEST_CASE("TcpRendezvous: a busy port is reported", "[comm][tcp_rendezvous]") {
  int port = 0;
  const auto holder = bound_socket(port, true);
  CHECK_THROWS_MATCHES(TcpRendezvous("127.0.0.1", port, 0, 2, 500ms), parallax::Error,
                       Message(fmt::format("TcpRendezvous: port {} on 127.0.0.1 is in use (rank 0)", port)));
}

TEST_CASE("TcpRendezvous: a rank that never reaches rank 0 times out naming the address", "[comm][tcp_rendezvous]") {
  const int port = free_port();
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(TcpRendezvous("127.0.0.1", port, 1, 2, 200ms),
                    Contains(fmt::format("timed out after 200 ms connecting to rank 0 at 127.0.0.1:{}", port)) &&
                        Contains("(rank 1)"));
  CHECK(std::chrono::steady_clock::now() - start < 2s);
}

TEST_CASE("TcpRendezvous: disagreeing world sizes fail on both sides", "[comm][tcp_rendezvous]") {
  const int port = free_port();
  std::vector<Child> children;
  for (int r = 0; r < 3; ++r)
    children.push_back(spawn([=] {
      if (r == 2) std::this_thread::sleep_for(50ms);  // rank 1 is usually connected by then
      TcpRendezvous rdv("127.0.0.1", port, r, r == 2 ? 4 : 3, 1000ms);
      return std::string("no error");
    }));
  const auto outcomes = finish(children);
  const std::string expected = "TcpRendezvous: rank 2 says world size 4, rank 0 says 3";
  for (const Outcome& o : outcomes) CHECK_FALSE(o.ok);
  CHECK(outcomes[0].text == expected);
  CHECK(outcomes[2].text == expected);
  INFO(outcomes[1].text);  // rank 1 gets the same text when it connected first, else its own timeout
  CHECK((outcomes[1].text == expected || outcomes[1].text.find("timed out") != std::string::npos));
}

TEST_CASE("TcpRendezvous: a duplicate rank fails everywhere", "[comm][tcp_rendezvous]") {
  const int port = free_port();
  std::vector<Child> children;
  for (int r : {0, 1, 1})
    children.push_back(spawn([=] {
      TcpRendezvous rdv("127.0.0.1", port, r, 3, 1000ms);
      return std::string("no error");
    }));
  for (const Outcome& o : finish(children)) {
    CHECK_FALSE(o.ok);
    CHECK(o.text == "TcpRendezvous: rank 1 connected twice");
  }
}

// parallax/comm/tcp_rendezvous.hpp — the TCP bootstrap that lets the ranks of a launch find rank 0 and
// exchange small blobs (an NCCL unique id, host names) before any GPU communicator exists. Linux only.
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "parallax/comm/detail/socket.hpp"
#include "parallax/error.hpp"

namespace parallax {

//! Star-shaped rendezvous over TCP: rank 0 listens on addr:port, every other rank connects to it.
//!
//! The constructor returns once all `world_size` ranks have checked in, or throws `Error` on every
//! rank it can reach (disagreeing world sizes, a duplicate rank, a rank missing at the timeout, a busy
//! port). Every wait is bounded by `timeout`; other ranks allow twice that for rank 0's answers, since
//! rank 0 may itself spend `timeout` waiting on someone else. After an error the object is unusable.
//! ```
//! parallax::TcpRendezvous rdv("10.0.0.1", 29500, rank, world_size, std::chrono::seconds(30));
//! std::vector<std::byte> id = rdv.broadcast(rank == 0 ? my_id_bytes : std::span<const std::byte>{});
//! ```
class TcpRendezvous {
 public:
  TcpRendezvous(std::string addr, int port, int rank, int world_size, std::chrono::milliseconds timeout)
      : addr_(std::move(addr)), port_(port), rank_(rank), world_size_(world_size), timeout_(timeout) {
    if (world_size_ < 1 || rank_ < 0 || rank_ >= world_size_)
      throw Error(fmt::format("TcpRendezvous: rank {} is not in 0..{} (world size {})", rank_, world_size_ - 1,
                              world_size_));
    if (world_size_ == 1) return;
    if (port_ < 1 || port_ > 65535)
      throw Error(fmt::format("TcpRendezvous: port {} is not in 1..65535", port_), rank_);
    if (timeout_.count() <= 0)
      throw Error(fmt::format("TcpRendezvous: timeout {} ms is not positive", timeout_.count()), rank_);
    if (rank_ == 0)
      accept_peers();
    else
      join_root();
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int world_size() const noexcept { return world_size_; }

  //! Returns rank 0's `payload` on every rank; other ranks' `payload` is ignored.
  std::vector<std::byte> broadcast(std::span<const std::byte> payload) {
    check_usable();
    if (rank_ == 0) {
      const auto deadline = detail::Clock::now() + timeout_;
      for (int r = 1; r < world_size_; ++r) send_to(r, kData, payload, deadline, "broadcast");
      return {payload.begin(), payload.end()};
    }
    return receive_from_root("broadcast");
  }

  //! Returns every rank's `mine`, in rank order, on every rank.
  std::vector<std::vector<std::byte>> all_gather(std::span<const std::byte> mine) {
    check_usable();
    std::vector<std::vector<std::byte>> all(world_size_);
    if (rank_ == 0) {
      const auto deadline = detail::Clock::now() + timeout_;
      all[0].assign(mine.begin(), mine.end());
      for (int r = 1; r < world_size_; ++r) {
        detail::Frame frame;
        const detail::Io s = detail::recv_frame(peers_[r].get(), frame, deadline);
        if (s != detail::Io::ok) fail(fmt::format("TcpRendezvous: all_gather: {}", io_reason(s, r)));
        if (frame.kind != kData)
          fail(fmt::format("TcpRendezvous: all_gather: rank {} sent an unexpected message", r));
        all[r] = std::move(frame.bytes);
      }
      for (int r = 1; r < world_size_; ++r)
        for (const auto& bytes : all) send_to(r, kData, bytes, deadline, "all_gather");
    } else {
      const detail::Io s = detail::send_frame(root_.get(), kData, mine, peer_deadline());
      if (s != detail::Io::ok) fail(fmt::format("TcpRendezvous: all_gather: {}", io_reason(s, 0)), rank_);
      for (auto& bytes : all) bytes = receive_from_root("all_gather");
    }
    return all;
  }

 private:
  static constexpr std::uint32_t kMagic = 0x50524c58;  // "PRLX"
  static constexpr std::uint32_t kData = 1;            // frame kinds
  static constexpr std::uint32_t kError = 2;

  [[nodiscard]] detail::Clock::time_point peer_deadline() const { return detail::Clock::now() + 2 * timeout_; }

  void check_usable() const {
    if (broken_) throw Error("TcpRendezvous: unusable after an earlier error", rank_);
  }

  // Why a transfer with rank `other` did not complete; read errno first.
  [[nodiscard]] std::string io_reason(detail::Io s, int other) const {
    const int error = errno;
    switch (s) {
      case detail::Io::timeout:
        return fmt::format("timed out after {} ms waiting for rank {}", timeout_.count(), other);
      case detail::Io::closed: return fmt::format("rank {} closed the connection", other);
      default: return fmt::format("{} talking to rank {}", detail::errno_message(error), other);
    }
  }

  // Marks this object broken and throws Error(message, rank). On rank 0 the text first goes to every
  // connected peer (and `extra`), which throw it verbatim: all ranks report one error, none waits.
  [[noreturn]] void fail(const std::string& message, int rank = -1, detail::Fd* extra = nullptr) {
    broken_ = true;
    if (rank_ == 0) {
      const auto deadline = detail::Clock::now() + std::chrono::milliseconds(200);
      const auto* text = reinterpret_cast<const std::byte*>(message.data());
      if (extra != nullptr) peers_.push_back(std::move(*extra));
      for (auto& peer : peers_)
        if (peer) (void)detail::send_frame(peer.get(), kError, {text, message.size()}, deadline);
    }
    peers_.clear();
    root_.reset();
    throw Error(message, rank);
  }

  void send_to(int r, std::uint32_t kind, std::span<const std::byte> bytes, detail::Clock::time_point deadline,
               const char* op) {
    const detail::Io s = detail::send_frame(peers_[r].get(), kind, bytes, deadline);
    if (s != detail::Io::ok) fail(fmt::format("TcpRendezvous: {}: {}", op, io_reason(s, r)));
  }

  std::vector<std::byte> receive_from_root(const char* op) {
    detail::Frame frame;
    const detail::Io s = detail::recv_frame(root_.get(), frame, peer_deadline());
    if (s != detail::Io::ok) fail(fmt::format("TcpRendezvous: {}: {}", op, io_reason(s, 0)), rank_);
    if (frame.kind == kError)
      fail(std::string(reinterpret_cast<const char*>(frame.bytes.data()), frame.bytes.size()));
    if (frame.kind != kData) fail(fmt::format("TcpRendezvous: {}: rank 0 sent an unexpected message", op), rank_);
    return std::move(frame.bytes);
  }

  // Rank 0: listen, read each newcomer's hello, and answer everyone once all ranks are in.
  void accept_peers() {
    const auto deadline = detail::Clock::now() + timeout_;
    auto listener = detail::listen_on(addr_, port_, world_size_);
    if (listener.error == EADDRINUSE)
      throw Error(fmt::format("TcpRendezvous: port {} on {} is in use", port_, addr_), 0);
    if (!listener.fd)
      throw Error(fmt::format("TcpRendezvous: cannot listen on {}:{}: {}", addr_, port_, listener.what), 0);
    peers_.resize(world_size_);
    std::vector<detail::Fd> pending;  // accepted, hello not read yet
    for (int arrived = 1; arrived < world_size_;) {
      std::vector<pollfd> fds{{listener.fd.get(), POLLIN, 0}};
      for (const auto& p : pending) fds.push_back({p.get(), POLLIN, 0});
      const int n = detail::poll_until(fds, deadline);
      if (n == 0) fail(timeout_message());
      if (n < 0) fail(fmt::format("TcpRendezvous: poll failed: {}", detail::errno_message(errno)));
      for (std::size_t i = fds.size() - 1; i > 0; --i) {
        if (fds[i].revents == 0) continue;
        detail::Fd conn = std::move(pending[i - 1]);
        pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i - 1));
        if (admit(conn, deadline)) ++arrived;
      }
      if (fds[0].revents != 0)
        for (int fd; (fd = ::accept4(listener.fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
          detail::set_nodelay(fd);
          pending.emplace_back(fd);
        }
    }
    for (int r = 1; r < world_size_; ++r) send_to(r, kData, {}, deadline, "rendezvous");
  }

  // Reads and checks one hello; true when `conn` became a peer. Strays and dead connections are dropped.
  bool admit(detail::Fd& conn, detail::Clock::time_point deadline) {
    std::array<std::byte, 12> hello;
    const auto hello_deadline = std::min(deadline, detail::Clock::now() + std::chrono::seconds(1));
    if (detail::recv_all(conn.get(), hello, hello_deadline) != detail::Io::ok) return false;
    if (detail::get_be<std::uint32_t>(hello.data()) != kMagic) return false;
    const auto r = detail::get_be<std::int32_t>(hello.data() + 4);
    const auto size = detail::get_be<std::int32_t>(hello.data() + 8);
    if (size != world_size_)
      fail(fmt::format("TcpRendezvous: rank {} says world size {}, rank 0 says {}", r, size, world_size_), -1,
           &conn);
    if (r < 1 || r >= world_size_)
      fail(fmt::format("TcpRendezvous: rank {} is not in 1..{}", r, world_size_ - 1), -1, &conn);
    if (peers_[r]) fail(fmt::format("TcpRendezvous: rank {} connected twice", r), -1, &conn);
    peers_[r] = std::move(conn);
    return true;
  }

  [[nodiscard]] std::string timeout_message() const {
    std::vector<int> missing, arrived{0};
    for (int r = 1; r < world_size_; ++r) (peers_[r] ? arrived : missing).push_back(r);
    return fmt::format("TcpRendezvous: timed out after {} ms on {}:{} waiting for ranks {{{}}} (arrived: {{{}}})",
                       timeout_.count(), addr_, port_, fmt::join(missing, ","), fmt::join(arrived, ","));
  }

  // Other ranks: connect (rank 0 may start later), say hello, wait for rank 0's verdict.
  void join_root() {
    auto conn = detail::connect_retry(addr_, port_, detail::Clock::now() + timeout_);
    if (!conn.fd)
      throw Error(fmt::format("TcpRendezvous: timed out after {} ms connecting to rank 0 at {}:{}, last error: {}",
                              timeout_.count(), addr_, port_, conn.what), rank_);
    root_ = std::move(conn.fd);
    std::array<std::byte, 12> hello;
    detail::put_be(hello.data(), kMagic);
    detail::put_be(hello.data() + 4, static_cast<std::uint32_t>(rank_));
    detail::put_be(hello.data() + 8, static_cast<std::uint32_t>(world_size_));
    const detail::Io s = detail::send_all(root_.get(), hello, peer_deadline());
    if (s != detail::Io::ok) fail(fmt::format("TcpRendezvous: rendezvous: {}", io_reason(s, 0)), rank_);
    (void)receive_from_root("rendezvous");
  }

  std::string addr_;
  int port_;
  int rank_;
  int world_size_;
  std::chrono::milliseconds timeout_;
  std::vector<detail::Fd> peers_;  // rank 0: a connection per rank, [0] unused
  detail::Fd root_;                // other ranks: the connection to rank 0
  bool broken_ = false;
};

}  // namespace parallax

// parallax/comm/detail/socket.hpp — POSIX TCP plumbing for the rendezvous: an owning fd, listen and
// connect-with-retry, and framed send/recv on non-blocking sockets where every wait has a deadline.
#pragma once

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace parallax::detail {

using Clock = std::chrono::steady_clock;

//! Owns a file descriptor and closes it; move-only.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  ~Fd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

inline std::string errno_message(int error) { return std::system_category().message(error); }

// Milliseconds left until `deadline`, rounded up, clamped to [0, INT_MAX] for poll().
inline int ms_until(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<decltype(left)>(left, 0, INT_MAX));
}

// poll() until an event or `deadline`, restarting on EINTR: > 0 ready, 0 timed out, < 0 failed (errno).
inline int poll_until(std::span<pollfd> fds, Clock::time_point deadline) {
  for (;;) {
    const int n = ::poll(fds.data(), fds.size(), ms_until(deadline));
    if (n >= 0 || errno != EINTR) return n;
  }
}

//! A socket, or why there is none: an errno value (`error`) and its text (`what`).
struct SocketResult {
  Fd fd;
  int error = 0;
  std::string what;
};

struct AddrInfoFree {
  void operator()(addrinfo* p) const noexcept { ::freeaddrinfo(p); }
};
using AddrInfo = std::unique_ptr<addrinfo, AddrInfoFree>;

inline AddrInfo resolve(const std::string& host, int port, bool passive, std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* list = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &list); rc != 0) {
    what = fmt::format("cannot resolve {}: {}", host, ::gai_strerror(rc));
    return nullptr;
  }
  return AddrInfo(list);
}

//! Binds (SO_REUSEADDR on) and listens on host:port; a busy port gives error == EADDRINUSE.
inline SocketResult listen_on(const std::string& host, int port, int backlog) {
  std::string what;
  const AddrInfo ai = resolve(host, port, true, what);
  if (!ai) return {Fd{}, EINVAL, std::move(what)};
  Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
  const int one = 1;
  if (!fd || ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      ::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), backlog) != 0)
    return {Fd{}, errno, errno_message(errno)};
  return {std::move(fd), 0, {}};
}

inline void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// One non-blocking connect attempt, waiting for it at most until `deadline`; returns 0 or an errno value.
inline int connect_once(const addrinfo& ai, Clock::time_point deadline, Fd& out) {
  Fd fd(::socket(ai.ai_family, ai.ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai.ai_protocol));
  if (!fd) return errno;
  if (::connect(fd.get(), ai.ai_addr, ai.ai_addrlen) != 0) {
    if (errno != EINPROGRESS) return errno;
    pollfd p{fd.get(), POLLOUT, 0};
    const int n = poll_until({&p, 1}, deadline);
    if (n <= 0) return n == 0 ? ETIMEDOUT : errno;
    int error = 0;
    socklen_t len = sizeof error;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &len) != 0) return errno;
    if (error != 0) return error;
  }
  set_nodelay(fd.get());
  out = std::move(fd);
  return 0;
}

//! Connects to host:port, retrying with backoff (the listener may not be up yet) until `deadline`.
//! On failure `error` is ETIMEDOUT and `what` says what the last attempt ran into.
inline SocketResult connect_retry(const std::string& host, int port, Clock::time_point deadline) {
  SocketResult r;
  auto backoff = std::chrono::milliseconds(10);
  for (;;) {
    if (const AddrInfo ai = resolve(host, port, false, r.what)) {
      for (const addrinfo* p = ai.get(); p != nullptr; p = p->ai_next) {
        const int error = connect_once(*p, deadline, r.fd);
        if (error == 0) return r;
        r.what = errno_message(error);
      }
    }
    const auto now = Clock::now();
    if (now >= deadline) return {Fd{}, ETIMEDOUT, std::move(r.what)};
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
  }
}

//! How a transfer ended; on `failed` errno holds the reason.
enum class Io { ok, timeout, closed, failed };

inline Io wait_ready(int fd, short events, Clock::time_point deadline) {
  pollfd p{fd, events, 0};
  const int n = poll_until({&p, 1}, deadline);
  return n > 0 ? Io::ok : n == 0 ? Io::timeout : Io::failed;
}

//! Sends all of `data` (MSG_NOSIGNAL: a dead peer gives `closed`, never SIGPIPE).
inline Io send_all(int fd, std::span<const std::byte> data, Clock::time_point deadline) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      data = data.subspan(static_cast<std::size_t>(n));
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (const Io s = wait_ready(fd, POLLOUT, deadline); s != Io::ok) return s;
    } else if (errno != EINTR) {
      return errno == EPIPE || errno == ECONNRESET ? Io::closed : Io::failed;
    }
  }
  return Io::ok;
}

//! Receives exactly `data.size()` bytes; an orderly shutdown before that gives `closed`.
inline Io recv_all(int fd, std::span<std::byte> data, Clock::time_point deadline) {
  while (!data.empty()) {
    const ssize_t n = ::recv(fd, data.data(), data.size(), 0);
    if (n > 0) {
      data = data.subspan(static_cast<std::size_t>(n));
    } else if (n == 0) {
      return Io::closed;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (const Io s = wait_ready(fd, POLLIN, deadline); s != Io::ok) return s;
    } else if (errno != EINTR) {
      return errno == ECONNRESET ? Io::closed : Io::failed;
    }
  }
  return Io::ok;
}

// Big-endian fixed-width integers on the wire.
template <class T>
inline void put_be(std::byte* out, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i)
    out[i] = static_cast<std::byte>(static_cast<std::uint64_t>(value) >> (8 * (sizeof(T) - 1 - i)));
}
template <class T>
inline T get_be(const std::byte* in) {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) value = (value << 8) | std::to_integer<std::uint64_t>(in[i]);
  return static_cast<T>(value);
}

//! A length-prefixed message: a kind tag (the caller's meaning) and its bytes.
struct Frame {
  std::uint32_t kind = 0;
  std::vector<std::byte> bytes;
};

inline Io send_frame(int fd, std::uint32_t kind, std::span<const std::byte> bytes, Clock::time_point deadline) {
  std::array<std::byte, 12> header;
  put_be(header.data(), kind);
  put_be(header.data() + 4, static_cast<std::uint64_t>(bytes.size()));
  const Io s = send_all(fd, header, deadline);
  return s == Io::ok ? send_all(fd, bytes, deadline) : s;
}

inline Io recv_frame(int fd, Frame& frame, Clock::time_point deadline) {
  std::array<std::byte, 12> header;
  if (const Io s = recv_all(fd, header, deadline); s != Io::ok) return s;
  frame.kind = get_be<std::uint32_t>(header.data());
  frame.bytes.resize(get_be<std::uint64_t>(header.data() + 4));
  return recv_all(fd, frame.bytes, deadline);
}

}  // namespace parallax::detail

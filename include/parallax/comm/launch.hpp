// parallax/comm/launch.hpp — launch<B>(n, fn): run an SPMD function on n rank threads of this process.
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include <fmt/format.h>

#include "../backend/concept.hpp"
#include "../error.hpp"
#include "communicator.hpp"
#include "detail/thread_world.hpp"
#include "rank.hpp"
#include "settings.hpp"
#include "thread_communicator.hpp"

namespace parallax {

//! How the rank threads of a `launch` communicate.
enum class LaunchTransport {
  //! NCCL when the backend has devices, there are several ranks and every rank gets a device of its own;
  //! otherwise `threads` (a single rank has nothing to communicate: it needs no NCCL).
  automatic,
  //! `ThreadCommunicator` over the backend's memory: zero-copy between threads, also for ranks sharing a GPU
  //! (which NCCL refuses).
  threads,
  //! NCCL, one rank per GPU (cuda::Backend only; world size 1 included); an Error when there are more ranks than GPUs.
  nccl,
};

//! "automatic", "threads", "nccl".
[[nodiscard]] constexpr const char* name(LaunchTransport t) noexcept {
  switch (t) {
    case LaunchTransport::automatic: return "automatic";
    case LaunchTransport::threads: return "threads";
    case LaunchTransport::nccl: return "nccl";
  }
  return "?";
}

//! Options of `launch`.
struct LaunchOptions {
  //! Timeout of every blocking communication wait; unset: `PARALLAX_COMM_TIMEOUT` or 300 s.
  std::optional<std::chrono::milliseconds> timeout{};
  //! The world's transport; see `LaunchTransport`.
  LaunchTransport transport = LaunchTransport::automatic;
  //! The thread transport runs each group's calls one at a time, in the order each rank issues them, as NCCL does
  //! on a group's stream: a rank's call starts once its previous call on that group completed (it waits on the
  //! group's communication thread; the rank's thread goes on). A program whose ranks rely on calls of one group overlapping, e.g. a receive posted before a
  //! send that its peer waits for, then fails here by the timeout, naming the calls, as it would hang on GPUs.
  //! Slower; a check. Off: the calls of a group progress independently. Unset: `PARALLAX_COMM_IN_ORDER`.
  std::optional<bool> in_order{};
};

namespace detail {

//! Whether `launch` joins `ranks` rank threads through the device library (NCCL) rather than the thread
//! transport, given the devices there are (`devices` < 0: a backend without devices). Throws for
//! `LaunchTransport::nccl` when that cannot work.
[[nodiscard]] inline bool launch_uses_nccl(LaunchTransport t, int ranks, int devices, const char* backend) {
  switch (t) {
    case LaunchTransport::threads: return false;
    case LaunchTransport::automatic: return devices > 0 && ranks > 1 && ranks <= devices;
    case LaunchTransport::nccl:
      if (devices < 0)
        throw Error(fmt::format("launch: LaunchTransport::nccl needs a backend with GPUs (cuda::Backend); {} ranks are "
                                "threads over host memory",
                                backend));
      if (ranks > devices)
        throw Error(fmt::format("launch: LaunchTransport::nccl needs one GPU per rank: {} ranks, {} GPUs (NCCL refuses "
                                "two ranks on one GPU); use LaunchTransport::threads or at most {} ranks",
                                ranks, devices, devices));
      return true;
  }
  return false;
}

//! The world group of `n` rank threads over memory space `Memory` (the thread transport).
template <class Memory>
[[nodiscard]] std::shared_ptr<ThreadGroup> thread_world_group(int n, const std::shared_ptr<ThreadWorld>& world) {
  std::vector<int> members(static_cast<std::size_t>(n));
  std::iota(members.begin(), members.end(), 0);
  return ThreadCommunicator<Memory>::make_group(world, std::move(members), "world");
}

//! Rank r of `n` rank threads joined by the thread transport's world `group`, with the context of rank r. The
//! rank's calls are ordered after its context's stream, where the context has one (`cuda::Context::stream()`).
template <Backend B>
[[nodiscard]] Rank<B> thread_rank(const std::shared_ptr<ThreadGroup>& group, int r, int n) {
  using Transport = ThreadCommunicator<typename B::Memory>;
  typename B::Context context(r);
  typename Transport::stream_type stream{};
  if constexpr (requires { stream = context.stream(); }) stream = context.stream();
  return Rank<B>(r, n, Communicator(std::make_shared<Transport>(group, r, stream)), std::move(context));
}

//! How `launch` gives each rank thread its `Rank<B>`: here, a `ThreadCommunicator` world over `B::Memory`.
//! Backends with devices specialise it (`comm/nccl_launch.hpp`: cuda::Backend, over NCCL where it can).
template <class B>
class LaunchWorld {
 public:
  LaunchWorld(int n, const std::shared_ptr<ThreadWorld>& world, const LaunchOptions& options) : n_(n) {
    (void)launch_uses_nccl(options.transport, n, -1, B::name);  // throws for LaunchTransport::nccl
    group_ = thread_world_group<typename B::Memory>(n, world);
  }
  //! Rank r of the world; called on rank r's thread.
  [[nodiscard]] Rank<B> rank(int r) const { return thread_rank<B>(group_, r, n_); }

 private:
  int n_;
  std::shared_ptr<ThreadGroup> group_;
};

}  // namespace detail

//! Runs `fn(Rank<B>&)` on `n` threads, one per rank. The ranks' world is a `ThreadCommunicator` group, or
//! with `cuda::Backend` and a GPU for every rank an NCCL communicator (`LaunchOptions::transport`).
//!
//! If any rank throws, every other rank is released from whatever it waits on (no hang) and `launch`
//! throws one `parallax::Error` naming the first rank that failed and why.
//! @code
//! parallax::launch<parallax::host::Backend>(8, [](parallax::Rank<parallax::host::Backend>& rank) {
//!   ...  // SPMD: the same code on every rank
//! });
//! @endcode
template <Backend B, class Fn>
void launch(int n, Fn&& fn, LaunchOptions options = {}) {
  if (n <= 0) throw Error(fmt::format("launch: number of ranks is {}, must be positive", n));
  auto world =
      std::make_shared<detail::ThreadWorld>(n, options.timeout.value_or(comm_timeout_from_env()),
                                            options.in_order.value_or(comm_in_order_from_env()));
  const detail::LaunchWorld<B> ranks(n, world, options);

  std::mutex mutex;
  int failed_rank = -1;
  std::string failure;
  auto fail = [&](int r, const std::string& what, bool secondary) {
    {
      std::lock_guard lock(mutex);
      if (!secondary && failed_rank < 0) {
        failed_rank = r;
        failure = what;
      }
    }
    world->abort(r, what);
  };
  auto body = [&](int r) {
    try {
      Rank<B> rank = ranks.rank(r);
      fn(rank);
    } catch (const detail::PeerFailure& e) {
      fail(r, e.what(), true);
    } catch (const std::exception& e) {
      fail(r, e.what(), false);
    } catch (...) {
      fail(r, "unknown exception", false);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
  if (failed_rank >= 0) throw Error(fmt::format("launch: rank {} failed: {}", failed_rank, failure), failed_rank);
}

}  // namespace parallax

#if defined(__CUDACC__) && __has_include(<nccl.h>)
// launch<cuda::Backend> over NCCL: every translation unit that can name cuda::Backend sees the specialisation.
#include "nccl_launch.hpp"
#endif

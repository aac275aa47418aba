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

//! Options of `launch`.
struct LaunchOptions {
  //! Timeout of every blocking communication wait; unset: `PARALLAX_COMM_TIMEOUT` or 300 s.
  std::optional<std::chrono::milliseconds> timeout{};
};

//! Runs `fn(Rank<B>&)` on `n` threads, one per rank, joined by a `ThreadCommunicator` world group.
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
  auto world = std::make_shared<detail::ThreadWorld>(n, options.timeout.value_or(comm_timeout_from_env()));
  std::vector<int> members(static_cast<std::size_t>(n));
  std::iota(members.begin(), members.end(), 0);
  auto group = ThreadCommunicator<typename B::Memory>::make_group(world, members, "world");

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
      Rank<B> rank(r, n,
                   Communicator(std::make_shared<ThreadCommunicator<typename B::Memory>>(group, r)),
                   typename B::Context(r));
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

// parallax/comm/detail/thread_world.hpp — what the rank threads of one process share: timeout and abort.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "../../error.hpp"

namespace parallax::detail {

//! Thrown on ranks released because another rank failed; `launch` reports the original failure instead.
class PeerFailure : public Error {
 public:
  using Error::Error;
};

//! Something a waiting rank sleeps on, which an abort must wake.
struct Waitable {
  std::mutex mutex;
  std::condition_variable cv;
};

//! Shared by all rank threads of one `launch`: the timeout, whether calls run in issue order, and the abort that
//! releases every wait.
class ThreadWorld {
 public:
  ThreadWorld(int size, std::chrono::milliseconds timeout, bool in_order = false)
      : size_(size), timeout_(timeout), in_order_(in_order) {}

  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  //! `LaunchOptions::in_order`: each rank's call on a group starts once its previous call there completed.
  [[nodiscard]] bool in_order() const noexcept { return in_order_; }
  [[nodiscard]] bool aborted() const noexcept { return aborted_.load(std::memory_order_acquire); }

  //! Records the first failure and wakes every waiter of every group.
  void abort(int rank, const std::string& why) {
    std::vector<std::shared_ptr<Waitable>> wake;
    {
      std::lock_guard lock(mutex_);
      if (!aborted_.load()) {
        failed_rank_ = rank;
        reason_ = why;
        aborted_.store(true, std::memory_order_release);
      }
      for (auto& w : waitables_)
        if (auto s = w.lock()) wake.push_back(std::move(s));
    }
    for (auto& w : wake) {
      std::lock_guard l(w->mutex);
      w->cv.notify_all();
    }
  }
  //! Throws `PeerFailure` on `rank` if the world was aborted.
  void throw_if_aborted(int rank, const std::string& where) const {
    if (!aborted()) return;
    std::lock_guard lock(mutex_);
    throw PeerFailure(fmt::format("{}: released because rank {} failed: {}", where, failed_rank_, reason_), rank);
  }
  void enroll(const std::shared_ptr<Waitable>& w) {
    std::lock_guard lock(mutex_);
    std::erase_if(waitables_, [](const std::weak_ptr<Waitable>& x) { return x.expired(); });
    waitables_.push_back(w);
  }

 private:
  int size_;
  std::chrono::milliseconds timeout_;
  bool in_order_;
  std::atomic<bool> aborted_{false};
  mutable std::mutex mutex_;
  int failed_rank_ = -1;
  std::string reason_;
  std::vector<std::weak_ptr<Waitable>> waitables_;
};

}  // namespace parallax::detail
